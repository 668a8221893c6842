/** Starts blockd and qemu-storage-daemon as processes with the same qsd-style arguments. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { resolve } from 'node:path';
import { requireTool } from './tools.ts';

// Scratch directories live in temp.ts; re-exported for the tests that import them from here.
export { tempDir } from './temp.ts';

export const BLOCKD = resolve(import.meta.dirname, '../../bin/blockd');

export interface Running {
  proc: ChildProcess;
  stderr: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Spawns `cmd args` (with `env` added to the environment) and resolves once `readyPath` (a Unix socket) accepts connections. */
export async function startDaemon(which: 'blockd' | 'qsd', args: string[], readyPath: string, timeoutMs = 20_000, env?: NodeJS.ProcessEnv): Promise<Running> {
  const cmd = which === 'blockd' ? BLOCKD : requireTool('qemu-storage-daemon');
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ? { ...process.env, ...env } : process.env });
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
