/** Driver hooks through the layers (as nbdkit's test-layers.c): drain begin/end top-down, child permissions, probing. */
import { describe, it, expect } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import type { Driver, DriverOps } from '../../src/blockdev/driver.ts';
import { childPermission } from '../../src/blockdev/perm.ts';
import { probeBytes } from '../../src/blockdev/probe.ts';
import { rawDriver } from '../../src/blockdev/drivers/raw.ts';
import { qcow2Driver } from '../../src/blockdev/drivers/qcow2/index.ts';
import { obj, opt } from '../../src/qapi/types.ts';

/** A layer that records drain calls; `protocol` at the bottom, `filter` layers stacked on 'file'. */
function layer(name: string, kind: 'protocol' | 'filter', calls: string[]): Driver {
  return {
    name,
    kind,
    options: obj(`BlockdevOptions-${name}`, kind === 'filter' ? [opt('file', 'str')] : []),
    async open(options, ctx): Promise<DriverOps> {
      const file = kind === 'filter' ? await ctx.openChild('file', options.file as string) : undefined;
      const tag = ctx.nodeName;
      return {
        length: () => file?.length() ?? 4096,
        read: file ? (o, b) => file.read(o, b) : async (_o, b) => { b.fill(0); },
        drainBegin: () => { calls.push(`${tag}.drainBegin`); },
        drainEnd: () => { calls.push(`${tag}.drainEnd`); },
      };
    },
  };
}

describe('driver hooks', () => {
  it('drain begin/end reach every layer above the drained node, top-down, once per outermost section', async () => {
    const calls: string[] = [];
    const g = new BlockGraph();
    g.register(layer('bottom', 'protocol', calls));
    g.register(layer('flt', 'filter', calls));
    await g.add({ driver: 'bottom', 'node-name': 'b' });
    await g.add({ driver: 'flt', 'node-name': 'f1', file: 'b' });
    await g.add({ driver: 'flt', 'node-name': 'f2', file: 'f1' });
    const bottom = g.find('b');
    await bottom.drained(async () => {
      calls.push('section');
      await bottom.drained(() => { calls.push('nested'); });
    });
    expect(calls).toEqual(['f2.drainBegin', 'f1.drainBegin', 'b.drainBegin', 'section', 'nested', 'f2.drainEnd', 'f1.drainEnd', 'b.drainEnd']);
    // Draining a middle node leaves the layer below alone.
    calls.length = 0;
    await g.find('f1').drained(() => { calls.push('section'); });
    expect(calls).toEqual(['f2.drainBegin', 'f1.drainBegin', 'section', 'f2.drainEnd', 'f1.drainEnd']);
  });

  it('drainBegin runs before the wait for in-flight requests (a throttle lets its queue go there)', async () => {
    const calls: string[] = [];
    let release: (() => void) | undefined;
    const holding: Driver = {
      name: 'holding', kind: 'protocol', options: obj('BlockdevOptions-holding', []),
      async open(): Promise<DriverOps> {
        return {
          length: () => 4096,
          read: () => new Promise<void>((r) => { release = r; calls.push('queued'); }),
          drainBegin: () => { calls.push('drainBegin'); release?.(); },
        };
      },
    };
    const g = new BlockGraph();
    g.register(holding);
    const n = await g.add({ driver: 'holding', 'node-name': 'h' });
    const read = n.read(0, Buffer.alloc(512));
    await n.drained(() => { calls.push('section'); });
    await read;
    expect(calls).toEqual(['queued', 'drainBegin', 'section']);
  });

  it('a request in flight above, held in a node below, is let go: every drainBegin comes before the first wait (a mirror pivot under a throttled client)', async () => {
    const calls: string[] = [];
    let release: (() => void) | undefined;
    const holding: Driver = {
      name: 'holding', kind: 'protocol', options: obj('BlockdevOptions-holding2', []),
      async open(): Promise<DriverOps> {
        return {
          length: () => 4096,
          read: () => new Promise<void>((r) => { release = r; calls.push('queued'); }),
          drainBegin: () => { calls.push('h.drainBegin'); release?.(); },
          drainEnd: () => { calls.push('h.drainEnd'); },
        };
      },
    };
    const g = new BlockGraph();
    g.register(holding);
    g.register(layer('flt', 'filter', calls));
    await g.add({ driver: 'holding', 'node-name': 'h' });
    const top = await g.add({ driver: 'flt', 'node-name': 'f1', file: 'h' });
    const read = top.read(0, Buffer.alloc(512));
    await new Promise((r) => setImmediate(r));
    const timeout = new Promise((_, rej) => setTimeout(() => rej(new Error('drain waited on the held request')), 2000));
    await Promise.race([g.find('h').drained(() => { calls.push('section'); }), timeout]);
    await read;
    expect(calls).toEqual(['queued', 'f1.drainBegin', 'h.drainBegin', 'section', 'f1.drainEnd', 'h.drainEnd']);
  });

  it('child permissions: one rule, the driver\'s hook first (raw passes its users\' sharing through)', () => {
    expect(childPermission(rawDriver, 'file', false)).toEqual({
      perm: { read: true, write: true, resize: false }, shared: { read: true, write: true, resize: true }, passThrough: true,
    });
    expect(childPermission(qcow2Driver, 'file', false)).toEqual({
      perm: { read: true, write: true, resize: true }, shared: { read: true, write: false, resize: false },
    });
    expect(childPermission(qcow2Driver, 'backing', false).perm.write).toBe(false);
    const custom: Driver = { ...rawDriver, name: 'custom', childPerm: () => ({ perm: { read: true, write: false, resize: false }, shared: { read: true, write: true, resize: true } }) };
    expect(childPermission(custom, 'file', false).perm.write).toBe(false);
  });

  it('probing: the best probe() score wins, raw when nobody claims the bytes', () => {
    const qcow2Head = Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
    expect(probeBytes([rawDriver, qcow2Driver], qcow2Head, 'x')).toBe('qcow2');
    expect(probeBytes([rawDriver, qcow2Driver], Buffer.alloc(8), 'x')).toBe('raw');
    const eager: Driver = { ...rawDriver, name: 'eager', probe: () => 10 };
    expect(probeBytes([eager, qcow2Driver], qcow2Head, 'x')).toBe('qcow2');
    expect(probeBytes([eager, qcow2Driver], Buffer.alloc(8), 'x')).toBe('eager');
  });
});
