/**
 * --pidfile: written only once start-up has succeeded, removed at exit. Like
 * QEMU, refuse to start when another live process holds the file.
 */
import { readFileSync, writeFileSync, unlinkSync, renameSync } from 'node:fs';

export function writePidfile(path: string): void {
  let old: number | undefined;
  try { old = Number(readFileSync(path, 'utf8').trim()); } catch { /* no previous file */ }
  if (old && old !== process.pid && isAlive(old)) throw new Error(`Cannot lock pid file '${path}': process ${old} is running`);
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${process.pid}\n`);
  renameSync(tmp, path);
}

export function removePidfile(path: string): void {
  try {
    if (Number(readFileSync(path, 'utf8').trim()) === process.pid) unlinkSync(path);
  } catch { /* already gone */ }
}

function isAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}
