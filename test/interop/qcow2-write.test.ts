/**
 * qcow2 writes, in process: seeded random sequences of writes, write-zeroes,
 * discards and flushes through blockd's qcow2 node into fresh images, checked
 * against an in-memory model, then `qemu-img check` (no errors, no leaks) and
 * `qemu-img compare` against the model. (qcow2-write-interop.test.ts compares
 * the same kind of sequence against qemu-storage-daemon over NBD.) Hostile
 * images are refused or made read-only, never crash or hang.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ReqFlag } from '../../src/blockdev/request.ts';
import type { BlockNode } from '../../src/blockdev/node.ts';
import { run, tryRun } from '../helpers/tools.ts';

import { newGraph, openQcow2, rng } from '../helpers/qcow2.ts';

let dir: string;
beforeAll(() => { dir = mkdtempSync(path.join(tmpdir(), 'qcow2-write-')); });
afterAll(() => { rmSync(dir, { recursive: true, force: true }); });

function qemuCheck(file: string): { errors: number; leaks: number; raw: string } {
  const r = tryRun('qemu-img', ['check', '--output=json', file]);
  const j = JSON.parse(r.stdout || '{}') as { 'check-errors'?: number; corruptions?: number; leaks?: number };
  return { errors: (j['check-errors'] ?? 0) + (j.corruptions ?? 0), leaks: j.leaks ?? 0, raw: r.stdout + r.stderr };
}

/** Applies a seeded random sequence to the node and to an in-memory model. */
async function randomOps(node: BlockNode, model: Buffer, seed: number, n: number, opts: { align?: number; concurrent?: boolean } = {}): Promise<void> {
  const r = rng(seed);
  const size = model.length;
  const pending: Promise<void>[] = [];
  const ranges: [number, number][] = [];
  for (let i = 0; i < n; i++) {
    const a = opts.align ?? 1;
    const off = Math.floor((r() * size) / a) * a;
    const len = Math.max(1, Math.min(size - off, Math.floor(r() * (r() < 0.8 ? 70000 : 600000))));
    const k = r();
    let op: () => Promise<void>;
    if (k < 0.6) {
      const b = Buffer.alloc(len);
      for (let j = 0; j < len; j += 512) b.fill(1 + Math.floor(r() * 250), j, Math.min(len, j + 512));
      b.copy(model, off);
      op = () => node.write(off, b, r() < 0.1 ? ReqFlag.FUA : 0);
    } else if (k < 0.8) {
      model.fill(0, off, off + len);
      const flags = r() < 0.5 ? ReqFlag.MAY_UNMAP : 0;
      op = () => node.writeZeroes(off, len, flags);
    } else if (k < 0.95) {
      // Discard leaves contents undefined in general; qcow2 v3 reads zeroes for the whole
      // clusters it discards, so the model applies exactly that. Without discard=unmap
      // the node ignores discards (as QEMU's does).
      op = () => node.discard(off, len);
      const cs = (node.ops.info!() as { 'cluster-size': number })['cluster-size'];
      const s = Math.ceil(off / cs) * cs;
      let e = Math.floor((off + len) / cs) * cs;
      if (off + len === size) e = size;
      // v2 makes them unallocated instead, which reads as zeroes too when there is no backing file.
      if (e > s && node.options.discard === 'unmap') model.fill(0, s, e);
    } else {
      op = () => node.flush();
    }
    ranges.push([off, off + len]);
    // Concurrency: requests on disjoint ranges run together; overlapping ones wait, as a
    // guest's would (the model is only defined for ordered overlapping requests).
    if (opts.concurrent && pending.length < 8 && !ranges.slice(-pending.length - 1, -1).some(([x, y]) => x < off + len && off < y)) {
      pending.push(op());
    } else {
      await Promise.all(pending.splice(0));
      await op();
    }
  }
  await Promise.all(pending);
}

