/**
 * qcow2 reads and block status against QEMU: images made by qemu-img and
 * qemu-io are read in full through a BlockGraph node and compared with
 * `qemu-img convert -O raw`; block status is compared with `qemu-img map`.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import type { BlockNode } from '../../src/blockdev/node.ts';
import { parseHeader, serializeHeader } from '../../src/blockdev/drivers/qcow2/header.ts';
import { run, tryRun } from '../helpers/tools.ts';

import { newGraph, openQcow2, rng } from '../helpers/qcow2.ts';

interface MapEntry { start: number; length: number; depth: number; present: boolean; zero: boolean; data: boolean }

/** Compares our block status over the whole node with qemu-img map, segment by segment. */
async function compareMap(node: BlockNode, file: string): Promise<void> {
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', file])) as MapEntry[];
  const ours = await node.blockStatus(0, node.length());
  const bounds = new Set<number>([0, node.length()]);
  for (const m of map) { bounds.add(m.start); bounds.add(m.start + m.length); }
  for (const e of ours) { bounds.add(e.offset); bounds.add(e.offset + e.length); }
  const points = [...bounds].sort((a, b) => a - b);
  for (let i = 0; i + 1 < points.length; i++) {
    const p = points[i];
    const m = map.find((x) => x.start <= p && p < x.start + x.length)!;
    const o = ours.find((x) => x.offset <= p && p < x.offset + x.length)!;
    const got = { data: o.data, present: o.depth > 0, depth: o.depth > 0 ? o.depth - 1 : -1, zero: o.data ? undefined : o.zero };
    const want = { data: m.data, present: m.present, depth: m.present ? m.depth : -1, zero: m.data ? undefined : m.zero };
    expect(got, `block status at ${p} of ${path.basename(file)}`).toEqual(want);
  }
}

/** Reads the whole image through the node (aligned chunks, then a few odd ranges) and compares with qemu-img's raw conversion. */
async function compareData(node: BlockNode, file: string, dir: string): Promise<void> {
  const rawPath = path.join(dir, path.basename(file) + '.raw');
  run('qemu-img', ['convert', '-O', 'raw', file, rawPath]);
  const want = readFileSync(rawPath);
  expect(node.length()).toBe(want.length);
  const got = Buffer.alloc(want.length);
  const chunk = 768 * 1024;
  for (let o = 0; o < want.length; o += chunk) await node.read(o, got.subarray(o, Math.min(want.length, o + chunk)));
  expect(got.equals(want), `contents of ${path.basename(file)}`).toBe(true);
  const r = rng(want.length);
  for (let i = 0; i < 50; i++) {
    const o = Math.floor(r() * want.length);
    const l = Math.min(want.length - o, 1 + Math.floor(r() * 200000));
    const b = Buffer.alloc(l);
    await node.read(o, b);
    expect(b.equals(want.subarray(o, o + l)), `read ${o}+${l}`).toBe(true);
  }
}

/** A seeded script of qemu-io writes, zero writes and discards. */
function ioScript(seed: number, size: number, n: number, opts: { zero?: boolean; discard?: boolean; align?: number } = {}): string[] {
  const r = rng(seed);
  const a = opts.align ?? 512;
  const cmds: string[] = [];
  for (let i = 0; i < n; i++) {
    const off = Math.floor((r() * size) / a) * a;
    const len = Math.max(a, Math.min(size - off, Math.floor((r() * size) / 8 / a) * a));
    if (len <= 0) continue;
    const k = r();
    if (opts.zero && k < 0.15) cmds.push(`write -z ${off} ${len}`);
    else if (opts.discard && k < 0.3) cmds.push(`discard ${off} ${len}`);
    else cmds.push(`write -P ${1 + Math.floor(r() * 250)} ${off} ${len}`);
  }
  return cmds;
}

function qemuIo(file: string, cmds: string[], fmt = 'qcow2'): void {
  const args = ['-f', fmt];
  for (const c of cmds) args.push('-c', c);
  run('qemu-io', [...args, file]);
}

let dir: string;
let graph: BlockGraph;
beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'qcow2-read-'));
});
afterAll(() => { rmSync(dir, { recursive: true, force: true }); });

async function check(file: string): Promise<BlockNode> {
  graph = await newGraph();
  const node = await openQcow2(graph, file, { 'read-only': true });
  try {
    await compareData(node, file, dir);
    await compareMap(node, file);
  } finally {
    await graph.closeAll();
  }
  return node;
}

