/**
 * `transaction`, side by side with qemu-storage-daemon 7.2: the same QMP
 * script goes to qsd and to bin/blockd (same images, same arguments) and
 * must get the same replies and the same job event sequences. Data is
 * compared with qemu-img compare over NBD (read through the daemon, whose
 * caches may hold metadata not yet in the files); the files themselves are
 * checked with qemu-img check / compare once the daemons have stopped.
 *
 * Scenarios: bitmap add + clear + backup in one transaction (the clear is
 * seen by the backup); a transaction whose later action fails (everything
 * before it rolled back: bitmaps, internal and external snapshots, backup
 * jobs that never ran); the abort action; completion-mode=grouped with two
 * backups where one target runs out of space (a 2 MiB tmpfs, needs root) and
 * the other is cancelled, and with a manual job-finalize; external snapshots
 * of two devices in one transaction.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { QmpCommandError, type QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon, waitFor, type Ev } from '../helpers/live.ts';
import { run, tryRun } from '../helpers/tools.ts';

const who = ['qsd', 'blockd'] as const;
type Who = typeof who[number];
type Reply = { return: unknown } | { error: { class: string; desc: string } };

interface Side { dir: string; proc: Running; qmp: QmpClient; events: Ev[] }
const sides = {} as Record<Who, Side>;
const root = tempDir('blockd-txn-');
const MiB = 1024 * 1024;

const img = (w: Who, name: string) => join(sides[w].dir, name);
const nbdUri = (w: Who, name: string) => `nbd+unix:///${name}?socket=${img(w, 'nbd.sock')}`;

beforeAll(async () => {
  for (const w of who) {
    const dir = join(root, w);
    mkdirSync(join(dir, 'mnt'), { recursive: true });
    // A target that runs out of space: an 8 MiB raw image on a 2 MiB tmpfs.
    run('mount', ['-t', 'tmpfs', '-o', 'size=2M', 'tmpfs', join(dir, 'mnt')]);
    run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'mnt', 'full.raw'), '8M']);
    for (const n of ['a', 'b', 'ta', 'tb', 'tc']) run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, `${n}.qcow2`), '8M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 6M', join(dir, 'a.qcow2')]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 1M 7M', join(dir, 'b.qcow2')]);
    const node = (name: string, file: string) => ['--blockdev', `driver=qcow2,node-name=${name},file.driver=file,file.filename=${join(dir, file)}`];
    const d = await qmpDaemon(w, dir, [
      ...node('a', 'a.qcow2'), ...node('b', 'b.qcow2'), ...node('ta', 'ta.qcow2'), ...node('tb', 'tb.qcow2'), ...node('tc', 'tc.qcow2'),
      '--blockdev', `driver=raw,node-name=full,file.driver=file,file.filename=${join(dir, 'mnt', 'full.raw')}`,
      '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
      '--export', 'type=nbd,id=ea,node-name=a,name=a,writable=on',
    ]);
    sides[w] = { dir, ...d };
  }
}, 60_000);

afterAll(async () => {
  for (const w of who) {
    sides[w]?.qmp.close();
    await sides[w]?.proc.stop();
    spawnSync('umount', ['-l', join(root, w, 'mnt')]);
  }
});

async function exec(w: Who, cmd: string, args?: Record<string, unknown>): Promise<Reply> {
  try {
    return { return: await sides[w].qmp.execute(cmd, args) };
  } catch (e) {
    if (e instanceof QmpCommandError) return { error: { class: e.errorClass, desc: e.desc } };
    throw e;
  }
}

/** Each daemon's directory as <dir>, so file names in replies compare. */
const norm = (w: Who, v: unknown): unknown => JSON.parse(JSON.stringify(v).split(sides[w].dir).join('<dir>'));

/** The same command on both (args may name files: a function of the side); the replies must be equal. */
async function both(cmd: string, args?: Record<string, unknown> | ((w: Who) => Record<string, unknown>)): Promise<Reply> {
  const r: Reply[] = [];
  for (const w of who) r.push(norm(w, await exec(w, cmd, typeof args === 'function' ? args(w) : args)) as Reply);
  expect(r[1], `${cmd} ${JSON.stringify(typeof args === 'function' ? args('blockd') : args)}`).toEqual(r[0]);
  return r[0]!;
}

