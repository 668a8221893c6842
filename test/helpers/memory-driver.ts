/** An in-memory driver for tests of the generic layer: records every call it receives. */
import type { Driver, DriverOps } from '../../src/blockdev/driver.ts';
import type { Limits } from '../../src/blockdev/request.ts';
import { obj, opt } from '../../src/qapi/types.ts';

export interface MemoryDriverState {
  data: Buffer;
  calls: string[];
  flushes: number;
}

export function memoryDriver(name: string, limits: Partial<Limits>, opts: { zeroes?: boolean; fua?: boolean } = {}): Driver & { state: Map<string, MemoryDriverState> } {
  const state = new Map<string, MemoryDriverState>();
  return {
    name,
    kind: 'protocol',
    state,
    options: obj(`BlockdevOptions-${name}`, [opt('size', 'int')]),
    async open(options, ctx): Promise<DriverOps> {
      const s: MemoryDriverState = { data: Buffer.alloc((options.size as number) ?? 1 << 20), calls: [], flushes: 0 };
      state.set(ctx.nodeName, s);
      const check = (o: number, l: number, payload = true) => {
        const a = limits.alignment ?? 1;
        if (o % a || l % a) throw new Error(`unaligned request reached driver: ${o}+${l}`);
        if (payload && limits.maxTransfer && l > limits.maxTransfer) throw new Error(`oversized request reached driver: ${l}`);
      };
      const ops: DriverOps = {
        length: () => s.data.length,
        limits: { ...limits, canFua: opts.fua ?? false },
        async read(o, buf) { check(o, buf.length); s.calls.push(`read ${o} ${buf.length}`); s.data.copy(buf, 0, o, o + buf.length); },
        async write(o, buf, flags) { check(o, buf.length); s.calls.push(`write ${o} ${buf.length} ${flags}`); buf.copy(s.data, o); },
        async flush() { s.calls.push('flush'); s.flushes++; },
        async truncate(size) {
          const n = Buffer.alloc(size);
          s.data.copy(n, 0, 0, Math.min(size, s.data.length));
          s.data = n;
        },
      };
      if (opts.zeroes) ops.writeZeroes = async (o, l, flags) => { check(o, l, false); s.calls.push(`zero ${o} ${l} ${flags}`); s.data.fill(0, o, o + l); };
      return ops;
    },
  };
}
