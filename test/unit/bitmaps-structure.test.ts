/**
 * The dirty bitmap structure alone: seeded random operation sequences checked
 * against a plain bit-per-granule model, serialisation round trips, merges
 * across granularities, and the speed of walking a huge sparse bitmap.
 */
import { describe, it, expect } from 'vitest';
import { SparseBitmap, PAGE_BITS } from '../../src/blockdev/bitmaps/sparse-bitmap.ts';
import { DirtyBitmap, checkGranularity } from '../../src/blockdev/bitmaps/dirty-bitmap.ts';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function modelRuns(m: Uint8Array, from: number, to: number): [number, number][] {
  const out: [number, number][] = [];
  let i = from;
  while (i < to) {
    if (!m[i]) { i++; continue; }
    const s = i;
    while (i < to && m[i]) i++;
    out.push([s, i]);
  }
  return out;
}

describe('SparseBitmap against a plain model', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    it(`seed ${seed}`, () => {
      const r = rng(seed);
      const size = Math.floor(r() * 5 * PAGE_BITS) + 1;
      const bm = new SparseBitmap(size);
      const m = new Uint8Array(size);
      for (let step = 0; step < 400; step++) {
        const big = r() < 0.2;
        const a = Math.floor(r() * size);
        const len = Math.floor(r() * (big ? size : 100)) + 1;
        const b = Math.min(size, a + len);
        const op = r();
        if (op < 0.55) { bm.set(a, b); m.fill(1, a, b); }
        else if (op < 0.95) { bm.reset(a, b); m.fill(0, a, b); }
        else if (op < 0.97) { bm.clear(); m.fill(0); }
        else {
          const o = new SparseBitmap(size);
          const c = Math.floor(r() * size);
          o.set(c, Math.min(size, c + 5000));
          bm.or(o);
          m.fill(1, c, Math.min(size, c + 5000));
        }
        if (step % 20 === 0 || step === 399) {
          expect(bm.count()).toBe(m.reduce((x, y) => x + y, 0));
          const runs: [number, number][] = [];
          bm.forEachRun((s, e) => runs.push([s, e]));
          expect(runs).toEqual(modelRuns(m, 0, size));
          const q = Math.floor(r() * size);
          const q2 = Math.min(size, q + Math.floor(r() * 70000));
          const sub: [number, number][] = [];
          bm.forEachRun((s, e) => sub.push([s, e]), q, q2);
          expect(sub).toEqual(modelRuns(m, q, q2));
          for (let k = 0; k < 20; k++) {
            const i = Math.floor(r() * size);
            expect(bm.get(i)).toBe(m[i] === 1);
          }
          // Serialisation round trip from a 32-aligned start.
          const st = Math.floor(q / 32) * 32;
          const bytes = bm.toBytes(st, size - st);
          for (let i = st; i < Math.min(size, st + 3000); i++) expect((bytes[(i - st) >> 3]! >> ((i - st) & 7)) & 1).toBe(m[i]);
          const back = new SparseBitmap(size);
          back.orBytes(st, bytes);
          const expect2: [number, number][] = [];
          back.forEachRun((s, e) => expect2.push([s, e]));
          expect(expect2).toEqual(modelRuns(m, st, size));
          expect(bm.clone().equals(bm)).toBe(true);
        }
      }
    });
  }

  it('full pages hold no words and clear back to nothing', () => {
    const bm = new SparseBitmap(10 * PAGE_BITS);
    bm.set(0, 10 * PAGE_BITS);
    expect(bm.count()).toBe(10 * PAGE_BITS);
    expect(bm.nextClear(0)).toBe(10 * PAGE_BITS);
    bm.reset(5, 6);
    expect(bm.nextClear(0)).toBe(5);
    expect(bm.nextSet(5)).toBe(6);
    bm.reset(0, 10 * PAGE_BITS);
    expect(bm.count()).toBe(0);
    expect(bm.pageCount()).toBe(0);
  });
});