const act = (type: string, data: Record<string, unknown> = {}) => ({ type, data });
const txn = (actions: unknown[], properties?: Record<string, unknown>) => (properties ? { actions, properties } : { actions });

/** Waits on both sides until job `id` is gone (status null) or has concluded. */
async function waitJob(id: string, status: 'null' | 'concluded' = 'null'): Promise<void> {
  for (const w of who) await waitFor(sides[w].events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && e.data.status === status);
}

/**
 * Job events since `from`, one line each, in order. `mask` names jobs whose
 * progress depends on timing (a failed or cancelled copy): their offsets are
 * left out.
 */
function jobLines(w: Who, from: number, mask: string[] = []): string[] {
  return sides[w].events.slice(from).filter((e) => e.event.startsWith('JOB_') || e.event.startsWith('BLOCK_JOB_')).map((e) => {
    const id = String(e.data.id ?? e.data.device);
    if (e.event === 'JOB_STATUS_CHANGE') return `${id} ${String(e.data.status)}`;
    const d = { ...e.data };
    if (mask.includes(id)) delete d.offset;
    return `${e.event} ${JSON.stringify(d)}`;
  });
}

const mark = () => ({ qsd: sides.qsd.events.length, blockd: sides.blockd.events.length });

/** The same job event lines on both sides since `m`. */
function sameJobEvents(m: Record<Who, number>, mask: string[] = []): string[] {
  const q = jobLines('qsd', m.qsd, mask);
  expect(jobLines('blockd', m.blockd, mask)).toEqual(q);
  return q;
}