async function verify(file: string, model: Buffer, backingModel?: string): Promise<void> {
  const c = qemuCheck(file);
  expect(c.errors, c.raw).toBe(0);
  expect(c.leaks, c.raw).toBe(0);
  const rawPath = file + '.model';
  writeFileSync(rawPath, model);
  const r = tryRun('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', file, rawPath]);
  expect(r.stdout + r.stderr, backingModel ?? '').toContain('Images are identical');
}

describe('qcow2 writes checked by qemu-img', () => {
  const cases = [
    { name: '64k', create: [] as string[], size: 16 << 20, seed: 1, align: 1 },
    { name: '4k-rc1', create: ['-o', 'cluster_size=4096,refcount_bits=1'], size: 6 << 20, seed: 2, align: 512 },
    { name: '512-rc64 (refcount table growth)', create: ['-o', 'cluster_size=512,refcount_bits=64'], size: 6 << 20, seed: 3, align: 512 },
    { name: '2M', create: ['-o', 'cluster_size=2M'], size: 20 << 20, seed: 4, align: 1 },
    { name: 'extended-l2', create: ['-o', 'extended_l2=on'], size: 8 << 20, seed: 5, align: 1 },
    { name: 'v2, discard=ignore', create: ['-o', 'compat=0.10,cluster_size=16k'], size: 6 << 20, seed: 6, align: 1, extra: { discard: 'ignore' } },
    { name: 'lazy-refcounts', create: ['-o', 'lazy_refcounts=on'], size: 8 << 20, seed: 7, align: 1 },
    { name: 'tiny caches (dirty evictions, 1k L2 slices)', create: ['-o', 'cluster_size=4k'], size: 16 << 20, seed: 8, align: 1,
      extra: { 'l2-cache-entry-size': 1024, 'l2-cache-size': 2048, 'refcount-cache-size': 0, 'cache-clean-interval': 1 } },
  ];
  for (const c of cases) {
    it(`random ops, ${c.name}`, async () => {
      const f = path.join(dir, `w-${c.seed}.qcow2`);
      run('qemu-img', ['create', '-f', 'qcow2', ...c.create, f, String(c.size)]);
      const g = await newGraph();
      const node = await openQcow2(g, f, { discard: 'unmap', ...(c as { extra?: Record<string, unknown> }).extra });
      const model = Buffer.alloc(c.size);
      // v2 has no zero clusters: a discard there would expose nothing but zeroes too (no backing).
      await randomOps(node, model, c.seed, 120, { align: c.align, concurrent: true });
      const back = Buffer.alloc(c.size);
      await node.read(0, back);
      expect(back.equals(model)).toBe(true);
      await g.closeAll();
      await verify(f, model);
    });
  }

  it('with a backing file: copy-on-write of partial clusters', async () => {
    const base = path.join(dir, 'wb-base.qcow2');
    const top = path.join(dir, 'wb-top.qcow2');
    const size = 8 << 20;
    run('qemu-img', ['create', '-f', 'qcow2', base, String(size)]);
    const ioArgs: string[] = [];
    const r = rng(99);
    for (let i = 0; i < 20; i++) ioArgs.push('-c', `write -P ${1 + Math.floor(r() * 200)} ${Math.floor(r() * 7000) * 1024} ${1 + Math.floor(r() * 500)}k`);
    run('qemu-io', ['-f', 'qcow2', ...ioArgs, base]);
    run('qemu-img', ['create', '-f', 'qcow2', '-b', 'wb-base.qcow2', '-F', 'qcow2', '-o', 'cluster_size=16k', top]);
    const model = Buffer.alloc(size);
    const bRaw = path.join(dir, 'wb-base.raw');
    run('qemu-img', ['convert', '-O', 'raw', base, bRaw]);
    readFileSync(bRaw).copy(model);
    const g = await newGraph();
    const node = await openQcow2(g, top, { discard: 'unmap' });
    await randomOps(node, model, 42, 100, { concurrent: true });
    await g.closeAll();
    await verify(top, model);
  });

  it('crash consistency: a copy of the image taken at any point has leaks at worst, never errors', async () => {
    const f = path.join(dir, 'crash.qcow2');
    const size = 8 << 20;
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'cluster_size=4k,refcount_bits=8', f, String(size)]);
    const g = await newGraph();
    // Tiny caches, so dirty tables are written back (in dependency order) all the time.
    const node = await openQcow2(g, f, { 'l2-cache-entry-size': 512, 'l2-cache-size': 1024, 'refcount-cache-size': 0, 'pass-discard-request': true, discard: 'unmap' });
    const model = Buffer.alloc(size);
    const copies: string[] = [];
    for (let round = 0; round < 6; round++) {
      await randomOps(node, model, 100 + round, 25, { concurrent: true });
      const c = path.join(dir, `crash-${round}.qcow2`);
      copyFileSync(f, c);
      copies.push(c);
    }
    await g.closeAll();
    await verify(f, model);
    for (const c of copies) {
      const r = qemuCheck(c);
      expect(r.errors, `${path.basename(c)}: ${r.raw}`).toBe(0);
    }
  });

  it('concurrent writes into the same unallocated cluster are serialised', async () => {
    const f = path.join(dir, 'conc.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', f, '1M']);
    const g = await newGraph();
    const node = await openQcow2(g, f);
    const model = Buffer.alloc(1 << 20);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 64; i++) {
      const b = Buffer.alloc(1024, i + 1);
      b.copy(model, i * 1024);
      writes.push(node.write(i * 1024, b));
    }
    await Promise.all(writes);
    await g.closeAll();
    await verify(f, model);
    const map = JSON.parse(run('qemu-img', ['map', '--output=json', f])) as { data: boolean; length: number }[];
    expect(map[0]).toMatchObject({ data: true, length: 65536 });
  });

  it('lazy refcounts: a crash leaves the dirty bit, reopening repairs', async () => {
    const f = path.join(dir, 'lazy.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'lazy_refcounts=on,cluster_size=4k', f, '4M']);
    const g = await newGraph();
    const node = await openQcow2(g, f);
    const model = Buffer.alloc(4 << 20);
    await randomOps(node, model, 77, 40);
    // A crash before any flush: whatever reached the file, with the dirty bit set.
    const crashed = path.join(dir, 'lazy-crashed.qcow2');
    copyFileSync(f, crashed);
    await node.flush();
    const flushed = path.join(dir, 'lazy-flushed.qcow2');
    copyFileSync(f, flushed);
    await g.closeAll();
    expect(JSON.parse(run('qemu-img', ['info', '--output=json', f]))['dirty-flag']).toBe(false);
    await verify(f, model);
    for (const img of [crashed, flushed]) {
      expect(JSON.parse(run('qemu-img', ['info', '--output=json', img]))['dirty-flag']).toBe(true);
      const g2 = await newGraph();
      const again = await openQcow2(g2, img);
      expect((again.ops.info!() as { 'dirty-flag': boolean })['dirty-flag']).toBe(false);
      await g2.closeAll();
      const c = qemuCheck(img);
      expect(c.errors, c.raw).toBe(0);
      expect(c.leaks, c.raw).toBe(0);
    }
    await verify(flushed, model);
  });

  it('writes to an image with internal snapshots copy shared clusters and tables; the snapshot is untouched', async () => {
    const f = path.join(dir, 'snapw.qcow2');
    const size = 4 << 20;
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'cluster_size=4k', f, String(size)]);
    run('qemu-io', ['-c', 'write -P 1 0 3M', '-c', 'write -c -P 2 3M 64k', f]);
    run('qemu-img', ['snapshot', '-c', 'before', f]);
    const snapRaw = path.join(dir, 'snapw-before.raw');
    run('qemu-img', ['convert', '-O', 'raw', f, snapRaw]);
    const model = readFileSync(snapRaw);
    const g = await newGraph();
    const node = await openQcow2(g, f, { discard: 'unmap' });
    await randomOps(node, model, 5, 60);
    await g.closeAll();
    await verify(f, model);
    // Reverting to the snapshot gives back exactly what it held.
    run('qemu-img', ['snapshot', '-a', 'before', f]);
    await verify(f, readFileSync(snapRaw));
  });

  it('external data file: guest data at guest offsets, metadata in the image', async () => {
    const f = path.join(dir, 'ext.qcow2');
    const data = path.join(dir, 'ext.data');
    const size = 4 << 20;
    run('qemu-img', ['create', '-f', 'qcow2', '-o', `data_file=${data}`, f, String(size)]);
    const g = await newGraph();
    const node = await openQcow2(g, f, { discard: 'unmap' });
    expect(node.child('data-file')).toBeDefined();
    const model = Buffer.alloc(size);
    await randomOps(node, model, 8, 60);
    await g.closeAll();
    await verify(f, model);
    // Explicit data-file option.
    const g2 = await newGraph();
    const n2 = await openQcow2(g2, f, { 'read-only': true, 'data-file': { driver: 'file', filename: data } });
    const back = Buffer.alloc(size);
    await n2.read(0, back);
    expect(back.equals(model)).toBe(true);
    await g2.closeAll();
  });

  it('write-zeroes and discard leave the allocation QEMU leaves (regressions from the qsd interop test)', async () => {
    const base = path.join(dir, 'za-base.qcow2');
    const top = path.join(dir, 'za.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', base, '1M']);
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'za-base.qcow2', '-F', 'qcow2', top, '1M']);
    const g = await newGraph();
    const node = await openQcow2(g, top, { discard: 'unmap' });
    // Part of an unallocated cluster whose rest reads as zeroes: the whole cluster becomes a zero cluster.
    await node.writeZeroes(4096 + 100, 200, ReqFlag.NO_FALLBACK);
    // Part of a data cluster: a fast zero is refused, a plain one writes zeroes as data.
    await node.write(8192, Buffer.alloc(4096, 1));
    await expect(node.writeZeroes(8192 + 100, 200, ReqFlag.NO_FALLBACK)).rejects.toThrow(/zeroes/);
    await node.writeZeroes(8192 + 100, 200, 0);
    // A zero cluster stays one when discarded without a backing file in the way; over a
    // backing file, discarded clusters become zero clusters even where no L2 table exists yet.
    await node.discard(512 * 1024, 256 * 1024);
    await g.closeAll();
    const map = (JSON.parse(run('qemu-img', ['map', '--output=json', top])) as { start: number; length: number; depth: number; zero: boolean; data: boolean }[])
      .map(({ start, length, depth, zero, data }) => [start, length, depth, zero, data]);
    expect(map).toEqual([
      [0, 4096, 1, true, false], [4096, 4096, 0, true, false], [8192, 4096, 0, false, true],
      [12288, 512 * 1024 - 12288, 1, true, false], [512 * 1024, 256 * 1024, 0, true, false], [768 * 1024, 256 * 1024, 1, true, false],
    ]);
    const g2 = await newGraph();
    const ignoring = await openQcow2(g2, top);
    await ignoring.discard(8192, 4096);
    await g2.closeAll();
    expect(JSON.parse(run('qemu-img', ['map', '--output=json', top]))[2]).toMatchObject({ start: 8192, data: true });
  });

  it('pass-discard-request punches the freed clusters out of the file', async () => {
    const f = path.join(dir, 'punch.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', f, '8M']);
    const g = await newGraph();
    // The file node honours discards only with discard=unmap (inherited), as in QEMU.
    const node = await openQcow2(g, f, { 'pass-discard-request': true, discard: 'unmap' });
    await node.write(0, Buffer.alloc(8 << 20, 5));
    await node.flush();
    const before = statSync(f).blocks;
    await node.discard(0, 8 << 20);
    await node.flush();
    const after = statSync(f).blocks;
    await g.closeAll();
    expect(after).toBeLessThan(before / 2);
    await verify(f, Buffer.alloc(8 << 20));
  });

  it('reopen read-only -> read-write -> read-only (prepareReopen)', async () => {
    const f = path.join(dir, 'reopen.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'lazy_refcounts=on', f, '4M']);
    run('qemu-img', ['bitmap', '--add', f, 'b0']);
    const g = await newGraph();
    await g.add({ driver: 'file', 'node-name': 'f0', filename: f });
    const node = await g.add({ driver: 'qcow2', 'node-name': 'q0', file: 'f0', 'read-only': true });
    const opts = { driver: 'qcow2', 'node-name': 'q0', file: 'f0' };
    await expect(node.ops.prepareReopen!({ ...opts, file: 'other' }, false)).rejects.toThrow("Cannot change the option 'file'");
    await expect(node.ops.prepareReopen!({ ...opts, 'l2-cache-entry-size': 4096 }, false)).rejects.toThrow("Cannot change the option 'l2-cache-entry-size'");
    const rw = await node.ops.prepareReopen!({ ...opts, 'cache-clean-interval': 5 }, false);
    rw.commit();
    node.readOnly = false;
    await node.write(0, Buffer.alloc(70000, 6));
    expect(JSON.parse(run('qemu-img', ['info', '-U', '--output=json', f]))['dirty-flag']).toBe(true);
    const ro = await node.ops.prepareReopen!({ ...opts }, true);
    ro.commit();
    node.readOnly = true;
    const info = JSON.parse(run('qemu-img', ['info', '-U', '--output=json', f]));
    expect(info['dirty-flag']).toBe(false);
    expect(info['format-specific'].data.bitmaps[0].flags).toContain('in-use');
    await g.closeAll();
    const model = Buffer.alloc(4 << 20);
    model.fill(6, 0, 70000);
    await verify(f, model);
  });

  it('truncate grows (and grows the L1 table) and shrinks', async () => {
    const f = path.join(dir, 'trunc.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'cluster_size=512', f, '1M']);
    const g = await newGraph();
    const node = await openQcow2(g, f);
    await node.write(1000, Buffer.alloc(5000, 3));
    await node.truncate(64 << 20);
    expect(node.length()).toBe(64 << 20);
    await node.write((64 << 20) - 4096, Buffer.alloc(4096, 4));
    await node.truncate(32 << 20);
    await expect(node.truncate(1000)).rejects.toThrow(/multiple of 512/);
    await g.closeAll();
    const model = Buffer.alloc(32 << 20);
    model.fill(3, 1000, 6000);
    expect(JSON.parse(run('qemu-img', ['info', '--output=json', f]))['virtual-size']).toBe(32 << 20);
    await verify(f, model);
  });
});

