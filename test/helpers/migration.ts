/**
 * Live storage migration between two daemons, the libvirt way: the
 * destination creates an empty image with blockdev-create and exports it
 * writable over NBD; the source adds an nbd node for that export and mirrors
 * its disk into it while a client keeps writing to the source's export.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { qmpDaemon, waitFor, type Ev } from './live.ts';
import type { Running } from './daemons.ts';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { run } from './tools.ts';

export type Who = 'blockd' | 'qsd';

export interface Side { who: Who; dir: string; proc: Running; qmp: QmpClient; events: Ev[]; nbdSock: string }

export async function side(who: Who, root: string, name: string, extra: string[]): Promise<Side> {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  const nbdSock = join(dir, 'nbd.sock');
  const d = await qmpDaemon(who, dir, ['--nbd-server', `addr.type=unix,addr.path=${nbdSock}`, ...extra]);
  return { who, dir, nbdSock, ...d };
}

export async function stopSide(s: Side): Promise<void> {
  s.qmp.close();
  await s.proc.stop();
}

async function createJob(s: Side, id: string, options: Record<string, unknown>): Promise<void> {
  await s.qmp.execute('blockdev-create', { 'job-id': id, options });
  await waitFor(s.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && e.data.status === 'concluded');
  const jobs = (await s.qmp.execute('query-jobs')) as { id: string; error?: string }[];
  const err = jobs.find((j) => j.id === id)?.error;
  await s.qmp.execute('job-dismiss', { id });
  if (err) throw new Error(`blockdev-create ${id}: ${err}`);
}

/** On the destination: tgt.qcow2 made by blockdev-create (on `backingFile` if given), opened as node 'tgt' and exported writable as 'tgt'. */
export async function prepareDestination(s: Side, size: number, backingFile?: string): Promise<string> {
  const image = join(s.dir, 'tgt.qcow2');
  await createJob(s, 'c0', { driver: 'file', filename: image, size: 0 });
  await s.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'tgt-file', filename: image });
  await createJob(s, 'c1', { driver: 'qcow2', file: 'tgt-file', size, ...(backingFile ? { 'backing-file': backingFile, 'backing-fmt': 'qcow2' } : {}) });
  await s.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'tgt', file: 'tgt-file', ...(backingFile ? {} : { backing: null }) });
  await s.qmp.execute('block-export-add', { type: 'nbd', id: 'tgt-export', 'node-name': 'tgt', name: 'tgt', writable: true });
  return image;
}

/** On the source: an nbd node 'remote' for the destination's export. */
export async function addRemote(s: Side, dest: Side, extra: Record<string, unknown> = {}): Promise<void> {
  await s.qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': 'remote', server: { type: 'unix', path: dest.nbdSock }, export: 'tgt', ...extra });
}

/** A qcow2 chain in `dir`: base.qcow2 (data) under disk.qcow2 (a little of its own); returns the guest-visible bytes. */
export function makeChain(dir: string, size: number): Buffer {
  const base = join(dir, 'base.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(size)]);
  run('qemu-io', ['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 3M 2M', base]);
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', join(dir, 'disk.qcow2')]);
  run('qemu-io', ['-c', 'write -P 0x44 512k 1M', '-c', `write -P 0x55 ${size - 1048576} 64k`, join(dir, 'disk.qcow2')]);
  const m = Buffer.alloc(size);
  m.fill(0x11, 0, 1 << 20);
  m.fill(0x22, 3 << 20, 5 << 20);
  m.fill(0x44, 512 << 10, (512 << 10) + (1 << 20));
  m.fill(0x55, size - 1048576, size - 1048576 + 65536);
  return m;
}
