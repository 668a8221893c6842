/**
 * External snapshots, block-stream and block-commit side by side with
 * qemu-storage-daemon 7.2: the same QMP scripts (errors included) on the
 * same three-image chain must give the same replies, the same job events
 * (JOB_STATUS_CHANGE and BLOCK_JOB_* with len/offset/speed/error) and the
 * same read-only flags and backing links; every image must then pass
 * `qemu-img check` and hold the data it should.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient, QmpCommandError } from '../../src/qmp/client/qmp-client.ts';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';

interface Ev { event: string; data: Record<string, unknown> }
/** A QMP command, a wait for a job to settle, a pause, or the node list as it is now (into the reply log). */
type Step = [string, Record<string, unknown>?] | { wait: string } | { sleep: number } | { nodes: true };

function makeChain(dir: string): void {
  run('qemu-img', ['create', '-f', 'qcow2', join(dir, 'base.qcow2'), '4M']);
  run('qemu-io', ['-c', 'write -P 1 0 1M', join(dir, 'base.qcow2')]);
  run('qemu-img', ['create', '-f', 'qcow2', '-b', join(dir, 'base.qcow2'), '-F', 'qcow2', join(dir, 'mid.qcow2')]);
  run('qemu-io', ['-c', 'write -P 2 1M 1M', join(dir, 'mid.qcow2')]);
  run('qemu-img', ['create', '-f', 'qcow2', '-b', join(dir, 'mid.qcow2'), '-F', 'qcow2', join(dir, 'top.qcow2')]);
  run('qemu-io', ['-c', 'write -P 3 2M 1M', join(dir, 'top.qcow2')]);
}

/**
 * Runs the script; returns one line per reply and one per event (kept apart:
 * whether an event is sent before or after a reply is a race in both), with
 * the directory and generated node names normalised.
 */
