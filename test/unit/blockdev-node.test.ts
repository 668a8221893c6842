import { describe, it, expect } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { COMPLETED, ReqFlag } from '../../src/blockdev/request.ts';
import { nullDriver } from '../../src/blockdev/drivers/null.ts';
import { memoryDriver } from '../helpers/memory-driver.ts';
import { obj, opt } from '../../src/qapi/types.ts';
import type { DriverOps } from '../../src/blockdev/driver.ts';
import { rng } from '../helpers/qcow2.ts';


async function setup(limits = { alignment: 512, maxTransfer: 4096 }, opts = {}) {
  const graph = new BlockGraph();
  const drv = memoryDriver('mem', limits, opts);
  graph.register(drv);
  const node = await graph.add({ driver: 'mem', 'node-name': 'm0', size: 65536 });
  return { graph, node, state: drv.state.get('m0')! };
}

describe('BlockNode generic layer', () => {
  it('aligns unaligned reads and writes with read-modify-write', async () => {
    const { node, state } = await setup();
    await node.write(100, Buffer.alloc(1000, 0xab));
    expect(state.data.subarray(100, 1100).every((b) => b === 0xab)).toBe(true);
    expect(state.data[99]).toBe(0);
    expect(state.data[1100]).toBe(0);
    const out = Buffer.alloc(10);
    await node.read(1095, out);
    expect([...out]).toEqual([0xab, 0xab, 0xab, 0xab, 0xab, 0, 0, 0, 0, 0]);
  });

  it('splits requests larger than maxTransfer', async () => {
    const { node, state } = await setup();
    await node.write(0, Buffer.alloc(10240, 1));
    expect(state.calls.filter((c) => c.startsWith('write')).length).toBe(3);
  });

  it('emulates FUA with a flush when the driver lacks it, and passes it through when it has it', async () => {
    const a = await setup();
    await a.node.write(0, Buffer.alloc(512), ReqFlag.FUA);
    expect(a.state.calls).toEqual(['write 0 512 0', 'flush']);
    const b = await setup({ alignment: 512, maxTransfer: 4096 }, { fua: true });
    await b.node.write(0, Buffer.alloc(512), ReqFlag.FUA);
    expect(b.state.calls).toEqual([`write 0 512 ${ReqFlag.FUA}`]);
  });

  it('emulates write-zeroes with zero writes, but not under NO_FALLBACK', async () => {
    const { node, state } = await setup();
    state.data.fill(7);
    await node.writeZeroes(10, 3000);
    expect(state.data.subarray(10, 3010).every((b) => b === 0)).toBe(true);
    expect(state.data[9]).toBe(7);
    expect(state.data[3010]).toBe(7);
    await expect(node.writeZeroes(0, 512, ReqFlag.NO_FALLBACK)).rejects.toMatchObject({ code: 'ENOTSUP' });
  });

  it('uses the driver write-zeroes for the aligned middle only', async () => {
    const { node, state } = await setup({ alignment: 512, maxTransfer: 4096 }, { zeroes: true });
    state.data.fill(7);
    await node.writeZeroes(100, 2000);
    expect(state.calls.filter((c) => c.startsWith('zero'))).toEqual(['zero 512 1536 0']);
    expect(state.data.subarray(100, 2100).every((b) => b === 0)).toBe(true);
    expect(state.data[2100]).toBe(7);
  });

  it('rejects out-of-range requests and writes to read-only nodes', async () => {
    const { node, graph } = await setup();
    await expect(node.read(65000, Buffer.alloc(1000))).rejects.toMatchObject({ code: 'EINVAL' });
    const ro = await graph.add({ driver: 'mem', 'node-name': 'ro', size: 4096, 'read-only': true });
    await expect(ro.write(0, Buffer.alloc(1))).rejects.toMatchObject({ code: 'EPERM' });
  });

  it('drained sections wait for in-flight requests and hold new ones back, in order', async () => {
    const { node, state } = await setup({ alignment: 1, maxTransfer: 1 << 20 });
    const w1 = node.write(0, Buffer.alloc(10, 1));
    const section = node.drained(async () => { state.calls.push('section'); expect(node.inFlight).toBe(0); });
    const w2 = node.write(0, Buffer.alloc(10, 2));
    const w3 = node.write(0, Buffer.alloc(10, 3));
    await Promise.all([w1, section, w2, w3]);
    expect(state.calls).toEqual(['write 0 10 0', 'section', 'write 0 10 0', 'write 0 10 0']);
    const b = Buffer.alloc(1);
    await node.read(0, b);
    expect(b[0]).toBe(3);
  });

  it('draining a lower node lets requests already running above it finish (no deadlock)', async () => {
    const graph = new BlockGraph();
    const drv = memoryDriver('mem', { alignment: 1, maxTransfer: 1 << 20 });
    graph.register(drv);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    // A format node whose read waits, then reads its child: the request is in flight above while the drain starts.
    graph.register({
      name: 'slow', kind: 'format', options: obj('BlockdevOptions-slow', [opt('file', 'str')]),
      async open(options, ctx): Promise<DriverOps> {
        const file = await ctx.openChild('file', options.file as string);
        return { length: () => file.length(), read: async (o, buf) => { await gate; await file.read(o, buf); } };
      },
    });
    const base = await graph.add({ driver: 'mem', 'node-name': 'base', size: 4096 });
    const top = await graph.add({ driver: 'slow', 'node-name': 'top', file: 'base' });
    const order: string[] = [];
    const read = top.read(0, Buffer.alloc(512)).then(() => order.push('read'));
    await new Promise((r) => setImmediate(r));
    const section = base.drained(() => { order.push('section'); });
    release();
    await Promise.race([Promise.all([read, section]), new Promise((_, rej) => setTimeout(() => rej(new Error('drain deadlocked')), 2000))]);
    expect(order).toEqual(['read', 'section']);
  });

  it('matches an in-memory model under a seeded random sequence of unaligned operations', async () => {
    const { node } = await setup({ alignment: 512, maxTransfer: 2048 }, { zeroes: true });
    const model = Buffer.alloc(65536);
    const rand = rng(42);
    for (let i = 0; i < 400; i++) {
      const off = Math.floor(rand() * 60000);
      const len = 1 + Math.floor(rand() * 5000);
      const l = Math.min(len, 65536 - off);
      const op = rand();
      const jobs: Promise<void>[] = [];
      if (op < 0.5) {
        const buf = Buffer.alloc(l, i & 0xff);
        buf.copy(model, off);
        jobs.push(node.write(off, buf));
      } else if (op < 0.7) {
        model.fill(0, off, off + l);
        jobs.push(node.writeZeroes(off, l, ReqFlag.MAY_UNMAP));
      } else {
        const buf = Buffer.alloc(l);
        await node.read(off, buf);
        expect(buf.equals(model.subarray(off, off + l))).toBe(true);
      }
      await Promise.all(jobs);
    }
    const all = Buffer.alloc(65536);
    await node.read(0, all);
    expect(all.equals(model)).toBe(true);
  });

  it('serialises concurrent overlapping unaligned writes', async () => {
    const { node } = await setup({ alignment: 512, maxTransfer: 4096 });
    await Promise.all([node.write(0, Buffer.alloc(300, 1)), node.write(300, Buffer.alloc(300, 2)), node.write(200, Buffer.alloc(50, 3))]);
    const b = Buffer.alloc(600);
    await node.read(0, b);
    expect(b[0]).toBe(1);
    expect(b[210]).toBe(3);
    expect(b[400]).toBe(2);
  });
});

