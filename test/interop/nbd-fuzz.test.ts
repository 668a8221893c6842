/**
 * Seeded random requests (valid magic, any command, flags, offset, length)
 * over a raw socket with structured replies: every request gets exactly one
 * complete reply, the stream stays in sync, nothing crashes.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { IHAVEOPT, Opt } from '../../src/nbd-protocol/constants.ts';
import { RawClient, request, runTool, startHarness, type Harness } from '../helpers/nbd.ts';

const SIZE = 8 << 20;
let h: Harness;
beforeAll(async () => {
  h = await startHarness([{ driver: 'mem', 'node-name': 'n0', size: SIZE }], [{ id: 'e0', nodeName: 'n0', name: 'disk', writable: true, allocationDepth: true }]);
});
afterAll(async () => h?.close());

/** mulberry32 */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; };
const str = (s: string) => Buffer.concat([u32(s.length), Buffer.from(s)]);
function option(opt: number, data = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(data.length, 12);
  return Buffer.concat([b, data]);
}

async function negotiateStructured(c: RawClient): Promise<void> {
  await c.read(18);
  c.write(Buffer.concat([
    u32(3),
    option(Opt.STRUCTURED_REPLY),
    option(Opt.SET_META_CONTEXT, Buffer.concat([str('disk'), u32(2), str('base:allocation'), str('qemu:allocation-depth')])),
    option(Opt.GO, Buffer.concat([str('disk'), Buffer.from([0, 0])])),
  ]));
  for (;;) {
    const hdr = await c.read(20);
    const len = hdr.readUInt32BE(16);
    if (len) await c.read(len);
    if (hdr.readUInt32BE(8) === Opt.GO && hdr.readUInt32BE(12) === 1) return;
    if (hdr.readUInt32BE(12) >= 2 ** 31) throw new Error('negotiation failed');
  }
}

/** Reads replies until `n` requests are complete; returns cookie -> error (0 = success). */
async function completions(c: RawClient, n: number): Promise<Map<bigint, number>> {
  const done = new Map<bigint, number>();
  const errors = new Map<bigint, number>();
  while (done.size < n) {
    const magic = (await c.read(4, 20_000)).readUInt32BE(0);
    if (magic === 0x67446698) {
      const r = await c.read(12);
      const cookie = r.readBigUInt64BE(4);
      expect(done.has(cookie), `second reply for ${cookie}`).toBe(false);
      done.set(cookie, r.readUInt32BE(0));
    } else if (magic === 0x668e33ef) {
      const r = await c.read(16);
      const flags = r.readUInt16BE(0);
      const type = r.readUInt16BE(2);
      const cookie = r.readBigUInt64BE(4);
      const len = r.readUInt32BE(12);
      const payload = len ? await c.read(len, 20_000) : Buffer.alloc(0);
      expect(done.has(cookie), `chunk after the final one for ${cookie}`).toBe(false);
      if (type >= 2 ** 15) errors.set(cookie, payload.readUInt32BE(0));
      if (flags & 1) done.set(cookie, errors.get(cookie) ?? 0);
    } else {
      throw new Error(`reply stream out of sync: magic 0x${magic.toString(16)}`);
    }
  }
  return done;
}

describe('random requests', () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: 1500 random requests, each answered exactly once`, async () => {
      const rnd = prng(seed);
      const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
      const c = new RawClient(h.sock);
      await negotiateStructured(c);
      const N = 1500;
      const sent: Buffer[] = [];
      for (let i = 0; i < N; i++) {
        let type = pick([0, 0, 1, 1, 3, 4, 5, 6, 7, 7, 8, 9, 200, 65535]);
        const flags = rnd() < 0.7 ? pick([0, 1, 2, 4, 8, 16, 0x1f]) : Math.floor(rnd() * 65536);
        const offset = pick([0, 4096, Math.floor(rnd() * SIZE), SIZE - 1, SIZE, SIZE + 1, 2 ** 53, 2 ** 63, 2 ** 64 - 1]);
        let length = pick([0, 1, 512, 4096, 65536, 1 << 20, 32 << 20, (32 << 20) + 1, 2 ** 32 - 1]);
        if (type === 2) type = 3; // no DISC here
        if (type === 1) length = Math.min(length, 65536);
        sent.push(request(type, 0, length, BigInt(i), flags));
        // offsets as exact 64-bit values
        sent[sent.length - 1].writeBigUInt64BE(BigInt(offset) & 0xffffffffffffffffn, 16);
        if (type === 1) sent.push(Buffer.alloc(length, i & 0xff));
      }
      const stream = Buffer.concat(sent);
      for (let at = 0; at < stream.length;) {
        const n = 1 + Math.floor(rnd() * 100_000);
        c.write(stream.subarray(at, at + n));
        at += n;
      }
      const done = await completions(c, N);
      expect(done.size).toBe(N);
      const errnos = new Set(done.values());
      for (const e of errnos) expect([0, 1, 5, 22, 28, 75, 95, 108]).toContain(e);
      expect(errnos.has(0) && errnos.has(22)).toBe(true);
      c.destroy();
      const info = JSON.parse(await runTool('nbdinfo', ['--json', h.unixUri('disk')]));
      expect(info.exports[0]['export-size']).toBe(SIZE);
    }, 60_000);
  }
});