describe('qcow2 reads match qemu-img', () => {
  const cases: { name: string; create: string[]; size: number; seed: number; zero?: boolean; discard?: boolean }[] = [
    { name: 'v2-64k', create: ['-o', 'compat=0.10'], size: 8 << 20, seed: 1 },
    { name: 'v3-4k-rc1', create: ['-o', 'cluster_size=4096,refcount_bits=1'], size: 4 << 20, seed: 2, zero: true, discard: true },
    { name: 'v3-512-rc64', create: ['-o', 'cluster_size=512,refcount_bits=64'], size: 2 << 20, seed: 3, zero: true, discard: true },
    { name: 'v3-2M-rc16', create: ['-o', 'cluster_size=2M'], size: 24 << 20, seed: 4, zero: true, discard: true },
    { name: 'v3-64k-zero-discard', create: [], size: 8 << 20, seed: 5, zero: true, discard: true },
    { name: 'v3-extl2', create: ['-o', 'extended_l2=on,cluster_size=64k'], size: 8 << 20, seed: 6, zero: true, discard: true },
    { name: 'v3-extl2-32k', create: ['-o', 'extended_l2=on,cluster_size=32k'], size: 4 << 20, seed: 7, zero: true },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const f = path.join(dir, `${c.name}.qcow2`);
      run('qemu-img', ['create', '-f', 'qcow2', ...c.create, f, String(c.size)]);
      qemuIo(f, ioScript(c.seed, c.size, 40, { zero: c.zero, discard: c.discard }));
      await check(f);
    });
  }

  for (const type of ['zlib', 'zstd']) {
    it(`compressed clusters (${type})`, async () => {
      const src = path.join(dir, `src-${type}.raw`);
      run('qemu-img', ['create', '-f', 'raw', src, '6M']);
      qemuIo(src, ioScript(11, 6 << 20, 30), 'raw');
      const f = path.join(dir, `comp-${type}.qcow2`);
      run('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${type},cluster_size=4096`, src, f]);
      // Some uncompressed overwrites on top, and a compressed write through qemu-io.
      qemuIo(f, ['write -P 7 100000 5000', 'write -c -P 9 1048576 4096', 'write -z 2097152 65536']);
      await check(f);
      const f2 = path.join(dir, `comp2-${type}.qcow2`);
      run('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${type}`, src, f2]);
      await check(f2);
    });
  }

  it('3-deep backing chain (top larger than base, relative names)', async () => {
    const base = path.join(dir, 'base.qcow2');
    const mid = path.join(dir, 'mid.qcow2');
    const top = path.join(dir, 'top.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', base, '4M']);
    qemuIo(base, ioScript(21, 4 << 20, 20, { zero: true }));
    run('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', '-o', 'cluster_size=4096', mid, '5M']);
    qemuIo(mid, ioScript(22, 5 << 20, 20, { zero: true, discard: true }));
    run('qemu-img', ['create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', top, '7M']);
    qemuIo(top, ioScript(23, 7 << 20, 20, { zero: true, discard: true }));
    await check(top);
  });

  it('raw backing file without a recorded format is probed', async () => {
    const base = path.join(dir, 'rawbase.img');
    const top = path.join(dir, 'rawtop.qcow2');
    run('qemu-img', ['create', '-f', 'raw', base, '2M']);
    qemuIo(base, ['write -P 5 0 1M'], 'raw');
    run('qemu-img', ['create', '-f', 'qcow2', '-b', base, '-F', 'raw', top]);
    qemuIo(top, ['write -P 6 65536 4096']);
    // Turn the backing format extension into an unknown one: the format must now be probed.
    const img = readFileSync(top);
    const at = img.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]));
    expect(at).toBeGreaterThan(0);
    img.writeUInt32BE(0x12345678, at);
    writeFileSync(top, img);
    expect(run('qemu-img', ['info', top])).not.toContain('backing file format');
    graph = await newGraph();
    const node = await openQcow2(graph, top, { 'read-only': true });
    try {
      await compareData(node, top, dir);
      await compareMap(node, top);
      expect(graph.nodes.get(node.child('backing')!.nodeName)!.driver.name).toBe('raw');
    } finally {
      await graph.closeAll();
    }
  });

  it('backing: null hides the backing file', async () => {
    const base = path.join(dir, 'hbase.qcow2');
    const top = path.join(dir, 'htop.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', base, '1M']);
    qemuIo(base, ['write -P 5 0 1M']);
    run('qemu-img', ['create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    graph = await newGraph();
    const node = await openQcow2(graph, top, { 'read-only': true, backing: null });
    const b = Buffer.alloc(4096, 1);
    await node.read(0, b);
    expect(b.every((x) => x === 0)).toBe(true);
    expect((await node.blockStatus(0, 1 << 20))[0]).toMatchObject({ depth: 0, zero: true, data: false });
    await graph.closeAll();
  });

  it('internal snapshots: active layer read, snapshot table parsed', async () => {
    const f = path.join(dir, 'snap.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', f, '4M']);
    qemuIo(f, ['write -P 1 0 2M']);
    run('qemu-img', ['snapshot', '-c', 'first', f]);
    qemuIo(f, ['write -P 2 65536 100000', 'discard 1M 128k', 'write -z 1572864 65536']);
    run('qemu-img', ['snapshot', '-c', 'second', f]);
    qemuIo(f, ['write -P 3 0 4096']);
    await check(f);
    graph = await newGraph();
    const node = await openQcow2(graph, f, { 'read-only': true });
    const info = node.ops.info!() as { snapshots: { name: string; id: string }[] };
    expect(info.snapshots.map((s) => s.name)).toEqual(['first', 'second']);
    expect(info.snapshots.map((s) => s.id)).toEqual(['1', '2']);
    expect(info.snapshots).toEqual(JSON.parse(run('qemu-img', ['info', '--output=json', f])).snapshots);
    await graph.closeAll();
  });

  it('info() reports the format-specific data QEMU does', async () => {
    const f = path.join(dir, 'info.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'refcount_bits=8,lazy_refcounts=on,extended_l2=on,compression_type=zstd', f, '1M']);
    graph = await newGraph();
    const node = await openQcow2(graph, f, { 'read-only': true });
    const info = node.ops.info!() as Record<string, unknown>;
    const q = JSON.parse(run('qemu-img', ['info', '--output=json', f])) as Record<string, unknown>;
    expect(info['format-specific']).toEqual(q['format-specific']);
    expect(info['cluster-size']).toBe(q['cluster-size']);
    expect(node.ops.filename!()).toBe(f);
    await graph.closeAll();
  });

  it('persistent bitmaps are listed like QEMU lists them and kept intact', async () => {
    const f = path.join(dir, 'bitmaps.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', f, '4M']);
    run('qemu-img', ['bitmap', '--add', f, 'b0']);
    run('qemu-img', ['bitmap', '--add', '-g', '128k', '--disable', f, 'b1']);
    qemuIo(f, ['write -P 1 0 64k']);
    graph = await newGraph();
    const node = await openQcow2(graph, f, { 'read-only': true });
    const info = node.ops.info!() as Record<string, unknown>;
    const q = JSON.parse(run('qemu-img', ['info', '--output=json', f])) as Record<string, unknown>;
    expect(info['format-specific']).toEqual(q['format-specific']);
    await graph.closeAll();
    // A read-write open without writes leaves them as they were.
    graph = await newGraph();
    await openQcow2(graph, f);
    await graph.closeAll();
    expect(JSON.parse(run('qemu-img', ['info', '--output=json', f]))['format-specific']).toEqual(q['format-specific']);
    // After a write they are stored back (blockd maintains them: src/blockdev/drivers/qcow2/bitmaps-store.ts), not in-use.
    graph = await newGraph();
    const rw = await openQcow2(graph, f);
    await rw.write(65536, Buffer.alloc(4096, 2));
    await graph.closeAll();
    const after = JSON.parse(run('qemu-img', ['info', '--output=json', f]))['format-specific'].data.bitmaps as { name: string; flags: string[] }[];
    expect(after.map((b) => b.name)).toEqual(['b0', 'b1']);
    expect(after).toEqual((q['format-specific'] as { data: { bitmaps: unknown } }).data.bitmaps);
    const c = JSON.parse(tryRun('qemu-img', ['check', '--output=json', f]).stdout) as Record<string, number>;
    expect(c['check-errors'] ?? 0).toBe(0);
    expect(c.corruptions ?? 0).toBe(0);
    expect(c.leaks ?? 0).toBe(0);
  });
});