describe('DirtyBitmap', () => {
  it('granularity is a power of two from 512 B to 2 GiB', () => {
    for (const g of [512, 4096, 65536, 2 ** 31]) expect(() => checkGranularity(g)).not.toThrow();
    for (const g of [0, 256, 511, 1000, 3 * 512, 2 ** 32]) expect(() => checkGranularity(g)).toThrow('Granularity must be power of 2 and at least 512');
  });

  it('marks whole granules and counts them in bytes, the last one whole', () => {
    const bm = new DirtyBitmap('b', 65536, 1024 * 1024 + 512);
    bm.mark(1024 * 1024, 512);
    expect(bm.count()).toBe(65536);
    bm.mark(100, 1);
    expect(bm.count()).toBe(131072);
    expect(bm.runs(0, 1024 * 1024 + 512)).toEqual([
      { length: 65536, dirty: true }, { length: 1024 * 1024 - 65536, dirty: false }, { length: 512, dirty: true },
    ]);
    // Runs start where asked, even inside a granule.
    expect(bm.runs(1000, 70000)).toEqual([{ length: 64536, dirty: true }, { length: 70000 - 64536, dirty: false }]);
  });

  it('merges across granularities', () => {
    const fine = new DirtyBitmap('f', 512, 1 << 20);
    const coarse = new DirtyBitmap('c', 65536, 1 << 20);
    fine.mark(70000, 10);
    coarse.merge(fine);
    expect([...coarse.extents()]).toEqual([[65536, 131072]]);
    fine.merge(coarse);
    expect([...fine.extents()]).toEqual([[65536, 131072]]);
  });

  it('a 1 TiB disk with 10,000 dirty extents answers block status over the whole disk in work proportional to its runs', () => {
    // Counted, not timed (the machine may be loaded): the runs answered are bounded by the dirty
    // intervals and the requests, and the pages kept by the intervals' pages, so the walk never
    // touches clean space bit by bit (an O(size) walk over 2^31 bits would also miss the generous time cap).
    const TiB = 2 ** 40;
    for (const g of [512, 65536]) {
      const bm = new DirtyBitmap('big', g, TiB);
      const r = rng(42);
      const marks: [number, number][] = [];
      for (let i = 0; i < 10000; i++) {
        const off = Math.floor(r() * (TiB - 1e6));
        const len = 1 + Math.floor(r() * 200000);
        bm.mark(off, len);
        marks.push([Math.floor(off / g) * g, Math.ceil((off + len) / g) * g]);
      }
      // The model: the marked ranges rounded to granules, merged.
      marks.sort((a, b) => a[0] - b[0]);
      const merged: [number, number][] = [];
      for (const [s0, e0] of marks) {
        const last = merged[merged.length - 1];
        if (last && s0 <= last[1]) last[1] = Math.max(last[1], e0); else merged.push([s0, e0]);
      }
      const modelDirty = merged.reduce((n, [s0, e0]) => n + e0 - s0, 0);
      const t0 = performance.now();
      // As NBD asks: requests of at most 4 GiB - 1, each answered with runs.
      let dirty = 0;
      let extents = 0;
      let requests = 0;
      const step = 2 ** 32 - g;
      for (let off = 0; off < TiB; off += step) {
        let pos = off;
        const end = Math.min(TiB, off + step);
        requests++;
        while (pos < end) {
          for (const run of bm.runs(pos, end - pos)) { pos += run.length; extents++; if (run.dirty) dirty += run.length; }
        }
      }
      const ms = performance.now() - t0;
      expect(dirty).toBe(modelDirty);
      expect(extents).toBeGreaterThan(merged.length);
      expect(extents).toBeLessThanOrEqual(2 * merged.length + 2 * requests);
      expect(ms).toBeLessThan(20_000);
      console.log(`granularity ${g}: whole 1 TiB walked in ${ms.toFixed(1)} ms, ${extents} runs, ${bm.bits.pageCount()} pages`);
    }
  });
});
