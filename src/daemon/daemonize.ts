/**
 * --daemonize: the parent re-runs blockd detached (new session, stdio to
 * /dev/null) with a pipe on fd 3, and exits only when the child reports
 * "ready" on it — or prints the child's start-up error and exits 1.
 */
import { spawn } from 'node:child_process';
import { closeSync, writeSync } from 'node:fs';

const READY_FD_ENV = 'BLOCKD_READY_FD';

/** In the parent: spawns the child and never returns. */
export async function daemonizeParent(argv: string[]): Promise<never> {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...argv.filter((a) => a !== '--daemonize')], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, [READY_FD_ENV]: '3' },
  });
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let msg = '';
  pipe.setEncoding('utf8');
  pipe.on('data', (d: string) => (msg += d));
  const code = await new Promise<number>((resolve) => {
    pipe.on('end', () => resolve(msg.startsWith('ready') ? 0 : 1));
    child.once('exit', () => resolve(msg.startsWith('ready') ? 0 : 1));
  });
  if (code !== 0) process.stderr.write(msg || 'blockd: the daemon exited during start-up\n');
  child.unref();
  process.exit(code);
}

/** In the child: true when started by daemonizeParent. */
export function isDaemonChild(): boolean {
  return process.env[READY_FD_ENV] !== undefined;
}

/** In the child: tells the parent how start-up went, then closes the pipe. */
export function reportToParent(message: string): void {
  const fd = Number(process.env[READY_FD_ENV]);
  delete process.env[READY_FD_ENV];
  if (!Number.isInteger(fd)) return;
  // Synchronous: the caller may exit right after (a failed start-up).
  try {
    writeSync(fd, message.endsWith('\n') ? message : `${message}\n`);
    closeSync(fd);
  } catch { /* the parent is gone; nothing to tell */ }
}