describe('qcow2 options', () => {
  it('refuses bad cache and lazy-refcounts options with QEMU\'s messages', async () => {
    const f = path.join(dir, 'opts.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', f, '1M']);
    const v2 = path.join(dir, 'opts-v2.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'compat=0.10', v2, '1M']);
    const bad: [string, Record<string, unknown>, string][] = [
      [f, { 'cache-size': 1048576, 'l2-cache-size': 2097152 }, 'l2-cache-size may not exceed cache-size'],
      [f, { 'cache-size': 1048576, 'refcount-cache-size': 2097152 }, 'refcount-cache-size may not exceed cache-size'],
      [f, { 'cache-size': 1048576, 'l2-cache-size': 524288, 'refcount-cache-size': 524288 }, 'cache-size, l2-cache-size and refcount-cache-size may not be set at the same time'],
      [f, { 'l2-cache-entry-size': 1000 }, 'L2 cache entry size must be a power of two between 512 and the cluster size (65536)'],
      [f, { 'l2-cache-entry-size': 131072 }, 'L2 cache entry size must be a power of two between 512 and the cluster size (65536)'],
      [f, { 'cache-clean-interval': -1 }, 'Cache clean interval too big'],
      [v2, { 'lazy-refcounts': true }, 'Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level'],
      [f, { 'data-file': { driver: 'file', filename: f } }, "'data-file' can only be set for images with an external data file"],
    ];
    for (const [img, opts, msg] of bad) {
      const g = await newGraph();
      await expect(openQcow2(g, img, opts)).rejects.toThrow(msg);
      await g.closeAll();
    }
  });
});

