/** Starts blockd and qemu-storage-daemon as processes with the same qsd-style arguments. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { requireTool } from './tools.ts';

export const BLOCKD = resolve(import.meta.dirname, '../../bin/blockd');

export interface Running {
  proc: ChildProcess;
  stderr: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const made: string[] = [];
let cleanupArmed = false;

/** A fresh temporary directory, removed when the test process exits (images add up to gigabytes). */
export function tempDir(prefix = 'blockd-test-'): string {
  const run = process.env.BLOCKD_TEST_RUN;
  const dir = mkdtempSync(join(tmpdir(), run && prefix === 'blockd-test-' ? `${prefix}${run}-` : prefix));
  made.push(dir);
  if (!cleanupArmed) {
    cleanupArmed = true;
    process.once('exit', () => {
      for (const d of made) {
        try { rmSync(d, { recursive: true, force: true }); } catch { /* a mount still busy: leave it */ }
      }
    });
  }
  return dir;
}

/** Spawns `cmd args` and resolves once `readyPath` (a Unix socket) accepts connections. */
export async function startDaemon(which: 'blockd' | 'qsd', args: string[], readyPath: string, timeoutMs = 20_000): Promise<Running> {
  const cmd = which === 'blockd' ? BLOCKD : requireTool('qemu-storage-daemon');
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  proc.stdout!.resume();
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${which} exited with ${proc.exitCode}: ${err}`);
    if (existsSync(readyPath) && (await canConnect(readyPath))) break;
    if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`${which} did not come up: ${err}`); }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    proc,
    stderr: () => err,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode === null) proc.kill(signal);
      const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

function canConnect(path: string): Promise<boolean> {
  return new Promise((r) => {
    const s = connect(path);
    s.once('connect', () => { s.destroy(); r(true); });
    s.once('error', () => r(false));
  });
}
