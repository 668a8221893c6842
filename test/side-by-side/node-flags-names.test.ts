/**
 * query-named-block-nodes side by side with qsd 7.2 after live operations
 * (#11 items 8 and 9): every node's read-only flag, the order the nodes
 * are listed in, and the counter part of generated names ('#block' + a
 * process-wide counter + two random digits: the digits are dropped) must be
 * qsd's. The chain top -> mid -> base is opened from the image headers.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { qmpDaemon, waitFor, type Ev } from '../helpers/live.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';

type Step = [string, Record<string, unknown>] | { settle: string } | { ready: string };

const dirs: string[] = [];
const procs: Running[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.stop().catch(() => undefined);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function images(dir: string): void {
  const img = (name: string, backing?: string) => run('qemu-img', ['create', '-q', '-f', 'qcow2',
    ...(backing ? ['-b', join(dir, backing), '-F', 'qcow2'] : []), join(dir, name), '1M']);
  img('base.qcow2'); img('mid.qcow2', 'base.qcow2'); img('top.qcow2', 'mid.qcow2'); img('tgt.qcow2'); img('ov.qcow2');
}

async function nodes(qmp: QmpClient, dir: string): Promise<string[]> {
  const list = (await qmp.execute('query-named-block-nodes', { flat: true })) as { 'node-name': string; drv: string; file: string; ro: boolean; backing_file?: string }[];
  const rel = (f: string) => f.split(dir).join('<dir>');
  return list.map((n) => `${n['node-name'].replace(/^(#block\d+)\d\d$/, '$1')} ${n.drv} ${rel(n.file)} ${n.ro ? 'ro' : 'rw'}${n.backing_file ? ` backing ${rel(n.backing_file)}` : ''}`);
}

async function session(which: 'qsd' | 'blockd', top: 'inline' | 'separate', script: (dir: string) => Step[]): Promise<string[]> {
  const dir = tempDir(`node-flags-${which}-`);
  dirs.push(dir);
  images(dir);
  const devs = top === 'inline'
    ? ['--blockdev', `driver=qcow2,node-name=fmt0,file.driver=file,file.filename=${join(dir, 'top.qcow2')}`]
    : ['--blockdev', `driver=file,node-name=file0,filename=${join(dir, 'top.qcow2')}`, '--blockdev', 'driver=qcow2,node-name=fmt0,file=file0'];
  const { proc, qmp, events } = await qmpDaemon(which, dir, [
    '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`, ...devs,
    '--export', 'type=nbd,id=e0,node-name=fmt0,writable=on',
  ]);
  procs.push(proc);
  const out: string[] = [];
  const job = (id: string, pred: (e: Ev) => boolean) => waitFor(events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && pred(e));
  for (const step of script(dir)) {
    if ('settle' in step) { await job(step.settle, (e) => e.data.status === 'null'); continue; }
    if ('ready' in step) { await job(step.ready, (e) => e.data.status === 'ready'); continue; }
    const [cmd, args] = step;
    out.push(`${cmd} -> ${JSON.stringify(await qmp.execute(cmd, args).catch((e: Error) => e.message))}`);
  }
  out.push(...await nodes(qmp, dir));
  qmp.close();
  return out;
}

const target = (dir: string): Step => ['blockdev-add', { driver: 'qcow2', 'node-name': 'tgt', file: { driver: 'file', filename: join(dir, 'tgt.qcow2') } }];
const snapSync = (dir: string) => ({ 'node-name': 'fmt0', 'snapshot-file': join(dir, 'snap.qcow2'), 'snapshot-node-name': 'snap' });

const cases: [string, 'inline' | 'separate', (dir: string) => Step[]][] = [
  ['opened from the headers', 'inline', () => []],
  ['blockdev-snapshot-sync, file node added by itself', 'separate', (d) => [['blockdev-snapshot-sync', snapSync(d)]]],
  ['blockdev-snapshot-sync, inline file', 'inline', (d) => [['blockdev-snapshot-sync', snapSync(d)]]],
  ['blockdev-snapshot', 'separate', (d) => [
    ['blockdev-add', { driver: 'qcow2', 'node-name': 'ov', backing: null, file: { driver: 'file', filename: join(d, 'ov.qcow2') } }],
    ['blockdev-snapshot', { node: 'fmt0', overlay: 'ov' }]]],
  ['a snapshot in a transaction', 'inline', (d) => [['transaction', { actions: [{ type: 'blockdev-snapshot-sync', data: snapSync(d) }] }]]],
  ['block-stream', 'inline', () => [['block-stream', { 'job-id': 'j', device: 'fmt0' }], { settle: 'j' }]],
  ['block-commit (active)', 'inline', () => [['block-commit', { 'job-id': 'j', device: 'fmt0' }], { ready: 'j' }, ['job-complete', { id: 'j' }], { settle: 'j' }]],
  ['blockdev-mirror', 'inline', (d) => [target(d), ['blockdev-mirror', { 'job-id': 'j', device: 'fmt0', target: 'tgt', sync: 'full' }],
    { ready: 'j' }, ['job-complete', { id: 'j' }], { settle: 'j' }]],
  ['blockdev-backup', 'inline', (d) => [target(d), ['blockdev-backup', { 'job-id': 'j', device: 'fmt0', target: 'tgt', sync: 'full' }], { settle: 'j' }]],
  // Fleecing: the target's backing link stays on the source (not moved onto the job's filter,
  // which would make a loop target -> filter -> target), while the job runs.
  ['blockdev-backup sync=none into a fleecing overlay', 'inline', (d) => [
    ['blockdev-add', { driver: 'qcow2', 'node-name': 'tgt', file: { driver: 'file', filename: join(d, 'tgt.qcow2') }, backing: 'fmt0' }],
    ['blockdev-backup', { 'job-id': 'j', device: 'fmt0', target: 'tgt', sync: 'none', 'filter-node-name': 'cbw' }]]],
];

describe('query-named-block-nodes after live operations, side by side with qsd 7.2', () => {
  for (const [name, top, script] of cases) {
    it(`${name}: the same nodes, order, generated-name numbers and read-only flags`, async () => {
      const qsd = await session('qsd', top, script);
      const blockd = await session('blockd', top, script);
      expect(blockd).toEqual(qsd);
    }, 60_000);
  }
});