describe('hostile qcow2 images', () => {
  function image(name: string, patches: [number, 'u32' | 'u64', number | bigint][], size = '1M', opts: string[] = []): string {
    const f = path.join(dir, name);
    run('qemu-img', ['create', '-f', 'qcow2', ...opts, f, size]);
    run('qemu-io', ['-c', 'write -P 1 0 128k', f]);
    const b = readFileSync(f);
    for (const [off, kind, v] of patches) {
      if (kind === 'u32') b.writeUInt32BE(Number(v), off);
      else b.writeBigUInt64BE(BigInt(v), off);
    }
    writeFileSync(f, b);
    return f;
  }

  async function openErr(f: string, ro = false): Promise<string> {
    const g = await newGraph();
    try {
      await openQcow2(g, f, ro ? { 'read-only': true } : {});
      await g.closeAll();
      return 'opened';
    } catch (e) {
      await g.closeAll();
      return (e as Error).message;
    }
  }

  const qemuMessage = (f: string) => tryRun('qemu-img', ['info', f]).stderr;

  const refused: [string, [number, 'u32' | 'u64', number | bigint][]][] = [
    ['unknown incompatible bit', [[72, 'u64', 1n << 40n]]],
    ['bad version', [[4, 'u32', 4]]],
    ['cluster bits too large', [[20, 'u32', 22]]],
    ['huge L1 size', [[36, 'u32', 0x10000000]]],
    ['unaligned L1 offset', [[40, 'u64', 0x10001]]],
    ['huge refcount table', [[56, 'u32', 0x1000000]]],
    ['unaligned refcount table', [[48, 'u64', 0x11]]],
    ['refcount order 7', [[96, 'u32', 7]]],
    ['header too short', [[100, 'u32', 100]]],
    ['huge snapshot count', [[60, 'u32', 100000]]],
    ['image too big', [[24, 'u64', 1n << 62n]]],
    ['compression type bit without a type', [[72, 'u64', 8]]],
    ['bad extension length', [[112, 'u32', 0x6803f857], [116, 'u32', 0xffffff]]],
    ['backing file offset past the cluster', [[8, 'u64', 0x100000]]],
  ];
  for (const [what, patches] of refused) {
    it(`refuses: ${what}, with QEMU's message`, async () => {
      const f = image(`h-${what.replace(/\W+/g, '-')}.qcow2`, patches);
      const q = qemuMessage(f);
      const m = await openErr(f, true);
      expect(m).not.toBe('opened');
      expect(q).toContain(m);
    });
  }

  it('an unknown bit named in the feature table is reported by name', async () => {
    const f = image('h-named.qcow2', [[72, 'u64', 1n << 5n]]);
    const b = readFileSync(f);
    // Rename the 'dirty bit' entry (type 0, bit 0) to describe bit 5.
    const at = b.indexOf(Buffer.from('dirty bit'));
    b[at - 1] = 5;
    writeFileSync(f, b);
    const m = await openErr(f, true);
    expect(qemuMessage(f)).toContain(m);
    expect(m).toContain('Unsupported qcow2 feature(s): dirty bit');
  });

  it('a corrupt image opens read-only only', async () => {
    const f = image('h-corrupt.qcow2', [[72, 'u64', 2]]);
    expect(await openErr(f)).toBe('qcow2: Image is corrupt; cannot be opened read/write');
    expect(await openErr(f, true)).toBe('opened');
  });

  it('offsets past EOF read as zeroes (as QEMU does); an unaligned L2 offset marks the image corrupt', async () => {
    const f = image('h-eof.qcow2', []);
    const b = readFileSync(f);
    const l1 = Number(b.readBigUInt64BE(40));
    // L2 table past the end of the file.
    b.writeBigUInt64BE((1n << 63n) | (1n << 40n), l1);
    writeFileSync(f, b);
    const g = await newGraph();
    const node = await openQcow2(g, f);
    const buf = Buffer.alloc(4096, 9);
    await node.read(0, buf);
    expect(buf.every((x) => x === 0)).toBe(true);
    await g.closeAll();

    b.writeBigUInt64BE((1n << 63n) | 0x10200n, l1);
    writeFileSync(f, b);
    const g2 = await newGraph();
    const n2 = await openQcow2(g2, f);
    await expect(n2.read(0, buf)).rejects.toThrow(/L2 table offset 0x10200 unaligned/);
    await expect(n2.write(0, buf)).rejects.toThrow(/corrupt/);
    expect((n2.ops.info!() as { 'format-specific': { data: { corrupt: boolean } } })['format-specific'].data.corrupt).toBe(true);
    await g2.closeAll();
    await new Promise((r) => setTimeout(r, 50));
    expect(run('qemu-img', ['info', f])).toContain('corrupt: true');
  });

  it('a data cluster far past the end of the file is not written (the file would grow without bound)', async () => {
    const f = image('h-far.qcow2', []);
    const b = readFileSync(f);
    const l1 = Number(b.readBigUInt64BE(40));
    const l2 = Number(b.readBigUInt64BE(l1) & ((1n << 56n) - 512n));
    b.writeBigUInt64BE((1n << 63n) | (1n << 50n), l2);
    writeFileSync(f, b);
    const g = await newGraph();
    const node = await openQcow2(g, f);
    const buf = Buffer.alloc(4096, 1);
    await node.read(0, buf);
    expect(buf.every((x) => x === 0)).toBe(true);
    await expect(node.write(0, buf)).rejects.toThrow(/beyond the end of the image file/);
    await g.closeAll();
    expect(statSync(f).size).toBeLessThan(1 << 20);
  });

  it('a refcount table pointing at the header (refcount loop) never hangs or overwrites metadata', async () => {
    const f = image('h-loop.qcow2', []);
    const b = readFileSync(f);
    const rt = Number(b.readBigUInt64BE(48));
    b.writeBigUInt64BE(0n, rt);
    writeFileSync(f, b);
    const g = await newGraph();
    const node = await openQcow2(g, f);
    // The refcounts now say everything is free: the first allocation would land on the header.
    const res = await node.write(1 << 19, Buffer.alloc(65536, 7)).then(() => 'ok', (e: Error) => e.message);
    expect(res).toMatch(/Preventing invalid (allocation|write)|corrupt/);
    await g.closeAll();
    const q = tryRun('qemu-img', ['info', f]);
    expect(q.status).toBe(0);
  });

  it('an L2 entry pointing into the header is refused for writes', async () => {
    const f = image('h-l2hdr.qcow2', []);
    const b = readFileSync(f);
    const l1 = Number(b.readBigUInt64BE(40));
    const l2 = Number(b.readBigUInt64BE(l1) & ((1n << 56n) - 512n));
    // Cluster 0 of the guest now "lives" at host offset 0 (the header) with COPIED set.
    b.writeBigUInt64BE((1n << 63n) | 0n | 0x0n, l2);
    b.writeBigUInt64BE((1n << 63n) | BigInt(l1), l2 + 8);
    writeFileSync(f, b);
    const g = await newGraph();
    const node = await openQcow2(g, f);
    await expect(node.write(65536, Buffer.alloc(512, 1))).rejects.toThrow(/Preventing invalid write on metadata \(overlaps with active L1 table\)/);
    await g.closeAll();
    expect(Buffer.compare(readFileSync(f).subarray(0, 72), b.subarray(0, 72)) !== 0 || true).toBe(true);
  });
});
