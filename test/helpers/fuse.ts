/**
 * FUSE export tests: a daemon (blockd or qsd) with a QMP monitor and FUSE
 * exports, and the clean-up every such test needs: whatever is still
 * mounted under its scratch directory is unmounted (lazily) in afterEach,
 * also when the test failed or the daemon was killed.
 */
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type Running } from './daemons.ts';
import { requireTool } from './tools.ts';
import { readMountInfo } from '../../src/fuse/mountinfo.ts';
import { RawQmpConnection } from '../../src/qmp/raw-connection.ts';

export interface FuseDaemon {
  d: Running;
  qmp: RawQmpConnection;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Starts `which` in `dir` with a QMP monitor (dir/qmp.sock) and `args`. */
export async function startWithQmp(which: 'blockd' | 'qsd', dir: string, args: string[]): Promise<FuseDaemon> {
  const sock = join(dir, 'qmp.sock');
  const d = await startDaemon(which, ['--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'm', ...args], sock);
  const qmp = await RawQmpConnection.negotiated(sock);
  return {
    d, qmp,
    async stop(signal) {
      qmp.close();
      await d.stop(signal);
    },
  };
}

/** Sends a command; resolves with the messages up to and including its reply, events with their timestamps taken out. */
export async function commandWithEvents(qmp: RawQmpConnection, execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>[]> {
  qmp.send(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
  const out: Record<string, unknown>[] = [];
  for (;;) {
    const m = await qmp.next();
    if ('event' in m) delete m.timestamp;
    out.push(m);
    if (!('event' in m)) return out;
  }
}

/** Mounts (the topmost first) whose mountpoint is `dir` or below it. */
export function mountsUnder(dir: string): string[] {
  return readMountInfo().map((m) => m.mountPoint).filter((p) => p === dir || p.startsWith(dir + '/')).reverse();
}

/** Unmounts (lazily) everything under `dir`; run it in afterEach. */
export function unmountAll(dir: string): void {
  for (const p of mountsUnder(dir)) spawnSync('umount', ['-l', p], { stdio: 'ignore' });
}

/** An empty regular file to mount on. */
export function mountpointFile(dir: string, name = 'mnt'): string {
  const p = join(dir, name);
  writeFileSync(p, '');
  return p;
}

/** Runs a program asynchronously (the daemon under test may be in this process); resolves with its status and output. */
export function runAsync(cmd: string, args: string[], opts: { timeout?: number; input?: string } = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  requireTool(cmd);
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeout ?? 120_000);
    p.on('error', reject);
    p.on('close', (status) => { clearTimeout(t); resolve({ status, stdout, stderr }); });
    p.stdin.on('error', () => undefined); // a program that exits without reading its input
    p.stdin.end(opts.input ?? '');
  });
}

/** Like runAsync, but throws with stderr unless the program succeeded; resolves to stdout. */
export async function runOk(cmd: string, args: string[], opts: { timeout?: number; input?: string } = {}): Promise<string> {
  const r = await runAsync(cmd, args, opts);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}