describe('requests a driver finishes at once', () => {
  it('return COMPLETED, counted and observed like any other; a quiesced node holds them back as usual', async () => {
    const graph = new BlockGraph();
    graph.register(nullDriver);
    const node = await graph.add({ driver: 'null-co', 'node-name': 'n', size: 1 << 20 });
    const seen: [number, number][] = [];
    node.writeObservers.add((o, l) => seen.push([o, l]));
    const buf = Buffer.alloc(4096, 7);
    expect(node.read(8192, buf)).toBe(COMPLETED);
    expect(buf.every((b) => b === 0)).toBe(true);
    expect(node.write(4096, buf)).toBe(COMPLETED);
    expect(seen).toEqual([[4096, 4096]]);
    expect(node.stats).toMatchObject({ rdOps: 1, rdBytes: 4096, wrOps: 1, wrBytes: 4096 });
    expect(node.inFlight).toBe(0);
    let later: Promise<void> | undefined;
    await node.drained(() => {
      later = node.read(0, buf);
      expect(later).not.toBe(COMPLETED);
    });
    await later;
    expect(node.stats.rdOps).toBe(2);
  });
});

describe('BlockGraph', () => {
  it('names nodes automatically and refuses duplicates and invalid names with QEMU texts', async () => {
    const graph = new BlockGraph();
    graph.register(nullDriver);
    const n = await graph.add({ driver: 'null-co', size: 4096 });
    expect(n.nodeName).toMatch(/^#block\d+$/);
    await graph.add({ driver: 'null-co', 'node-name': 'a', size: 4096 });
    await expect(graph.add({ driver: 'null-co', 'node-name': 'a' })).rejects.toThrow("Duplicate nodes with node-name='a'");
    await expect(graph.add({ driver: 'null-co', 'node-name': '1a' })).rejects.toThrow("Invalid node-name: '1a'");
  });

  it('refuses a second writer on a node owned by a format driver and names both users', async () => {
    const graph = new BlockGraph();
    graph.register(nullDriver);
    const fmt = memoryDriver('fmt', {});
    const owner = { ...fmt, kind: 'format' as const, async open(_o: Record<string, unknown>, ctx: any) { const c = await ctx.openChild('file', 'base'); return { length: () => c.length() }; } };
    graph.register(owner);
    await graph.add({ driver: 'null-co', 'node-name': 'base', size: 4096 });
    await graph.add({ driver: 'fmt', 'node-name': 'f1' });
    await expect(graph.add({ driver: 'fmt', 'node-name': 'f2' })).rejects.toThrow(/^Permission conflict on node 'base': permissions 'write, resize' are both required by node 'f1' \(uses node 'base' as 'file' child\) and unshared by node 'f2' \(uses node 'base' as 'file' child\)\.$/);
    await expect(graph.del('base')).rejects.toMatchObject({ code: 'EBUSY' });
  });
});