async function session(which: 'qsd' | 'blockd', script: (dir: string) => Step[]): Promise<{ log: string[]; evlog: string[]; nodes: string[]; dir: string }> {
  const dir = tempDir(`live-snap-${which}-`);
  mkdirSync(dir, { recursive: true });
  makeChain(dir);
  const sock = join(dir, 'qmp.sock');
  const proc: Running = await startDaemon(which, [
    '--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'm',
    '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
  ], sock);
  running.push(proc);
  const qmp = await QmpClient.connect(sock);
  const events: Ev[] = [];
  const log: string[] = [];
  const evlog: string[] = [];
  const norm = (v: unknown) => JSON.stringify(v).split(dir).join('<dir>').replace(/#block\d+/g, '#block');
  qmp.on('event', (e: { event: string; data?: Record<string, unknown> }) => {
    events.push({ event: e.event, data: e.data ?? {} });
    evlog.push(`${e.event} ${norm(e.data ?? {})}`);
  });
  let mark = 0;
  for (const step of script(dir)) {
    if ('wait' in step) {
      const end = Date.now() + 20_000;
      // A settling status announced since the last command (not an earlier one).
      while (!events.slice(mark).some((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === step.wait && (e.data.status === 'null' || e.data.status === 'concluded' || e.data.status === 'ready' || e.data.status === 'pending'))) {
        if (Date.now() > end) throw new Error(`${which}: job ${step.wait} did not settle: ${[...log, ...evlog].join('\n')}`);
        await new Promise((r) => setTimeout(r, 10));
      }
      // 'pending' settles only a job that waits for job-finalize; with auto-finalize it moves on by itself
      // (how soon is load): give it time to conclude.
      const settled = (e: Ev) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === step.wait && (e.data.status === 'null' || e.data.status === 'concluded');
      for (const until = Date.now() + 2_000; !events.slice(mark).some(settled) && events.slice(mark).some((e) => e.data.id === step.wait && e.data.status === 'pending') && Date.now() < until;) {
        await new Promise((r) => setTimeout(r, 10));
      }
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    if ('sleep' in step) { await new Promise((r) => setTimeout(r, step.sleep)); continue; }
    if ('nodes' in step) { log.push(`nodes:\n${(await chainView(qmp, norm)).join('\n')}`); continue; }
    const [cmd, args] = step as [string, Record<string, unknown>?];
    mark = events.length;
    try {
      const r = await qmp.execute(cmd, args);
      log.push(`${cmd} -> ${norm(r)}`);
    } catch (e) {
      if (!(e instanceof QmpCommandError)) throw e;
      log.push(`${cmd} -> ${e.errorClass}: ${norm(e.desc)}`);
    }
  }
  const nodes = await chainView(qmp, norm);
  qmp.close();
  await proc.stop();
  return { log, evlog, nodes, dir };
}

interface NodeInfo {
  'node-name': string; file: string; ro: boolean; drv: string; backing_file?: string; backing_file_depth: number;
  image: Record<string, unknown>;
}

/**
 * What query-named-block-nodes says about each node's place in a chain: its
 * filename (json: when the backing link is not what the header implies), the
 * live backing node's filename, the depth, and the header's backing name,
 * made absolute and with its format.
 */
async function chainView(qmp: QmpClient, norm: (v: unknown) => string): Promise<string[]> {
  const header = (i: Record<string, unknown>) => [i.filename, i['backing-filename'], i['full-backing-filename'], i['backing-filename-format']];
  const out: string[] = [];
  for (const flat of [true, false]) {
    const list = (await qmp.execute('query-named-block-nodes', { flat })) as NodeInfo[];
    for (const n of list) {
      if (n.drv === 'file') continue;
      // Non-flat: the backing-image levels, each with its header's backing name.
      const levels: unknown[] = [];
      for (let i: Record<string, unknown> | undefined = n.image; i; i = i['backing-image'] as Record<string, unknown> | undefined) levels.push(header(i));
      out.push(norm({
        flat, name: n['node-name'].startsWith('#') ? '#' : n['node-name'], drv: n.drv, file: n.file, ro: n.ro,
        backing: n.backing_file ?? null, depth: n.backing_file_depth, levels,
      }));
    }
  }
  return out.sort();
}

const running: Running[] = [];
afterEach(async () => { for (const p of running.splice(0)) await p.stop().catch(() => undefined); });

async function compare(script: (dir: string) => Step[]): Promise<{ dir: string; log: string[] }> {
  const q = await session('qsd', script);
  const b = await session('blockd', script);
  expect(b.log).toEqual(q.log);
  expect(b.evlog).toEqual(q.evlog);
  expect(b.nodes).toEqual(q.nodes);
  for (const img of ['base', 'mid', 'top']) run('qemu-img', ['check', join(b.dir, `${img}.qcow2`)]);
  return b;
}

const addTop = (dir: string): Step => ['blockdev-add', { driver: 'qcow2', 'node-name': 'top', file: { driver: 'file', filename: join(dir, 'top.qcow2') } }];

function reads(dir: string, image: string, expectations: string[]): void {
  const out = run('qemu-io', ['-r', ...expectations.flatMap((c) => ['-c', c]), join(dir, image)]);
  expect(out).not.toContain('verification failed');
}

describe('live block operations side by side with qsd 7.2', () => {
  it('blockdev-snapshot and blockdev-snapshot-sync: results and errors', async () => {
    const b = await compare((dir) => {
      run('qemu-img', ['create', '-f', 'qcow2', join(dir, 'ov.qcow2'), '4M']);
      run('qemu-img', ['create', '-f', 'qcow2', join(dir, 'ov8.qcow2'), '8M']);
      run('qemu-img', ['create', '-f', 'qcow2', join(dir, 'ov5.qcow2'), '4M']);
      return [
        addTop(dir),
        ['blockdev-add', { driver: 'raw', 'node-name': 'r', file: { driver: 'file', filename: join(dir, 'ov5.qcow2') } }],
        ['blockdev-snapshot', { node: 'top', overlay: 'r' }],
        ['blockdev-snapshot', { node: 'top', overlay: 'nope' }],
        ['blockdev-snapshot', { node: 'nope', overlay: 'r' }],
        ['blockdev-snapshot', { node: 'top', overlay: 'top' }],
        ['blockdev-add', { driver: 'qcow2', 'node-name': 'ov8', file: { driver: 'file', filename: join(dir, 'ov8.qcow2') }, backing: null }],
        ['blockdev-snapshot', { node: 'top', overlay: 'ov8' }],
        ['blockdev-add', { driver: 'qcow2', 'node-name': 'ov', file: { driver: 'file', filename: join(dir, 'ov.qcow2') }, backing: null }],
        ['blockdev-snapshot', { node: 'top', overlay: 'ov' }],
        ['blockdev-snapshot-sync', { 'node-name': 'ov', 'snapshot-file': join(dir, 's1.qcow2') }],
        ['blockdev-snapshot-sync', { 'node-name': 'ov', 'snapshot-file': join(dir, 's1.qcow2'), 'snapshot-node-name': 'ov' }],
        ['blockdev-snapshot-sync', { 'node-name': 'top', 'snapshot-file': join(dir, 's1.qcow2'), 'snapshot-node-name': 's0' }],
        ['blockdev-snapshot-sync', { 'snapshot-file': join(dir, 's4.qcow2'), 'snapshot-node-name': 's4' }],
        ['blockdev-snapshot-sync', { 'node-name': 'ov8', device: 'ov8', 'snapshot-file': join(dir, 's4.qcow2'), 'snapshot-node-name': 's4' }],
        ['blockdev-snapshot-sync', { 'node-name': 'ov8', 'snapshot-file': join(dir, 's2.qcow2'), 'snapshot-node-name': 's2' }],
      ];
    });
    const info = run('qemu-img', ['info', join(b.dir, 's2.qcow2')]);
    expect(info).toContain(`backing file: ${join(b.dir, 'ov8.qcow2')}`);
    expect(info).toContain('backing file format: qcow2');
    run('qemu-img', ['check', join(b.dir, 's2.qcow2')]);
  }, 60_000);

  it('block-stream and intermediate block-commit: events, errors, chain and data', async () => {
    const b = await compare((dir) => [
      addTop(dir),
      ['block-stream', { 'job-id': 's0', device: 'top', 'base-node': 'nope' }],
      ['block-stream', { 'job-id': 's0', device: 'nope' }],
      ['block-stream', { 'job-id': 's0', device: 'top', base: 'x', 'base-node': 'y' }],
      ['block-stream', { 'job-id': 's0', device: 'top', base: '/nonexist' }],
      ['block-commit', { 'job-id': 'c0', device: 'nope' }],
      ['block-stream', { device: 'top' }],
      ['block-commit', { device: 'top' }],
      ['block-stream', { 'job-id': 's9', device: 'top', 'backing-file': 'x' }],
      ['block-commit', { 'job-id': 'c9', device: 'top', 'backing-file': 'x' }],
      ['block-commit', { 'job-id': 'c9', device: 'top', 'top-node': 'top', 'base-node': 'top' }],
      ['block-commit', { 'job-id': 'c0', device: 'top', top: join(dir, 'mid.qcow2') }],
      { wait: 'c0' },
      ['block-stream', { 'job-id': 's1', device: 'top' }],
      { wait: 's1' },
    ]);
    expect(run('qemu-img', ['info', join(b.dir, 'top.qcow2')])).not.toContain('backing file');
    reads(b.dir, 'top.qcow2', ['read -P 1 0 1M', 'read -P 2 1M 1M', 'read -P 3 2M 1M', 'read -P 0 3M 1M']);
    reads(b.dir, 'base.qcow2', ['read -P 1 0 1M', 'read -P 2 1M 1M', 'read -P 0 2M 2M']);
  }, 60_000);

  it('block-stream down to a base: the middle layer is copied and dropped, the header names the base', async () => {
    const b = await compare((dir) => [
      addTop(dir),
      ['block-stream', { 'job-id': 's2', device: 'top', base: join(dir, 'base.qcow2'), speed: 0 }],
      { wait: 's2' },
    ]);
    expect(run('qemu-img', ['info', join(b.dir, 'top.qcow2')])).toContain(`backing file: ${join(b.dir, 'base.qcow2')}`);
    reads(b.dir, 'top.qcow2', ['read -P 1 0 1M', 'read -P 2 1M 1M', 'read -P 3 2M 1M', 'read -P 0 3M 1M']);
    // The base's data stayed in the base: only the middle layer was copied up.
    expect(run('qemu-img', ['map', '--output=json', join(b.dir, 'top.qcow2')])).toMatch(/"start": 0, "length": 1048576, "depth": 1/);
  }, 60_000);

  it('block-stream into a read-only top: reopened read-write for the job, read-only again after it', async () => {
    await compare((dir) => [
      ['blockdev-add', { driver: 'qcow2', 'node-name': 'top', 'read-only': true, file: { driver: 'file', filename: join(dir, 'top.qcow2') } }],
      ['block-stream', { 'job-id': 's3', device: 'top', base: join(dir, 'base.qcow2') }],
      { wait: 's3' },
      { nodes: true },
    ]);
  }, 60_000);

  it('backing names after snapshots, a commit under a read-only overlay and a stream to the next layer', async () => {
    const b = await compare((dir) => {
      run('qemu-img', ['create', '-f', 'qcow2', join(dir, 'ov.qcow2'), '4M']);
      return [
        addTop(dir),
        ['block-export-add', { type: 'nbd', id: 'e', 'node-name': 'top', writable: true }],
        // The new overlay's header names top: its filename stays plain.
        ['blockdev-snapshot-sync', { 'node-name': 'top', 'snapshot-file': join(dir, 's1.qcow2'), 'snapshot-node-name': 's1' }],
        // ov's header names nothing, its backing is s1: a json: filename, backing_file s1's.
        ['blockdev-add', { driver: 'qcow2', 'node-name': 'ov', file: { driver: 'file', filename: join(dir, 'ov.qcow2') }, backing: null }],
        ['blockdev-snapshot', { node: 's1', overlay: 'ov' }],
        // s1 is read-only now; its header must still come to name base.
        ['block-commit', { 'job-id': 'c0', device: 'ov', top: join(dir, 'top.qcow2'), base: join(dir, 'base.qcow2') }],
        { wait: 'c0' },
        // Nothing to copy (s1 is ov's own backing), but ov's header comes to name s1.
        ['block-stream', { 'job-id': 's0', device: 'ov', 'base-node': 's1' }],
        { wait: 's0' },
        ['block-export-del', { id: 'e' }],
        { sleep: 200 },
      ];
    });
    expect(run('qemu-img', ['info', '-U', join(b.dir, 's1.qcow2')])).toContain(`backing file: ${join(b.dir, 'base.qcow2')}`);
    expect(run('qemu-img', ['info', '-U', join(b.dir, 'ov.qcow2')])).toContain(`backing file: ${join(b.dir, 's1.qcow2')}`);
    reads(b.dir, 'ov.qcow2', ['read -P 1 0 1M', 'read -P 2 1M 1M', 'read -P 3 2M 1M', 'read -P 0 3M 1M']);
  }, 60_000);

  it('block-commit filter-node-name: the commit_top / mirror_top filter in the node list during the job', async () => {
    const script = (dir: string): Step[] => [
      addTop(dir),
      ['block-export-add', { type: 'nbd', id: 'e', 'node-name': 'top', writable: true }],
      // A taken name: an intermediate commit's job is created first (created, null), an active one's is not.
      ['block-commit', { 'job-id': 'c0', device: 'top', top: join(dir, 'mid.qcow2'), 'filter-node-name': 'top' }],
      ['block-commit', { 'job-id': 'c0', device: 'top', 'filter-node-name': 'top' }],
      // Intermediate: 'commit_top' between top and mid (read-only, mid's filename); top's chain runs through it.
      ['block-commit', { 'job-id': 'c1', device: 'top', top: join(dir, 'mid.qcow2'), 'filter-node-name': 'cf', speed: 4096 }],
      { nodes: true },
      ['query-block-exports'],
      ['block-commit', { 'job-id': 'c9', device: 'cf' }],
      ['block-commit', { 'job-id': 'c9', device: 'top' }],
      ['job-cancel', { id: 'c1' }],
      { wait: 'c1' },
      { nodes: true },
      // Active: 'mirror_top' above top takes over its users (the export) until the pivot.
      ['block-commit', { 'job-id': 'c2', device: 'top', 'filter-node-name': 'af' }],
      { wait: 'c2' },
      { nodes: true },
      ['query-block-exports'],
      ['block-commit', { 'job-id': 'c9', device: 'af' }],
      ['job-complete', { id: 'c2' }],
      { wait: 'c2' },
      { nodes: true },
      ['query-block-exports'],
      // Deleted here, not at shutdown (where whether qsd's event still gets out is timing).
      ['block-export-del', { id: 'e' }],
      { sleep: 200 },
    ];
    const q = await session('qsd', script);
    const b = await session('blockd', script);
    expect(b.log).toEqual(q.log);
    expect(b.log.join('\n')).toContain('"name":"cf","drv":"commit_top"');
    expect(b.log.join('\n')).toContain('"name":"af","drv":"mirror_top"');
    // How far the rate-limited commit got before its cancel is timing.
    const progress = (l: string[]) => l.map((x) => x.replace(/"offset":\d+/, '"offset":N'));
    expect(progress(b.evlog)).toEqual(progress(q.evlog));
    for (const img of ['base', 'mid', 'top']) run('qemu-img', ['check', join(b.dir, `${img}.qcow2`)]);
    reads(b.dir, 'base.qcow2', ['read -P 1 0 1M', 'read -P 2 1M 1M', 'read -P 3 2M 1M']);
  }, 60_000);

  it('active block-commit: job-cancel and block-job-cancel after READY leave the chain as it was; job-complete with manual finalize', async () => {
    const b = await compare((dir) => [
      addTop(dir),
      ['block-commit', { 'job-id': 'c1', device: 'top' }],
      { wait: 'c1' },
      ['block-stream', { 'job-id': 'sx', device: 'top' }],
      ['block-commit', { 'job-id': 'cx', device: 'top' }],
      ['job-cancel', { id: 'c1' }],
      { wait: 'c1' },
      ['block-commit', { 'job-id': 'c2', device: 'top' }],
      { wait: 'c2' },
      ['block-job-cancel', { device: 'c2' }],
      { wait: 'c2' },
      ['block-commit', { 'job-id': 'c3', device: 'top', 'auto-finalize': false, 'auto-dismiss': false }],
      { wait: 'c3' },
      ['job-complete', { id: 'c3' }],
      { wait: 'c3' },
      ['job-finalize', { id: 'c3' }],
      ['job-dismiss', { id: 'c3' }],
    ]);
    expect(run('qemu-img', ['info', join(b.dir, 'top.qcow2')])).toContain(`backing file: ${join(b.dir, 'mid.qcow2')}`);
    reads(b.dir, 'top.qcow2', ['read -P 1 0 1M', 'read -P 2 1M 1M', 'read -P 3 2M 1M', 'read -P 0 3M 1M']);
    reads(b.dir, 'base.qcow2', ['read -P 1 0 1M', 'read -P 2 1M 1M', 'read -P 3 2M 1M']);
  }, 60_000);
});

describe('graph surgery (replace)', () => {
  it('refuses a backing link that would make a cycle, and read-write users on a read-only node', async () => {
    const { BlockGraph } = await import('../../src/blockdev/graph.ts');
    const { registerDrivers } = await import('../../src/blockdev/drivers/index.ts');
    const { setBacking, replaceNode } = await import('../../src/blockdev/surgery/replace.ts');
    const dir = tempDir('live-graph-');
    makeChain(dir);
    run('qemu-img', ['create', '-f', 'qcow2', join(dir, 'ro.qcow2'), '4M']);
    const g = new BlockGraph();
    registerDrivers(g);
    const top = await g.add({ driver: 'qcow2', 'node-name': 'top', file: { driver: 'file', filename: join(dir, 'top.qcow2') } });
    const base = top.child('backing')!.child('backing')!;
    await expect(setBacking(g, base, top)).rejects.toThrow(/would create a cycle/);
    const ro = await g.add({ driver: 'qcow2', 'node-name': 'ro', 'read-only': true, file: { driver: 'file', filename: join(dir, 'ro.qcow2') } });
    const user = { describe: () => "block device export 'e'" };
    const edge = g.link(user, top, 'root', { perm: { read: true, write: true, resize: false }, shared: { read: true, write: true, resize: false } });
    await expect(replaceNode(g, top, ro)).rejects.toThrow("Read-only block node 'ro' cannot support read-write users");
    expect(edge.child).toBe(top);
    await g.unlink(user, edge);
    await g.closeAll();
  });
});
