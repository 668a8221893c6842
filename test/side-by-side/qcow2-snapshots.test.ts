/**
 * Internal snapshots on a running qcow2 node (blockdev-snapshot-internal-sync,
 * blockdev-snapshot-delete-internal-sync), checked against QEMU 7.2:
 *  - snapshots taken and deleted while writers keep writing: each snapshot,
 *    read back with `qemu-img convert -l`, equals the data at the moment it
 *    was taken (a model of every write, frozen inside the drained section);
 *    the active image equals the model; `qemu-img check` is clean and
 *    `qemu-img info` / `qemu-img snapshot -l` list what blockd lists, after
 *    every operation; images with several cluster sizes, small L2 cache
 *    slices, extended L2 entries, compressed clusters, lazy refcounts;
 *  - error texts and the returned SnapshotInfo, side by side with
 *    qemu-storage-daemon.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import type { BlockNode } from '../../src/blockdev/node.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';
import { snapshotInternalCommands } from '../../src/qmp/commands/snapshots-internal.ts';
import { blockCommands } from '../../src/qmp/commands/block.ts';
import type { CommandDef } from '../../src/qmp/command.ts';
import { fromJson } from '../../src/qapi/visit.ts';
import { QmpClient, QmpCommandError } from '../../src/qmp/client/qmp-client.ts';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { run, tryRun } from '../helpers/tools.ts';

let root: string;
beforeAll(() => { root = tempDir('blockd-qcow2-snap-'); });

const MiB = 1048576;

function rng(seed: number): () => number {
  return () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x80000000;
  };
}

// ---- in-process: the QMP handlers on a graph of real drivers

type Reply = { return: unknown } | { error: { class: string; desc: string } };

function inProcess() {
  const graph = new BlockGraph();
  registerDrivers(graph);
  const commands = [...snapshotInternalCommands, ...blockCommands];
  const log = { info: () => undefined, warn: () => undefined, debug: () => undefined, error: () => undefined };
  async function qmp(name: string, args: Record<string, unknown> = {}): Promise<Reply> {
    const cmd = commands.find((c) => c.name === name) as CommandDef;
    try {
      const type = typeof cmd.args === 'function' ? cmd.args({ graph }) : cmd.args!;
      const valid = fromJson(type, args);
      const r = await cmd.handler(valid, { graph, host: { graph, log }, session: {}, table: {} } as never);
      return { return: r ?? {} };
    } catch (e) {
      return { error: { class: 'GenericError', desc: (e as Error).message } };
    }
  }
  return { graph, qmp };
}

/** What the guest should see: every completed write applied, in completion order. */
class Model {
  constructor(public data: Buffer) {}
  copy(): Buffer { return Buffer.from(this.data); }
}

/** Writers that keep writing (each in its own stripe, so in-flight writes never overlap) until stopped. */
function startWriters(node: BlockNode, model: Model, seed: number, count = 3) {
  const size = node.length();
  const stripe = Math.floor(size / count / 512) * 512;
  const pending = new Map<number, Buffer>();
  const observer = (offset: number, length: number) => {
    const b = pending.get(offset);
    if (b && b.length === length) b.copy(model.data, offset);
  };
  node.writeObservers.add(observer);
  let stop = false;
  let writes = 0;
  const r = rng(seed);
  const loops = Array.from({ length: count }, async (_, k) => {
    while (!stop) {
      const len = 512 * (1 + Math.floor(r() * 256));
      const off = k * stripe + Math.floor(r() * ((stripe - len) / 512)) * 512;
      const buf = Buffer.alloc(len, (writes++ % 250) + 1);
      buf.writeUInt32BE(writes, 0);
      pending.set(off, buf);
      if (r() < 0.15) {
        // Zeroing goes through the same observer (the model gets zeroes).
        pending.set(off, Buffer.alloc(len));
        await node.writeZeroes(off, len, r() < 0.5 ? 2 : 0);
      } else {
        await node.write(off, buf);
      }
      pending.delete(off);
      await new Promise((res) => setImmediate(res));
    }
  });
  return {
    get writes() { return writes; },
    async stop() {
      stop = true;
      await Promise.all(loops);
      node.writeObservers.delete(observer);
    },
  };
}