describe('qcow2 header', () => {
  it('serialises back to the bytes qemu-img wrote (v2, v3, backing, data file, unknown extensions)', () => {
    const variants: [string, string[]][] = [
      ['v2', ['-o', 'compat=0.10']],
      ['v3', ['-o', 'cluster_size=512,refcount_bits=1']],
      ['backing', ['-b', '/nonexistent/base.img', '-F', 'raw', '-u']],
      ['datafile', ['-o', 'data_file=' + path.join(dir, 'hdr-data.raw')]],
      ['zstd', ['-o', 'compression_type=zstd,extended_l2=on']],
    ];
    for (const [name, args] of variants) {
      const f = path.join(dir, `hdr-${name}.qcow2`);
      run('qemu-img', ['create', '-f', 'qcow2', ...args, f, '64M']);
      const raw = readFileSync(f);
      const h = parseHeader(raw.subarray(0, 2 << 20));
      const cs = 2 ** h.clusterBits;
      expect(serializeHeader(h).equals(raw.subarray(0, cs)), name).toBe(true);
    }
    // An unknown extension survives a round trip, in place.
    const f = path.join(dir, 'hdr-v3.qcow2');
    const raw = readFileSync(f);
    const h = parseHeader(raw);
    h.extensions.push({ type: 0x12345678, data: Buffer.from('keep me') });
    const again = parseHeader(serializeHeader(h));
    expect(again.extensions.at(-1)).toEqual({ type: 0x12345678, data: Buffer.from('keep me') });
    expect(again.featureNames.length).toBe(h.featureNames.length);
  });
});
