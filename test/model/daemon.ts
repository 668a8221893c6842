/**
 * The daemon under the model test, driven as a user drives it: a process
 * (blockd, or qemu-storage-daemon for checking the model itself) with a QMP
 * monitor and an NBD server, QMP for the graph and jobs, and blockd's own NBD
 * client (an in-process `nbd` node) for the I/O. Imports nothing from vitest:
 * the long runner (scripts/fuzz.ts) uses it too.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';
import type { BlockNode } from '../../src/blockdev/node.ts';

export type Which = 'blockd' | 'qsd';
const BLOCKD = join(dirname(fileURLToPath(import.meta.url)), '../../bin/blockd');

export interface Ev { event: string; data: Record<string, unknown> }

export interface Daemon {
  qmp: QmpClient;
  events: Ev[];
  stderr: () => string;
  /** Resolves once an event matching `pred` has arrived (at any time since start). */
  waitEvent(pred: (e: Ev) => boolean, what: string, ms?: number): Promise<Ev>;
  stop(): Promise<number | null>;
}

function tool(name: string): string {
  try {
    return execFileSync('sh', ['-c', `command -v ${name}`]).toString().trim();
  } catch {
    throw new Error(`${name} is not installed: the model test needs it`);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitSocket(path: string, proc: ChildProcess, err: () => string, which: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${which} exited with ${proc.exitCode}: ${err()}`);
    if (existsSync(path) && await new Promise<boolean>((r) => { const s = connect(path); s.once('connect', () => { s.destroy(); r(true); }); s.once('error', () => r(false)); })) return;
    if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`${which} did not come up: ${err()}`); }
    await sleep(25);
  }
}

export async function startDaemon(which: Which, dir: string, args: string[]): Promise<Daemon> {
  const qmpSock = join(dir, 'qmp.sock');
  const cmd = which === 'blockd' ? BLOCKD : tool('qemu-storage-daemon');
  const proc = spawn(cmd, [...args, '--chardev', `socket,id=m0,path=${qmpSock},server=on,wait=off`, '--monitor', 'chardev=m0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  await waitSocket(qmpSock, proc, () => err, which);
  const qmp = await QmpClient.connect(qmpSock);
  const events: Ev[] = [];
  qmp.on('event', (e: { event: string; data?: Record<string, unknown> }) => events.push({ event: e.event, data: e.data ?? {} }));
  return {
    qmp, events, stderr: () => err,
    async waitEvent(pred, what, ms = 60_000) {
      const end = Date.now() + ms;
      for (;;) {
        const e = events.find(pred);
        if (e) return e;
        if (proc.exitCode !== null) throw new Error(`${which} exited while waiting for ${what}: ${err}`);
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}; events: ${JSON.stringify(events.slice(-10))}`);
        await sleep(5);
      }
    },
    async stop() {
      qmp.close();
      if (proc.exitCode === null) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

/** blockd's NBD client as an in-process node on export `name` of the server at `sock`. */
export async function nbdClient(sock: string, name: string): Promise<{ node: BlockNode; close(): Promise<void> }> {
  const g = new BlockGraph();
  registerDrivers(g);
  const node = await g.add({ driver: 'nbd', 'node-name': 'c', server: { type: 'unix', path: sock }, export: name });
  return { node, close: () => g.closeAll() };
}