/** Captures the model inside the drained section of the next snapshot operation on `node`. */
function freezeOnDrain(node: BlockNode, model: Model): { taken: () => Buffer | undefined } {
  let frozen: Buffer | undefined;
  const orig = node.drained.bind(node);
  node.drained = (async (fn: () => Promise<unknown>) => orig(async () => {
    frozen ??= model.copy();
    return fn();
  })) as never;
  return { taken: () => { node.drained = orig as never; return frozen; } };
}

function qemuImgJson(args: string[]): unknown {
  return JSON.parse(run('qemu-img', [...args, '--output=json']));
}

/** qemu-img check -U is clean; its info and `snapshot -l` list what blockd lists. */
function checkImage(path: string, node: BlockNode): void {
  const c = tryRun('qemu-img', ['check', '-U', path]);
  expect(c.stdout + c.stderr).toContain('No errors were found on the image.');
  expect(c.status).toBe(0);
  const info = qemuImgJson(['info', '-U', path]) as { snapshots?: Record<string, unknown>[] };
  const mine = (node.ops.info!() as { snapshots?: Record<string, unknown>[] }).snapshots;
  expect(mine ?? []).toEqual(info.snapshots ?? []);
  const list = run('qemu-img', ['snapshot', '-U', '-l', path]);
  for (const s of mine ?? []) expect(list).toMatch(new RegExp(`^${s.id}\\s+${String(s.name).slice(0, 15)}`, 'm'));
}

function snapshotData(path: string, name: string, out: string): Buffer {
  run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-l', `snapshot.name=${name}`, '-O', 'raw', path, out]);
  return readFileSync(out);
}

async function readAll(node: BlockNode): Promise<Buffer> {
  const b = Buffer.alloc(node.length());
  await node.read(0, b);
  return b;
}

