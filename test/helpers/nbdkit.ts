/** nbdkit as a remote NBD server for the nbd client driver's tests: started in the foreground, stopped (or killed) by the test. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { requireTool } from './tools.ts';

export interface Nbdkit {
  proc: ChildProcess;
  sock: string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** `nbdkit -f -U sock PLUGIN ARGS...`, resolved once the socket accepts connections. */
export async function startNbdkit(sock: string, plugin: string[], extra: string[] = []): Promise<Nbdkit> {
  const proc = spawn(requireTool('nbdkit'), ['-f', '-U', sock, ...extra, ...plugin], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`nbdkit exited with ${proc.exitCode}: ${err}`);
    if (existsSync(sock) && (await canConnect(sock))) break;
    if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`nbdkit did not come up: ${err}`); }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    proc,
    sock,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
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
