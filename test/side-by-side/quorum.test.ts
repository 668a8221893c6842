/**
 * The quorum driver side by side with qsd 7.2 (#20, #21): three raw files,
 * one corrupted on disk. Reads vote it down and return the good data, with
 * the QUORUM_REPORT_BAD and QUORUM_FAILURE events qsd sends (same members,
 * same order); rewrite-corrupted repairs the file; failing children
 * (blkdebug) are reported with their error, in quorum and fifo mode and on
 * writes; writes reach every child; option errors, query-named-block-nodes
 * and x-blockdev-change (add, delete, refusals, the node and edge lists)
 * are qsd's.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { qmpDaemon, waitFor, type Ev } from '../helpers/live.ts';
import { tempDir } from '../helpers/temp.ts';
import { nbdsh } from '../helpers/nbd.ts';
import type { Running } from '../helpers/daemons.ts';

const MiB = 1024 * 1024;
const GOOD = 0x5a;

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

/** c0..c6: 1 MiB raw files whose first 64 KiB are 0x5a, but c1 has 512 bytes of 0x11 at 4096 and c4 is 2 MiB of zeroes. */
function setup(d: string): void {
  for (let i = 0; i < 7; i++) {
    const b = Buffer.alloc(i === 4 ? 2 * MiB : MiB);
    if (i !== 4) b.fill(GOOD, 0, 65536);
    if (i === 1) b.fill(0x11, 4096, 4608);
    writeFileSync(join(d, `c${i}.raw`), b);
  }
}

/** f0..f4: file nodes of c0..c4 (c5 and c6 are for nodes the tests add). */
async function start(): Promise<Pair> {
  return startPair(setup, (d) => [0, 1, 2, 3, 4].flatMap((i) => ['--blockdev', `driver=file,node-name=f${i},filename=${join(d, `c${i}.raw`)}`]));
}

const quorumEvents = (events: Ev[]) => events.filter((e) => e.event.startsWith('QUORUM_')).map((e) => ({ event: e.event, data: e.data }));

function quorum(extra: Record<string, unknown> = {}, children: unknown[] = ['f0', 'f1', 'f2']): Record<string, unknown> {
  return { driver: 'quorum', 'node-name': 'q0', 'vote-threshold': 2, children, ...extra };
}

async function addExport(side: Side, extra: Record<string, unknown> = {}, children?: unknown[]): Promise<void> {
  await side.qmp.execute('blockdev-add', quorum(extra, children));
  await side.qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'q0', name: 'q', writable: true });
}

/**
 * Reads: [offset, length] pairs, each on a connection of its own (after a
 * failed read qsd's NBD server drops the connection: nbd_co_send_sparse_read
 * gives up on a read error); prints the set of byte values each read
 * returned, or "error".
 */
const READS = (ranges: [number, number][]) => `out = []
for off, n in ${JSON.stringify(ranges)}:
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        out.append(sorted(set(h.pread(n, off))))
    except nbd.Error as e:
        out.append("error")
    try:
        h.shutdown()
    except nbd.Error:
        pass
    del h
print(json.dumps(out))
`;

/** Longer than qsd's (and blockd's) 1 s rate limit of QUORUM_* events, so that a held one has gone out. */
const settle = () => new Promise((r) => setTimeout(r, 1300));