describe('internal snapshots while data is being written', () => {
  const variants: [string, string, Record<string, unknown>][] = [
    ['default', '', {}],
    ['4k clusters, small L2 slices', 'cluster_size=4096', { 'l2-cache-entry-size': 1024, 'l2-cache-size': 8192 }],
    ['extended L2, lazy refcounts', 'extended_l2=on,cluster_size=32k,lazy_refcounts=on', {}],
    ['512-byte clusters, refcount 4', 'cluster_size=512,refcount_bits=4', {}],
    ['compressed data, pass-discard-snapshot off', 'cluster_size=16k', { 'pass-discard-snapshot': false }],
  ];
  for (const [name, o, nodeOpts] of variants) {
    it(name, async () => {
      const dir = join(root, name.replace(/[^a-z0-9]+/gi, '_'));
      run('mkdir', ['-p', dir]);
      const img = join(dir, 'img.qcow2');
      const size = 8 * MiB;
      // Start from some data (compressed where asked), so the first snapshot shares clusters.
      const initial = Buffer.alloc(size);
      const r = rng(7);
      for (let i = 0; i < 64; i++) {
        const at = Math.floor(r() * (size / 4096)) * 4096;
        initial.fill(Math.floor(r() * 256), at, at + 4096);
      }
      for (let i = 0; i < size; i += 65536) initial.fill((i / 65536) % 200 + 1, i, i + 8192);
      writeFileSync(join(dir, 'initial.raw'), initial);
      run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', ...(o.includes('16k') ? ['-c'] : []), ...(o ? ['-o', o] : []), join(dir, 'initial.raw'), img]);
      const model = new Model(Buffer.from(initial));

      const t = inProcess();
      expect(await t.qmp('blockdev-add', { driver: 'qcow2', 'node-name': 'q', file: { driver: 'file', filename: img }, ...nodeOpts })).toEqual({ return: {} });
      const node = t.graph.nodes.get('q')!;
      const frozen: Record<string, Buffer> = {};
      const live = new Set<string>();

      async function snapshot(sn: string): Promise<void> {
        const f = freezeOnDrain(node, model);
        expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'q', name: sn })).toEqual({ return: {} });
        frozen[sn] = f.taken()!;
        live.add(sn);
      }
      async function remove(args: Record<string, unknown>, sn: string): Promise<void> {
        const r2 = await t.qmp('blockdev-snapshot-delete-internal-sync', { device: 'q', ...args }) as { return: Record<string, unknown> };
        expect(r2.return).toMatchObject({ name: sn, 'vm-state-size': 0 });
        live.delete(sn);
      }
      /** Quiesce, then compare everything with QEMU's view. */
      async function verify(): Promise<void> {
        await node.flush();
        checkImage(img, node);
        expect((await readAll(node)).equals(model.data)).toBe(true);
        for (const sn of live) {
          const got = snapshotData(img, sn, join(dir, `${sn}.raw`));
          const diff = got.findIndex((v, i) => v !== frozen[sn][i]);
          expect(diff, `snapshot ${sn}: first difference at ${diff}`).toBe(-1);
        }
      }

      const idOf = (sn: string) => (node.ops.info!() as { snapshots: { id: string; name: string }[] }).snapshots.find((x) => x.name === sn)!.id;
      // Each operation runs while writers write; then they stop and everything is compared with QEMU's view.
      const ops: (() => Promise<void>)[] = [
        () => snapshot('first'),
        () => snapshot('s1'),
        () => snapshot('s2'),
        () => remove({ name: 'first' }, 'first'),
        () => snapshot('s3'),
        () => remove({ id: idOf('s1') }, 's1'),
        () => remove({ id: idOf('s2'), name: 's2' }, 's2'),
        () => snapshot('s4'),
        () => remove({ name: 's3' }, 's3'),
        () => remove({ name: 's4' }, 's4'),
      ];
      let total = 0;
      for (const [i, op] of ops.entries()) {
        const w = startWriters(node, model, 11 + i);
        await new Promise((res) => setTimeout(res, 40));
        await op();
        await new Promise((res) => setTimeout(res, 20));
        await w.stop();
        total += w.writes;
        await verify();
      }
      expect(total).toBeGreaterThan(30);
      expect((node.ops.info!() as { snapshots?: unknown[] }).snapshots).toBeUndefined();

      // Closed and opened again by blockd: same data, still clean.
      await t.graph.closeAll();
      const c = tryRun('qemu-img', ['check', img]);
      expect(c.stdout).toContain('No errors were found on the image.');
      expect(run('qemu-img', ['snapshot', '-l', img])).toBe('');
      const t2 = inProcess();
      await t2.qmp('blockdev-add', { driver: 'qcow2', 'node-name': 'q', file: { driver: 'file', filename: img }, 'read-only': true });
      expect((await readAll(t2.graph.nodes.get('q')!)).equals(model.data)).toBe(true);
      await t2.graph.closeAll();
    });
  }

  it('snapshots of a raw node over qcow2, ids after deletions, long names, many snapshots', async () => {
    const dir = join(root, 'misc');
    run('mkdir', ['-p', dir]);
    const img = join(dir, 'img.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', img, '4M']);
    const t = inProcess();
    await t.qmp('blockdev-add', { driver: 'qcow2', 'node-name': 'q', file: { driver: 'file', filename: img } });
    await t.qmp('blockdev-add', { driver: 'raw', 'node-name': 'r', file: 'q' });
    const node = t.graph.nodes.get('q')!;
    expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'q', name: 'x' })).toEqual({ error: { class: 'GenericError', desc: 'Need a root block node' } });
    expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'r', name: 'a' })).toEqual({ return: {} });
    expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'r', name: 'b' })).toEqual({ return: {} });
    expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'r', name: 'c' })).toEqual({ return: {} });
    const long = 'n'.repeat(300);
    expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'r', name: long })).toEqual({ return: {} });
    // The name was cut to 255 bytes, so the same long name can be used again (as in QEMU).
    expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'r', name: long })).toEqual({ return: {} });
    const del = await t.qmp('blockdev-snapshot-delete-internal-sync', { device: 'r', name: 'c' }) as { return: Record<string, unknown> };
    expect(Object.keys(del.return).sort()).toEqual(['date-nsec', 'date-sec', 'id', 'name', 'vm-clock-nsec', 'vm-clock-sec', 'vm-state-size']);
    expect(del.return).toMatchObject({ id: '3', name: 'c' });
    await t.qmp('blockdev-snapshot-delete-internal-sync', { device: 'r', id: '5' });
    expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'r', name: 'd' })).toEqual({ return: {} });
    for (let i = 0; i < 40; i++) {
      await node.write((i % 8) * 512 * 1024, Buffer.alloc(65536, i + 1));
      expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'r', name: `m${i}` })).toEqual({ return: {} });
    }
    await node.flush();
    checkImage(img, node);
    const ids = (node.ops.info!() as { snapshots: { id: string; name: string }[] }).snapshots.map((s) => [s.id, s.name.slice(0, 3)]);
    // A new id is one more than the largest (5 was deleted, so it is used again).
    expect(ids.slice(0, 5)).toEqual([['1', 'a'], ['2', 'b'], ['4', 'nnn'], ['5', 'd'], ['6', 'm0']]);
    expect(snapshotData(img, 'm20', join(dir, 'm20.raw')).subarray(4 * 512 * 1024, 4 * 512 * 1024 + 65536).equals(Buffer.alloc(65536, 21))).toBe(true);
    for (let i = 0; i < 40; i += 2) await t.qmp('blockdev-snapshot-delete-internal-sync', { device: 'r', name: `m${i}` });
    await node.flush();
    checkImage(img, node);
    await t.graph.closeAll();
  });
});

