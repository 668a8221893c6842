/**
 * Shared by the live mirror and backup tests: a daemon (bin/blockd or qsd)
 * with a QMP monitor and an NBD server on Unix sockets, a libnbd client that
 * keeps writing and mirrors each write into a model file, and the job event
 * sequences both daemons are compared on.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { startDaemon, type Running } from './daemons.ts';
import { run, SYSTEM_PYTHON } from './tools.ts';
import type { Ev } from './live.ts';

export const SIZE = 64 * 1024 * 1024;

export interface Live {
  dir: string;
  qmp: QmpClient;
  events: Ev[];
  daemon: Running;
  nbdSock: string;
  waitEvent(name: string, pred?: (d: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Ev>;
  stop(): Promise<void>;
}

/** bin/blockd (or qsd) with a QMP monitor and an NBD server on Unix sockets, plus extra arguments. */
export async function startLive(which: 'blockd' | 'qsd', dir: string, extra: string[]): Promise<Live> {
  const qmpSock = join(dir, 'qmp.sock');
  const nbdSock = join(dir, 'nbd.sock');
  const daemon = await startDaemon(which, [
    '--chardev', `socket,id=m,path=${qmpSock},server=on,wait=off`, '--monitor', 'm',
    '--nbd-server', `addr.type=unix,addr.path=${nbdSock}`, ...extra,
  ], qmpSock);
  const qmp = await QmpClient.connect(qmpSock);
  const events: Ev[] = [];
  const waiters: (() => void)[] = [];
  qmp.on('event', (e: { event: string; data?: Record<string, unknown> }) => {
    events.push({ event: e.event, data: e.data ?? {} });
    for (const w of waiters.splice(0)) w();
  });
  return {
    dir, qmp, events, daemon, nbdSock,
    async waitEvent(name, pred = () => true, timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const e = events.find((x) => x.event === name && pred(x.data));
        if (e) return e;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${name}; got ${JSON.stringify(events)}`);
        await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 200); });
      }
    },
    async stop() { qmp.close(); await daemon.stop(); },
  };
}

export interface WriterPause {
  /** After this many writes the writer flushes its model, creates `paused` and waits for `go` to exist. */
  after: number;
  paused: string;
  go: string;
}

/**
 * A libnbd client writing random runs (4 KiB .. 256 KiB, 4 KiB aligned) until
 * `stop` exists, one at a time, mirroring each write into `model`; prints the count.
 */
export function startWriter(sock: string, exportName: string, model: string, stop: string, seed: number, pause?: WriterPause): { proc: ChildProcess; done: Promise<string> } {
  const pauseAt = pause ? `
    if n == ${pause.after}:
        m.flush()
        open(${JSON.stringify(pause.paused)}, 'w').close()
        while not os.path.exists(${JSON.stringify(pause.go)}):
            time.sleep(0.01)` : '';
  const script = `
import nbd, random, os, sys, time
random.seed(${seed})
h = nbd.NBD()
h.set_export_name(${JSON.stringify(exportName)})
h.connect_unix(${JSON.stringify(sock)})
size = h.get_size()
m = open(${JSON.stringify(model)}, 'r+b')
n = 0
while not os.path.exists(${JSON.stringify(stop)}):
    ln = random.randint(1, 64) * 4096
    off = random.randrange(0, size - ln, 4096)
    buf = bytes([random.randrange(1, 256)]) * ln
    h.pwrite(buf, off)
    m.seek(off); m.write(buf)
    n += 1${pauseAt}
m.close()
h.shutdown()
print(n)
`;
  const proc = spawn(SYSTEM_PYTHON, ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (err += d));
  const done = new Promise<string>((resolve, reject) => proc.once('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`writer failed (${code}): ${err}`)))));
  return { proc, done };
}

export function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** A raw image with some data and holes (qemu-io patterns). */
export function makeSource(path: string, size = SIZE): void {
  run('qemu-img', ['create', '-q', '-f', 'raw', path, String(size)]);
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4M', '-c', 'write -P 0x22 32M 1M', '-c', `write -P 0x33 ${size - 65536} 64k`, path]);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** qsd 7.2's events for a mirror that is completed (or soft-cancelled) after READY. */
export const MIRROR_DONE = ['created', 'running', 'ready', 'BLOCK_JOB_READY', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null'];

/** A job's status changes and block-job events, in order (BLOCK_JOB_ERROR left out: how many there are depends on timing). */
export function sequence(events: Ev[], id: string): string[] {
  return events.filter((e) => e.data.id === id || e.data.device === id)
    .filter((e) => e.event !== 'BLOCK_JOB_ERROR')
    .map((e) => (e.event === 'JOB_STATUS_CHANGE' ? String(e.data.status) : e.event));
}