describe('quorum, side by side with qsd', () => {
  it('refuses bad options with qsd\'s errors', async () => {
    pair = await start();
    const bad: Record<string, unknown>[] = [
      quorum({ 'vote-threshold': 4 }),
      quorum({ 'vote-threshold': 0 }),
      quorum({}, []),
      quorum({ blkverify: true }),
      quorum({ blkverify: true, 'vote-threshold': 2, 'rewrite-corrupted': true }, ['f0', 'f1']),
      quorum({ 'read-pattern': 'bad' }),
      { driver: 'quorum', 'node-name': 'q0', children: ['f0'] },
      quorum({ 'vote-threshold': 1 }, ['f0', 'f4']),
      quorum({}, ['f0', 'nope']),
    ];
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const replies: unknown[] = [];
      for (const b of bad) replies.push(await side.qmp.execute('blockdev-add', b).then(() => 'ok', (e: Error) => e.message));
      // A read-only child: refused once a user above wants to write, or at once with rewrite-corrupted.
      await side.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'ro', filename: join(side.dir, 'c6.raw'), 'read-only': true });
      replies.push(await side.qmp.execute('blockdev-add', quorum({ 'node-name': 'qr', 'vote-threshold': 1 }, ['ro'])).then(() => 'ok', (e: Error) => e.message));
      for (const writable of [true, false]) {
        replies.push(await side.qmp.execute('block-export-add', { type: 'nbd', id: 'er', 'node-name': 'qr', name: 'qr', writable }).then(() => 'ok', (e: Error) => e.message));
      }
      replies.push(await side.qmp.execute('blockdev-add', quorum({ 'node-name': 'qt', 'vote-threshold': 1, 'rewrite-corrupted': true, 'read-only': true },
        [{ driver: 'file', filename: join(side.dir, 'c5.raw') }])).then(() => 'ok', (e: Error) => e.message));
      replies.push(await side.qmp.execute('blockdev-add', quorum({ 'node-name': 'qu', 'vote-threshold': 1, 'rewrite-corrupted': true, 'read-only': true }, ['f3'])).then(() => 'ok', (e: Error) => e.message));
      // qsd does not check rewrite-corrupted in fifo mode.
      replies.push(await side.qmp.execute('blockdev-add', quorum({ 'read-pattern': 'fifo', 'rewrite-corrupted': true })).then(() => 'ok', (e: Error) => e.message));
      const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
      replies.push(nodes.map((n) => [n['node-name'], n.drv, String(n.file).split(side.dir).join('<d>'), (n.image as Record<string, unknown>)['actual-size'], n.ro]));
      out[who] = replies;
    }
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);

  it('votes the corrupted child down, reports it, and with rewrite-corrupted repairs its file', async () => {
    pair = await start();
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      await addExport(side);
      const first = await side.py('q', READS([[0, 65536], [4096, 512], [8192, 4096]]));
      await settle();
      const plain = quorumEvents(side.events);
      side.events.length = 0;
      // Not repaired without rewrite-corrupted.
      expect(readFileSync(join(side.dir, 'c1.raw'))[4096]).toBe(0x11);
      await side.qmp.execute('block-export-del', { id: 'e0' });
      await side.qmp.execute('blockdev-del', { 'node-name': 'q0' }).catch(async () => {
        await settle();
        await side.qmp.execute('blockdev-del', { 'node-name': 'q0' });
      });
      await addExport(side, { 'rewrite-corrupted': true });
      const second = await side.py('q', READS([[0, 65536], [0, 65536]]));
      await settle();
      const rewrite = quorumEvents(side.events);
      const files = [0, 1, 2].map((i) => readFileSync(join(side.dir, `c${i}.raw`)));
      expect(files[1]!.equals(files[0]!)).toBe(true);
      out[who] = { first, plain, second, rewrite };
    }
    expect((out.qsd as { first: unknown }).first).toEqual([[GOOD], [GOOD], [GOOD]]);
    expect((out.qsd as { plain: unknown[] }).plain.length).toBe(2);
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);

  it('fails a read no version wins (QUORUM_FAILURE) and writes reach every child', async () => {
    pair = await start();
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const c2 = join(side.dir, 'c2.raw');
      const b = readFileSync(c2);
      b.fill(0x12, 0, 512);
      writeFileSync(c2, b);
      await addExport(side);
      const reads = await side.py('q', READS([[0, 65536], [0, 512], [8192, 512]]));
      const write = await side.py('q', `h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(b"w" * 8192, 65536)
h.zero(4096, 131072)
h.flush()
print(json.dumps(sorted(set(h.pread(8192, 65536)))))
`);
      await settle();
      const files = [0, 1, 2].map((i) => readFileSync(join(side.dir, `c${i}.raw`)).subarray(65536, 65536 + 8192).toString());
      expect(files).toEqual(['w'.repeat(8192), 'w'.repeat(8192), 'w'.repeat(8192)]);
      out[who] = { reads, write, events: quorumEvents(side.events) };
    }
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);

  it('reports failing children with their error, in quorum and fifo mode, on reads, writes and flushes', async () => {
    pair = await start();
    // raw raises read_aio and write_aio on its file (the blkdebug node) before it reads or writes there.
    const bad = (errno: number, event: string) => ({ driver: 'raw', 'node-name': 'bad', file: { driver: 'blkdebug', 'node-name': 'dbg', image: 'f2', 'inject-error': [{ event, errno }] } });
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      // The third child fails every read: the other two still agree (c1 is good before 4096).
      await addExport(side, {}, ['f0', 'f1', bad(5, 'read_aio')]);
      const r1 = await side.py('q', READS([[0, 4096]]));
      await settle();
      const e1 = quorumEvents(side.events);
      side.events.length = 0;
      await side.qmp.execute('block-export-del', { id: 'e0' });
      await settle();
      await side.qmp.execute('blockdev-del', { 'node-name': 'q0' });
      // fifo: the first child fails, the second answers.
      await addExport(side, { 'read-pattern': 'fifo', 'vote-threshold': 1 }, [bad(28, 'read_aio'), 'f1']);
      const r2 = await side.py('q', READS([[0, 4096], [4096, 512]]));
      await settle();
      const e2 = quorumEvents(side.events);
      side.events.length = 0;
      await side.qmp.execute('block-export-del', { id: 'e0' });
      await settle();
      await side.qmp.execute('blockdev-del', { 'node-name': 'q0' });
      // Writes: one child fails them; with threshold 3 the write fails (QUORUM_FAILURE).
      await addExport(side, { 'vote-threshold': 3 }, ['f0', 'f1', bad(5, 'write_aio')]);
      const w = await side.py('q', `h = nbd.NBD()
h.connect_uri(uri)
try:
    h.pwrite(b"x" * 4096, 0)
    print(json.dumps("ok"))
except nbd.Error as e:
    print(json.dumps(e.errno))
`);
      await settle();
      const e3 = quorumEvents(side.events);
      side.events.length = 0;
      await side.qmp.execute('block-export-del', { id: 'e0' });
      await settle();
      await side.qmp.execute('blockdev-del', { 'node-name': 'q0' });
      // Flush: the third child fails it once written (flush_to_disk is raised only on a written node).
      const flushBad = { driver: 'raw', 'node-name': 'bad', file: { driver: 'blkdebug', 'node-name': 'dbg', image: 'f2', 'inject-error': [{ event: 'flush_to_disk', errno: 5, iotype: 'flush' }] } };
      await addExport(side, {}, ['f0', 'f1', flushBad]);
      const f = await side.py('q', `h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(b"y" * 4096, 0)
try:
    h.flush()
    print(json.dumps("ok"))
except nbd.Error as e:
    print(json.dumps(e.errno))
`);
      await settle();
      out[who] = { r1, e1, r2, e2, w, e3, f, e4: quorumEvents(side.events) };
    }
    expect((out.qsd as { e1: unknown[] }).e1.length).toBe(1);
    expect((out.qsd as { e4: unknown[] }).e4.length).toBe(1);
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);

  it('x-blockdev-change adds and removes children as qsd does', async () => {
    pair = await start();
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const dir = side.dir;
      await addExport(side, {}, ['f0', { driver: 'file', 'node-name': 'i1', filename: join(dir, 'c5.raw') }, 'f2']);
      await side.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'ro', filename: join(dir, 'c6.raw'), 'read-only': true });
      const steps: [string, Record<string, unknown>][] = [
        ['x-blockdev-change', { parent: 'q0' }],
        ['x-blockdev-change', { parent: 'q0', child: 'children.0', node: 'f3' }],
        ['x-blockdev-change', { parent: 'q0', child: 'children.5' }],
        ['x-blockdev-change', { parent: 'f0', child: 'children.5' }],
        ['x-blockdev-change', { parent: 'f3', node: 'ro' }],
        ['x-blockdev-change', { parent: 'nope', node: 'f3' }],
        ['x-blockdev-change', { parent: 'q0', node: 'nope' }],
        ['x-blockdev-change', { parent: 'q0', node: 'f0' }],
        ['x-blockdev-change', { parent: 'q0', node: 'ro' }],
        ['x-blockdev-change', { parent: 'q0', child: 'children.1' }],
        ['x-blockdev-change', { parent: 'q0', child: 'children.1' }],
        ['x-blockdev-change', { parent: 'f0', child: 'children.0' }],
        ['x-blockdev-change', { parent: 'q0', node: 'f3' }],
        ['x-blockdev-change', { parent: 'q0', child: 'children.0' }],
        ['x-blockdev-change', { parent: 'q0', child: 'children.2' }],
        ['x-blockdev-change', { parent: 'q0', child: 'children.3' }],
        ['x-blockdev-change', { parent: 'q0', node: 'f0' }],
      ];
      const replies: unknown[] = [];
      const graph = async () => {
        const g = (await side.qmp.execute('x-debug-query-block-graph')) as { nodes: { id: number; name: string }[]; edges: { parent: number; child: number; name: string }[] };
        const name = (id: number) => g.nodes.find((n) => n.id === id)?.name;
        return g.edges.filter((e) => name(e.parent) === 'q0').map((e) => `${e.name}=${name(e.child)}`).sort();
      };
      for (const [cmd, args] of steps) {
        replies.push([args, await side.qmp.execute(cmd, args).then(() => 'ok', (e: Error) => e.message)]);
        replies.push(await graph());
      }
      const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
      replies.push(nodes.map((n) => [n['node-name'], String(n.file).split(dir).join('<d>'), (n.image as Record<string, unknown>)['actual-size']]));
      replies.push(await side.py('q', READS([[0, 65536]])));
      out[who] = replies;
    }
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);

  it('a mirror with replaces swaps the corrupted child for a good copy, as qsd', async () => {
    pair = await start();
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      await addExport(side);
      await side.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 't0', filename: join(side.dir, 'c5.raw') });
      await side.qmp.execute('blockdev-mirror', { 'job-id': 'j0', device: 'q0', target: 't0', sync: 'full', replaces: 'f1' });
      await waitFor(side.events, (e) => e.event === 'BLOCK_JOB_READY');
      await side.qmp.execute('job-complete', { id: 'j0' });
      await waitFor(side.events, (e) => e.event === 'BLOCK_JOB_COMPLETED');
      const g = (await side.qmp.execute('x-debug-query-block-graph')) as { nodes: { id: number; name: string }[]; edges: { parent: number; child: number; name: string }[] };
      const name = (id: number) => g.nodes.find((n) => n.id === id)?.name;
      const edges = g.edges.filter((e) => name(e.parent) === 'q0').map((e) => `${e.name}=${name(e.child)}`).sort();
      side.events.length = 0;
      const reads = await side.py('q', READS([[0, 65536]]));
      await settle();
      out[who] = { edges, reads, events: quorumEvents(side.events), c5: readFileSync(join(side.dir, 'c5.raw')).subarray(0, 65536).equals(readFileSync(join(side.dir, 'c0.raw')).subarray(0, 65536)) };
    }
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);

  it('blkverify: two children that differ stop the daemon with QEMU\'s message, as qsd', async () => {
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const d = tempDir('blockd-blkverify-');
      setup(d);
      const sock = join(d, 'nbd.sock');
      let running: Running | undefined;
      try {
        const { proc, qmp } = await qmpDaemon(who, d, [
          '--nbd-server', `addr.type=unix,addr.path=${sock}`,
          '--blockdev', `driver=file,node-name=f0,filename=${join(d, 'c0.raw')}`,
          '--blockdev', `driver=file,node-name=f1,filename=${join(d, 'c1.raw')}`,
        ]);
        running = proc;
        await qmp.execute('blockdev-add', quorum({ blkverify: true }, ['f0', 'f1']));
        await qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'q0', name: 'q' });
        const same = await nbdsh(`nbd+unix:///q?socket=${sock}`, READS([[0, 4096]]));
        await nbdsh(`nbd+unix:///q?socket=${sock}`, READS([[0, 8192]])).catch(() => 'gone');
        const exited = proc.proc.exitCode ?? await new Promise((r) => proc.proc.once('exit', (code) => r(code)));
        qmp.close();
        out[who] = { same: JSON.parse(same), exited, message: proc.stderr().split('\n').filter((l) => l.startsWith('quorum:')) };
      } finally {
        await running?.stop();
      }
    }
    expect(out.qsd).toMatchObject({ exited: 1, message: ['quorum: offset=0 bytes=8192 contents mismatch at offset 4096'] });
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);
});