describe('refcount overflow', () => {
  it('fails as QEMU does (Invalid argument), leaving only leaked clusters', async () => {
    const dir = join(root, 'overflow');
    run('mkdir', ['-p', dir]);
    const img = join(dir, 'img.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=1', img, '1M']);
    const t = inProcess();
    await t.qmp('blockdev-add', { driver: 'qcow2', 'node-name': 'q', file: { driver: 'file', filename: img } });
    const node = t.graph.nodes.get('q')!;
    await node.write(0, Buffer.alloc(65536, 7));
    expect(await t.qmp('blockdev-snapshot-internal-sync', { device: 'q', name: 'a' }))
      .toEqual({ error: { class: 'GenericError', desc: "Failed to create snapshot 'a' on device 'q': Invalid argument" } });
    await node.flush();
    const c = tryRun('qemu-img', ['check', '-U', img]);
    expect(c.stdout).not.toMatch(/ERROR/);
    expect(run('qemu-img', ['snapshot', '-U', '-l', img])).toBe('');
    // The image still works.
    await node.write(65536, Buffer.alloc(65536, 8));
    const b = Buffer.alloc(131072);
    await node.read(0, b);
    expect(b.equals(Buffer.concat([Buffer.alloc(65536, 7), Buffer.alloc(65536, 8)]))).toBe(true);
    await t.graph.closeAll();
  });
});

// ---- side by side with qemu-storage-daemon

interface Target {
  dir: string;
  execute(cmd: string, args?: Record<string, unknown>): Promise<Reply>;
  close(): Promise<void>;
}