/** Non-implicit nodes with their dirty bitmaps (name, count, recording, busy, persistent) and read-only flag. */
async function graphState(w: Who): Promise<unknown> {
  const nodes = (await sides[w].qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
  return nodes.filter((n) => !String(n['node-name']).startsWith('#')).map((n) => ({
    node: n['node-name'], ro: n.ro, backing: (n as { image?: { 'backing-filename'?: string } }).image?.['backing-filename']?.split('/').pop(),
    bitmaps: n['dirty-bitmaps'],
  }));
}

async function sameGraph(): Promise<unknown> {
  const q = await graphState('qsd');
  expect(await graphState('blockd')).toEqual(q);
  return q;
}

function snapshotsOf(path: string): string {
  return run('qemu-img', ['snapshot', '-U', '-l', path]).split('\n').slice(2).map((l) => l.split(/\s+/)[1]).filter(Boolean).join(',');
}

function checkImage(path: string): void {
  const r = tryRun('qemu-img', ['check', path]);
  expect(r.status, `qemu-img check ${path}: ${r.stdout}${r.stderr}`).toBe(0);
}

function compareImages(a: string, b: string, args: string[] = []): void {
  const r = tryRun('qemu-img', ['compare', ...args, a, b]);
  expect(r.status, `qemu-img compare ${a} ${b}: ${r.stdout}${r.stderr}`).toBe(0);
}

let comparisons = 0;

/** Node `x` and node `y` of each daemon hold the same data (read over NBD through temporary read-only exports). */
async function sameData(x: string, y: string): Promise<void> {
  const id = (n: string) => `cmp${comparisons}-${n}`;
  comparisons++;
  for (const w of who) {
    for (const n of [x, y]) await sides[w].qmp.execute('block-export-add', { type: 'nbd', id: id(n), 'node-name': n, name: id(n) });
    compareImages(nbdUri(w, id(x)), nbdUri(w, id(y)), ['-f', 'raw', '-F', 'raw']);
    // 'hard': the comparing client may not have been seen leaving yet.
    for (const n of [x, y]) await sides[w].qmp.execute('block-export-del', { id: id(n), mode: 'hard' });
    // The exports go once their client has gone: wait, so later queries see only the test's own.
    for (const end = Date.now() + 10_000; ;) {
      const list = (await sides[w].qmp.execute('query-block-exports')) as { id: string }[];
      if (!list.some((e) => e.id.startsWith('cmp'))) break;
      if (Date.now() > end) throw new Error(`${w}: comparison exports did not go away`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

describe('transaction, side by side with qsd', () => {
  it('validation, the abort action, and grouped mode refused by non-job actions', async () => {
    const m = mark();
    await both('transaction', txn([]));
    await both('transaction', txn([act('abort')]));
    await both('transaction', txn([act('abort')], { 'completion-mode': 'grouped' }));
    await both('transaction', txn([act('nope')]));
    await both('transaction', txn([{ type: 'abort' }]));
    await both('transaction', txn([act('abort', { x: 1 })]));
    await both('transaction', txn([act('block-dirty-bitmap-add', { node: 'a' })]));
    await both('transaction', txn([act('blockdev-backup', { device: 'a', target: 'ta', sync: 'fast' })]));
    await both('transaction', { actions: [], properties: { 'completion-mode': 'all' } });
    await both('transaction', { actions: {} });
    for (const [type, data] of [
      ['block-dirty-bitmap-add', { node: 'a', name: 'g' }], ['block-dirty-bitmap-clear', { node: 'a', name: 'g' }],
      ['block-dirty-bitmap-merge', { node: 'a', target: 'g', bitmaps: [] }],
      ['blockdev-snapshot-internal-sync', { device: 'a', name: 'g' }],
      ['blockdev-snapshot-sync', { 'node-name': 'a', 'snapshot-file': '/nonexistent/x', 'snapshot-node-name': 'g' }],
    ] as const) {
      await both('transaction', txn([act(type, data)], { 'completion-mode': 'grouped' }));
    }
    expect(await both('transaction', txn([act('abort')]))).toEqual({ error: { class: 'GenericError', desc: 'Transaction aborted using Abort action' } });
    expect(jobLines('qsd', m.qsd)).toEqual([]);
    expect(jobLines('blockd', m.blockd)).toEqual([]);
    await sameGraph();
  });

  it('bitmap add + clear + backup in one transaction: the backup sees the cleared bitmap', async () => {
    await both('block-dirty-bitmap-add', { node: 'a', name: 'b0', granularity: 65536 });
    for (const w of who) run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 1M 64k', '-c', 'write -P 0x34 7M 4k', nbdUri(w, 'a')]);
    // An incremental backup from a bitmap cleared earlier in the same transaction copies nothing.
    let m = mark();
    await both('transaction', txn([
      act('block-dirty-bitmap-add', { node: 'a', name: 'b1' }),
      act('block-dirty-bitmap-clear', { node: 'a', name: 'b0' }),
      act('blockdev-backup', { 'job-id': 'inc0', device: 'a', target: 'tc', sync: 'incremental', bitmap: 'b0' }),
    ]));
    await waitJob('inc0');
    expect(sameJobEvents(m)).toContain('BLOCK_JOB_COMPLETED {"device":"inc0","len":0,"offset":0,"speed":0,"type":"backup"}');
    await sameGraph();
    // The new anchor: a full backup and a cleared bitmap at the same point; writes after it are in the bitmap.
    for (const w of who) run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x35 2M 128k', nbdUri(w, 'a')]);
    m = mark();
    await both('transaction', txn([
      act('blockdev-backup', { 'job-id': 'full0', device: 'a', target: 'ta', sync: 'full' }),
      act('block-dirty-bitmap-clear', { node: 'a', name: 'b0' }),
      act('block-dirty-bitmap-add', { node: 'a', name: 'b2', disabled: true }),
    ]));
    await waitJob('full0');
    sameJobEvents(m);
    await both('x-debug-block-dirty-bitmap-sha256', { node: 'a', name: 'b0' });
    await both('x-debug-block-dirty-bitmap-sha256', { node: 'a', name: 'b1' });
    // b0 went in front of b1: the bitmap that lives on after a backup is QEMU's successor, made when inc0 started.
    const g = await sameGraph() as { node: string; bitmaps?: { name: string; count: number }[] }[];
    expect(g.find((n) => n.node === 'a')!.bitmaps!.map((b) => [b.name, b.count])).toEqual([['b2', 0], ['b0', 0], ['b1', 128 * 1024]]);
    await sameData('ta', 'a');
  });

  it('a failing action rolls back the ones before it', async () => {
    for (const w of who) run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x36 4M 64k', nbdUri(w, 'a')]);
    const before = await sameGraph();
    const m = mark();
    // Second action fails: the bitmap added first is gone again.
    await both('transaction', txn([act('block-dirty-bitmap-add', { node: 'a', name: 'gone' }), act('block-dirty-bitmap-add', { node: 'a', name: 'b0' })]));
    // Every kind of action before a failure, then the failure (a missing node).
    await both('transaction', (w) => txn([
      act('block-dirty-bitmap-add', { node: 'a', name: 'x1', persistent: true }),
      act('block-dirty-bitmap-clear', { node: 'a', name: 'b0' }),
      act('block-dirty-bitmap-disable', { node: 'a', name: 'b1' }),
      act('block-dirty-bitmap-enable', { node: 'a', name: 'b2' }),
      act('block-dirty-bitmap-merge', { node: 'a', target: 'b2', bitmaps: ['b1'] }),
      act('block-dirty-bitmap-remove', { node: 'a', name: 'b1' }),
      act('blockdev-snapshot-internal-sync', { device: 'a', name: 'isnap' }),
      act('blockdev-snapshot-sync', { 'node-name': 'a', 'snapshot-file': join(sides[w].dir, 'never.qcow2'), 'snapshot-node-name': 'never', format: 'qcow2' }),
      act('blockdev-backup', { 'job-id': 'bk1', device: 'b', target: 'tb', sync: 'full' }),
      act('drive-backup', { 'job-id': 'bk2', device: 'tc', target: join(sides[w].dir, 'drive.qcow2'), sync: 'full', format: 'qcow2' }),
      act('block-dirty-bitmap-add', { node: 'nope', name: 'x2' }),
    ]));
    // The abort action at the end of a transaction that did as much.
    await both('transaction', txn([
      act('blockdev-snapshot-internal-sync', { device: 'b', name: 'isnap2' }),
      act('blockdev-backup', { 'job-id': 'bk3', device: 'a', target: 'ta', sync: 'full' }),
      act('abort'),
    ]));
    // The jobs were created and cancelled before they started.
    const lines = sameJobEvents(m);
    expect(lines).toEqual(['bk1 created', 'bk2 created', 'bk2 aborting', 'bk2 concluded', 'bk2 null', 'bk1 aborting', 'bk1 concluded', 'bk1 null',
      'bk3 created', 'bk3 aborting', 'bk3 concluded', 'bk3 null']);
    expect(await sameGraph()).toEqual(before);
    for (const b of ['b0', 'b1', 'b2']) await both('x-debug-block-dirty-bitmap-sha256', { node: 'a', name: b });
    await both('query-block-exports');
    await both('query-jobs');
    for (const w of who) {
      expect(snapshotsOf(img(w, 'a.qcow2'))).toBe('');
      expect(snapshotsOf(img(w, 'b.qcow2'))).toBe('');
      // The export still writes to 'a' (nothing was left read-only or moved).
      run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x37 5M 64k', nbdUri(w, 'a')]);
    }
    await sameGraph();
  });

  it('grouped: one backup fails (target out of space), the other is cancelled', async () => {
    let m = mark();
    await both('transaction', txn([
      act('blockdev-backup', { 'job-id': 'g1', device: 'a', target: 'ta', sync: 'full', speed: MiB, 'auto-dismiss': false }),
      act('blockdev-backup', { 'job-id': 'g2', device: 'b', target: 'full', sync: 'full', 'auto-dismiss': false }),
    ], { 'completion-mode': 'grouped' }));
    await waitJob('g1', 'concluded');
    await waitJob('g2', 'concluded');
    const lines = sameJobEvents(m, ['g1', 'g2']);
    expect(lines).toContain('BLOCK_JOB_COMPLETED {"device":"g2","len":8388608,"speed":0,"type":"backup","error":"No space left on device"}');
    expect(lines).toContain(`BLOCK_JOB_CANCELLED {"device":"g1","len":8388608,"speed":${MiB},"type":"backup"}`);
    const jobs = async (w: Who) => ((await sides[w].qmp.execute('query-jobs')) as Record<string, unknown>[]).map((j) => ({ ...j, 'current-progress': undefined }) as Record<string, unknown>);
    expect(await jobs('blockd')).toEqual(await jobs('qsd'));
    expect((await jobs('qsd')).map((j) => j.error)).toEqual(['No space left on device', 'Operation canceled']);
    await both('job-dismiss', { id: 'g1' });
    await both('job-dismiss', { id: 'g2' });

    // A user's cancel of one job cancels the other.
    m = mark();
    await both('transaction', txn([
      act('blockdev-backup', { 'job-id': 'c1', device: 'a', target: 'ta', sync: 'full', speed: MiB }),
      act('blockdev-backup', { 'job-id': 'c2', device: 'b', target: 'tb', sync: 'full', speed: MiB }),
    ], { 'completion-mode': 'grouped' }));
    await both('job-cancel', { id: 'c2' });
    await waitJob('c1');
    expect(sameJobEvents(m, ['c1', 'c2']).filter((l) => l.startsWith('BLOCK_JOB_')).map((l) => l.split(' ')[0])).toEqual(['BLOCK_JOB_CANCELLED', 'BLOCK_JOB_CANCELLED']);
    await sameGraph();
  });

  it('grouped: the jobs wait for each other and are finalised together', async () => {
    const m = mark();
    await both('transaction', txn([
      act('blockdev-backup', { 'job-id': 'p1', device: 'a', target: 'ta', sync: 'full', 'auto-finalize': false }),
      act('blockdev-backup', { 'job-id': 'p2', device: 'b', target: 'tb', sync: 'full' }),
    ], { 'completion-mode': 'grouped' }));
    for (const w of who) await waitFor(sides[w].events, (e) => e.event === 'BLOCK_JOB_PENDING');
    await both('query-jobs');
    await both('job-finalize', { id: 'p2' });
    await waitJob('p1');
    // Which copy finishes first is timing; the rest is not.
    const perJob = (w: Who, id: string) => jobLines(w, m[w]).filter((l) => l.startsWith(`${id} `) || l.includes(`"${id}"`));
    for (const id of ['p1', 'p2']) expect(perJob('blockd', id)).toEqual(perJob('qsd', id));
    const fromPending = (w: Who) => { const l = jobLines(w, m[w]); return l.slice(l.findIndex((x) => x.endsWith(' pending'))); };
    expect(fromPending('blockd')).toEqual(fromPending('qsd'));
    expect(fromPending('qsd')).toEqual(['p2 pending', 'p1 pending', 'BLOCK_JOB_PENDING {"type":"backup","id":"p1"}',
      'BLOCK_JOB_COMPLETED {"device":"p2","len":8388608,"offset":8388608,"speed":0,"type":"backup"}', 'p2 concluded', 'p2 null',
      'BLOCK_JOB_COMPLETED {"device":"p1","len":8388608,"offset":8388608,"speed":0,"type":"backup"}', 'p1 concluded', 'p1 null']);
    await sameData('ta', 'a');
    await sameData('tb', 'b');
  });

  it('external snapshots of two devices in one transaction: both or neither', async () => {
    const before = await sameGraph();
    const m = mark();
    // The second fails (its node name is taken): the first overlay is undone.
    await both('transaction', (w) => txn([
      act('blockdev-snapshot-sync', { 'node-name': 'a', 'snapshot-file': join(sides[w].dir, 'sa0.qcow2'), 'snapshot-node-name': 'sa0' }),
      act('blockdev-snapshot-sync', { 'node-name': 'b', 'snapshot-file': join(sides[w].dir, 'sb0.qcow2'), 'snapshot-node-name': 'ta' }),
    ]));
    expect(await sameGraph()).toEqual(before);
    for (const w of who) run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x38 6M 64k', nbdUri(w, 'a')]);
    // Both: 'a' (exported) gets its overlay; 'b' has no users, so its overlay node is not kept (as in qsd), its file is.
    await both('transaction', (w) => txn([
      act('blockdev-snapshot-sync', { 'node-name': 'a', 'snapshot-file': join(sides[w].dir, 'sa.qcow2'), 'snapshot-node-name': 'sa' }),
      act('blockdev-snapshot-sync', { 'node-name': 'b', 'snapshot-file': join(sides[w].dir, 'sb.qcow2'), 'snapshot-node-name': 'sb' }),
    ]));
    const g = await sameGraph() as { node: string; ro: boolean }[];
    expect(g.map((n) => [n.node, n.ro])).toEqual(expect.arrayContaining([['sa', false], ['a', true], ['b', true]]));
    await both('query-block-exports');
    // 'a' is a backing node now: refused, the same way.
    await both('transaction', (w) => txn([
      act('blockdev-snapshot-sync', { 'node-name': 'a', 'snapshot-file': join(sides[w].dir, 'sa2.qcow2'), 'snapshot-node-name': 'sa2' }),
    ]));
    expect(jobLines('qsd', m.qsd)).toEqual([]);
    expect(jobLines('blockd', m.blockd)).toEqual([]);
    // The overlay reads as the image it was taken of; new writes land in it.
    await sameData('sa', 'a');
    for (const w of who) run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x39 7M 64k', nbdUri(w, 'a')]);
    await sameGraph();
  });

  it('blockd only: grouped backups of a transaction that fails end cleanly (qsd 7.2 hangs here)', async () => {
    const nodes = async () => ((await sides.blockd.qmp.execute('query-named-block-nodes', { flat: true })) as { 'node-name': string }[]).map((n) => n['node-name']);
    const before = await nodes();
    const from = sides.blockd.events.length;
    expect(await exec('blockd', 'transaction', txn([
      act('blockdev-backup', { 'job-id': 'x1', device: 'tc', target: 'ta', sync: 'full' }),
      act('blockdev-backup', { 'job-id': 'x2', device: 'sa', target: 'tb', sync: 'full' }),
      act('abort'),
    ], { 'completion-mode': 'grouped' }))).toEqual({ error: { class: 'GenericError', desc: 'Transaction aborted using Abort action' } });
    // Aborted newest first; the abort of x2 cancels x1, which never started, and ends it too.
    expect(jobLines('blockd', from)).toEqual(['x1 created', 'x2 created', 'x2 aborting', 'x2 concluded', 'x2 null', 'x1 aborting', 'x1 concluded', 'x1 null']);
    expect(await exec('blockd', 'query-jobs')).toEqual({ return: [] });
    // No copy-before-write filter is left behind.
    expect(await nodes()).toEqual(before);
  });

  it('the images, once the daemons have stopped', async () => {
    for (const w of who) {
      sides[w].qmp.close();
      expect(await sides[w].proc.stop()).toBe(0);
    }
    for (const w of who) {
      for (const f of ['a', 'b', 'ta', 'tb', 'tc', 'sa', 'sb', 'sa0', 'drive']) checkImage(img(w, `${f}.qcow2`));
      // Snapshots taken in failed transactions were deleted again.
      for (const f of ['a', 'b']) expect(snapshotsOf(img(w, `${f}.qcow2`))).toBe('');
      // The last full backups are the images they copied (as they were then: 'a' and 'b' got no writes since).
      compareImages(img(w, 'tb.qcow2'), img(w, 'b.qcow2'));
      compareImages(img(w, 'sb.qcow2'), img(w, 'b.qcow2'));
    }
    // Both daemons left the same data everywhere.
    for (const f of ['a', 'b', 'ta', 'tb', 'tc', 'sa', 'sb', 'drive']) compareImages(img('qsd', `${f}.qcow2`), img('blockd', `${f}.qcow2`));
  });
});
