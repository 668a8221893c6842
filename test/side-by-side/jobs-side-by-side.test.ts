/**
 * blockdev-create and the job commands, side by side with
 * qemu-storage-daemon 7.2: bin/blockd and qsd started with the same
 * --chardev/--monitor arguments; the same QMP commands sent to both must give the
 * same JOB_STATUS_CHANGE sequences, query-jobs results, error texts and
 * classes, and files of the same size and allocation (stat, qemu-img info).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdirSync, statSync } from 'node:fs';
import { dataMap, expectSameAllocation } from '../helpers/allocation.ts';
import { join } from 'node:path';
import { QmpClient, QmpCommandError } from '../../src/qmp/client/qmp-client.ts';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';

interface Ev { event: string; data: Record<string, unknown> }
type Reply = { return: unknown } | { error: { class: string; desc: string } };

interface Target {
  dir: string;
  events: Ev[];
  execute(cmd: string, args?: Record<string, unknown>): Promise<Reply>;
  close(): Promise<void>;
}

/** A daemon started with a QMP monitor on a Unix socket, both with the same qsd-style arguments. */
async function daemonTarget(which: 'qsd' | 'blockd', dir: string): Promise<Target> {
  const sock = join(dir, 'qmp.sock');
  const proc: Running = await startDaemon(which, ['--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'm'], sock);
  const client = await QmpClient.connect(sock);
  const events: Ev[] = [];
  client.on('event', (e: { event: string; data?: Record<string, unknown> }) => events.push({ event: e.event, data: e.data ?? {} }));
  return {
    dir,
    events,
    async execute(cmd, args) {
      try {
        return { return: await client.execute(cmd, args) };
      } catch (e) {
        if (e instanceof QmpCommandError) return { error: { class: e.errorClass, desc: e.desc } };
        throw e;
      }
    },
    async close() { client.close(); await proc.stop(); },
  };
}

let root: string;
let qsd: Target;
let blockd: Target;

beforeAll(async () => {
  root = tempDir('blockd-jobs-sbs-');
  mkdirSync(join(root, 'qsd'));
  mkdirSync(join(root, 'blockd'));
  qsd = await daemonTarget('qsd', join(root, 'qsd'));
  blockd = await daemonTarget('blockd', join(root, 'blockd'));
});

afterAll(async () => {
  await qsd?.close();
  await blockd?.close();
});

async function waitConcluded(t: Target, id: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!t.events.some((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && (e.data.status === 'concluded' || e.data.status === 'null'))) {
    if (Date.now() > end) throw new Error(`job ${id} did not conclude`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const jobEvents = (t: Target, id: string) =>
  t.events.filter((e) => e.data.id === id || e.data.device === id).map((e) => (e.event === 'JOB_STATUS_CHANGE' ? e.data.status : e.event));

/** Replaces each target's directory by a placeholder so file names in messages compare equal. */
function norm(t: Target, v: unknown): unknown {
  return JSON.parse(JSON.stringify(v).split(t.dir).join('<dir>'));
}

/** Runs the same command on both; returns both normalised replies. */
async function both(cmd: string, args: (t: Target) => Record<string, unknown> = () => ({})): Promise<[unknown, unknown]> {
  const a = await qsd.execute(cmd, args(qsd));
  const b = await blockd.execute(cmd, args(blockd));
  return [norm(qsd, a), norm(blockd, b)];
}

function fileFacts(path: string): Record<string, unknown> {
  const st = statSync(path);
  const info = JSON.parse(run('qemu-img', ['info', '--output=json', '-U', path])) as Record<string, unknown>;
  // Allocation: the data map exactly, st_blocks (actual-size) up to an extent-tree block or two (helpers/allocation.ts).
  return { size: st.size, data: dataMap(path), mode: st.mode & 0o777, 'virtual-size': info['virtual-size'], format: info.format };
}

describe('blockdev-create file, side by side with qemu-storage-daemon', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['off', { size: 1048576 + 1000 }],
    ['off0', { size: 0 }],
    ['falloc', { size: 3 * 1048576 + 512, preallocation: 'falloc' }],
    ['falloc0', { size: 0, preallocation: 'falloc' }],
    ['full', { size: 2 * 1048576 + 4096, preallocation: 'full' }],
    ['full1', { size: 1000, preallocation: 'full' }],
    ['hint', { size: 65536, 'extent-size-hint': 4096, nocow: true }],
  ];
  for (const [name, options] of cases) {
    it(`${name}: same events, query-jobs and file`, async () => {
      const id = `c_${name}`;
      const [ra, rb] = await both('blockdev-create', (t) => ({ 'job-id': id, options: { driver: 'file', filename: join(t.dir, `${name}.img`), ...options } }));
      expect(rb).toEqual(ra);
      await waitConcluded(qsd, id);
      await waitConcluded(blockd, id);
      expect(jobEvents(blockd, id)).toEqual(jobEvents(qsd, id));
      expect(jobEvents(blockd, id)).toEqual(['created', 'running', 'waiting', 'pending', 'concluded']);
      const [qa, qb] = await both('query-jobs');
      expect(qb).toEqual(qa);
      expect(fileFacts(join(blockd.dir, `${name}.img`))).toEqual(fileFacts(join(qsd.dir, `${name}.img`)));
      expectSameAllocation(join(blockd.dir, `${name}.img`), join(qsd.dir, `${name}.img`));
      const [da, db] = await both('job-dismiss', () => ({ id }));
      expect(db).toEqual(da);
      expect(jobEvents(blockd, id)).toEqual(jobEvents(qsd, id));
    });
  }

  const failures: [string, (t: Target) => Record<string, unknown>][] = [
    ['metadata', (t) => ({ filename: join(t.dir, 'meta.img'), size: 4096, preallocation: 'metadata' })],
    ['hint', (t) => ({ filename: join(t.dir, 'hint-big.img'), size: 4096, 'extent-size-hint': 2 ** 33 })],
    ['nodir', (t) => ({ filename: join(t.dir, 'no', 'such.img'), size: 4096 })],
    ['isdir', (t) => ({ filename: t.dir, size: 4096 })],
    ['negative', (t) => ({ filename: join(t.dir, 'neg.img'), size: -1 })],
    ['huge', (t) => ({ filename: join(t.dir, 'huge.img'), size: 2 ** 62 })],
    ['hugefalloc', (t) => ({ filename: join(t.dir, 'hugef.img'), size: 2 ** 60, preallocation: 'falloc' })],
  ];
  for (const [name, options] of failures) {
    it(`fails like qsd: ${name}`, async () => {
      const id = `f_${name}`;
      const [ra, rb] = await both('blockdev-create', (t) => ({ 'job-id': id, options: { driver: 'file', ...options(t) } }));
      expect(rb).toEqual(ra);
      await waitConcluded(qsd, id);
      await waitConcluded(blockd, id);
      expect(jobEvents(blockd, id)).toEqual(jobEvents(qsd, id));
      const [qa, qb] = await both('query-jobs');
      expect(qb).toEqual(qa);
      const [da, db] = await both('job-dismiss', () => ({ id }));
      expect(db).toEqual(da);
    });
  }
});

describe('job command errors, side by side with qemu-storage-daemon', () => {
  it('argument and driver errors', async () => {
    const calls: [string, (t: Target) => Record<string, unknown>][] = [
      ['blockdev-create', (t) => ({ 'job-id': 'a', options: { driver: 'file', filename: join(t.dir, 'a.img') } })],
      ['blockdev-create', (t) => ({ options: { driver: 'file', filename: join(t.dir, 'a.img'), size: 5 } })],
      ['blockdev-create', () => ({ 'job-id': 'a' })],
      ['blockdev-create', () => ({ 'job-id': 'a', options: { size: 5 } })],
      ['blockdev-create', () => ({ 'job-id': 'a', options: { driver: 'nosuch' } })],
      ['blockdev-create', (t) => ({ 'job-id': 'a', options: { driver: 'file', filename: join(t.dir, 'a.img'), size: 5, preallocation: 'bogus' } })],
      ['blockdev-create', (t) => ({ 'job-id': 'a', options: { driver: 'file', filename: join(t.dir, 'a.img'), size: 5, x: 1 } })],
      ['blockdev-create', (t) => ({ 'job-id': 'a', options: { driver: 'file', filename: join(t.dir, 'a.img'), size: '5' } })],
      ['blockdev-create', () => ({ 'job-id': 'a', options: { driver: 'raw', size: 5 } })],
      ['blockdev-create', () => ({ 'job-id': 'a', options: { driver: 'raw' } })],
      ['blockdev-create', () => ({ 'job-id': '1x', options: { driver: 'null-co' } })],
      ['blockdev-create', (t) => ({ 'job-id': '1x', options: { driver: 'file', filename: join(t.dir, 'a.img'), size: 5 } })],
      ['blockdev-create', (t) => ({ 'job-id': '', options: { driver: 'file', filename: join(t.dir, 'a.img'), size: 5 } })],
      ['job-pause', () => ({ id: 'nope' })],
      ['job-pause', () => ({})],
      ['job-resume', () => ({ id: 'nope' })],
      ['job-cancel', () => ({ id: 'nope' })],
      ['job-complete', () => ({ id: 'nope' })],
      ['job-finalize', () => ({ id: 'nope' })],
      ['job-dismiss', () => ({ id: 'nope' })],
      ['block-job-pause', () => ({ device: 'nope' })],
      ['block-job-resume', () => ({ device: 'nope' })],
      ['block-job-cancel', () => ({ device: 'nope', force: true })],
      ['block-job-complete', () => ({ device: 'nope' })],
      ['block-job-set-speed', () => ({ device: 'nope', speed: 1 })],
      ['block-job-set-speed', () => ({ device: 'nope', speed: 1.5 })],
      ['block-job-dismiss', () => ({ id: 'nope' })],
      ['block-job-finalize', () => ({ id: 'nope' })],
      ['query-jobs', () => ({ x: 1 })],
    ];
    const before = [qsd.events.length, blockd.events.length];
    for (const [cmd, args] of calls) {
      const [a, b] = await both(cmd, args);
      expect({ cmd, args: args(blockd), reply: b }).toEqual({ cmd, args: args(blockd), reply: a });
    }
    // None of them got as far as creating a job.
    expect([qsd.events.length, blockd.events.length]).toEqual(before);
  });

  it('verbs on a concluded create job, and a duplicate id', async () => {
    const id = 'v1';
    await both('blockdev-create', (t) => ({ 'job-id': id, options: { driver: 'file', filename: join(t.dir, 'v.img'), size: 4096 } }));
    await waitConcluded(qsd, id);
    await waitConcluded(blockd, id);
    const calls: [string, Record<string, unknown>][] = [
      ['blockdev-create', { 'job-id': id, options: { driver: 'raw' } }],
      ['job-pause', { id }], ['job-resume', { id }], ['job-cancel', { id }], ['job-complete', { id }], ['job-finalize', { id }],
      ['block-job-pause', { device: id }], ['block-job-cancel', { device: id }], ['block-job-set-speed', { device: id, speed: 5 }],
      ['block-job-complete', { device: id }], ['block-job-dismiss', { id }], ['block-job-finalize', { id }],
      ['query-block-jobs', {}], ['query-jobs', {}], ['job-dismiss', { id }], ['job-dismiss', { id }], ['query-jobs', {}],
    ];
    for (const [cmd, args] of calls) {
      const [a, b] = await both(cmd, () => args);
      expect({ cmd, reply: b }).toEqual({ cmd, reply: a });
    }
    const dup = (t: Target) => ({ 'job-id': 'd1', options: { driver: 'file', filename: join(t.dir, 'd.img'), size: 4096 } });
    await both('blockdev-create', dup);
    const [a, b] = await both('blockdev-create', dup);
    expect(b).toEqual(a);
    expect(b).toEqual({ error: { class: 'GenericError', desc: "Job ID 'd1' already in use" } });
    await waitConcluded(qsd, 'd1');
    await waitConcluded(blockd, 'd1');
    expect(jobEvents(blockd, id)).toEqual(jobEvents(qsd, id));
  });
});