async function daemonTarget(which: 'qsd' | 'blockd', dir: string): Promise<Target> {
  const sock = join(dir, 'qmp.sock');
  const proc: Running = await startDaemon(which, ['--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'm'], sock);
  const client = await QmpClient.connect(sock);
  return {
    dir,
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

describe('internal snapshot commands, side by side with qemu-storage-daemon', () => {
  let qsd: Target;
  let blockd: Target;
  beforeAll(async () => {
    run('mkdir', ['-p', join(root, 'sqsd'), join(root, 'sbkd')]);
    for (const d of ['sqsd', 'sbkd']) {
      const p = join(root, d);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(p, 'a.qcow2'), '4M']);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(p, 'ro.qcow2'), '4M']);
      run('qemu-img', ['snapshot', '-c', 'old', join(p, 'ro.qcow2')]);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(p, 'df.raw')}`, join(p, 'df.qcow2'), '4M']);
      run('qemu-img', ['create', '-q', '-f', 'raw', join(p, 'plain.raw'), '4M']);
    }
    qsd = await daemonTarget('qsd', join(root, 'sqsd'));
    blockd = await daemonTarget('blockd', join(root, 'sbkd'));
    for (const t of [qsd, blockd]) {
      const add = async (o: Record<string, unknown>) => expect(await t.execute('blockdev-add', o)).toEqual({ return: {} });
      await add({ driver: 'qcow2', 'node-name': 'q0', file: { driver: 'file', filename: join(t.dir, 'a.qcow2'), 'node-name': 'f0' } });
      await add({ driver: 'qcow2', 'node-name': 'r0', 'read-only': true, file: { driver: 'file', filename: join(t.dir, 'ro.qcow2') } });
      await add({ driver: 'qcow2', 'node-name': 'd0', file: { driver: 'file', filename: join(t.dir, 'df.qcow2') } });
      await add({ driver: 'file', 'node-name': 'p0', filename: join(t.dir, 'plain.raw') });
    }
  });
  afterAll(async () => {
    await qsd?.close();
    await blockd?.close();
  });

  /** The same command on both; dates and clocks in results are replaced by their types. */
  async function both(cmd: string, args: Record<string, unknown>): Promise<[unknown, unknown]> {
    const norm = (r: Reply) => JSON.parse(JSON.stringify(r, (k, v) => (/^(date|vm-clock)-/.test(k) ? typeof v : v)));
    return [norm(await qsd.execute(cmd, args)), norm(await blockd.execute(cmd, args))];
  }

  const S = 'blockdev-snapshot-internal-sync';
  const D = 'blockdev-snapshot-delete-internal-sync';
  const calls: [string, Record<string, unknown>][] = [
    [S, { device: 'nosuch', name: 'a' }],
    [S, { device: 'f0', name: 'a' }],
    [S, { device: 'p0', name: 'a' }],
    [S, { device: 'r0', name: '' }],
    [S, { device: 'd0', name: '' }],
    [S, { device: 'd0', name: 'a' }],
    [S, { device: 'q0', name: '' }],
    [S, { device: 'q0', name: 's1' }],
    [S, { device: 'q0', name: 's1' }],
    [S, { device: 'q0', name: 's2' }],
    [S, { device: 'q0', name: '3' }],
    [S, { device: 'q0' }],
    [S, { device: 'q0', name: 'x', extra: 1 }],
    [D, { device: 'q0' }],
    [D, { device: 'nosuch', name: 's1' }],
    [D, { device: 'f0', name: 's1' }],
    [D, { device: 'p0', name: 'a' }],
    [D, { device: 'd0', name: 'a' }],
    [D, { device: 'q0', name: 'nosuch' }],
    [D, { device: 'q0', id: '9' }],
    [D, { device: 'q0', id: '1', name: 's2' }],
    [D, { device: 'r0', name: 'nosuch' }],
    [D, { device: 'r0', name: 'old' }],
    [D, { device: 'q0', name: '3' }],
    [D, { device: 'q0', id: '2', name: 's2' }],
    [S, { device: 'q0', name: 'after' }],
    [D, { device: 'q0', id: '1' }],
    [D, { device: 'q0', name: 'after' }],
  ];
  it('same replies, in order', async () => {
    for (const [cmd, args] of calls) {
      const [a, b] = await both(cmd, args);
      expect({ cmd, args, reply: b }).toEqual({ cmd, args, reply: a });
    }
  });

  it('the images end up alike: no snapshots left, clean', async () => {
    for (const t of [qsd, blockd]) expect(await t.execute('query-named-block-nodes', { flat: true })).toHaveProperty('return');
    const c = tryRun('qemu-img', ['check', '-U', join(blockd.dir, 'a.qcow2')]);
    expect(c.stdout).toContain('No errors were found on the image.');
    expect(run('qemu-img', ['snapshot', '-U', '-l', join(blockd.dir, 'a.qcow2')])).toBe('');
    expect(run('qemu-img', ['snapshot', '-U', '-l', join(qsd.dir, 'a.qcow2')])).toBe('');
  });
});
