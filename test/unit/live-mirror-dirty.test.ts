/**
 * DirtyMap (the mirror's dirty map and the backup's copy map): seeded random
 * set/clear sequences checked against a plain array of granules, and
 * nextRun's runs (wrapping, length limit, short last granule).
 */
import { describe, it, expect } from 'vitest';
import { DirtyMap } from '../../src/blockdev/bitmaps/dirty-map.ts';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

describe('DirtyMap', () => {
  it('agrees with a model under random set/clear', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const r = rng(seed);
      const g = 4096;
      const len = g * 100 - 1000; // a short last granule
      const m = new DirtyMap(len, g);
      const model = new Array<boolean>(m.granules).fill(false);
      for (let i = 0; i < 500; i++) {
        const off = Math.floor(r() * len);
        const l = Math.floor(r() * Math.min(len - off, g * 8));
        const a = Math.floor(off / g);
        const b = Math.min(m.granules, Math.ceil((off + l) / g));
        if (r() < 0.6) { m.set(off, l); if (l > 0) for (let k = a; k < b; k++) model[k] = true; }
        else { m.clear(off, l); for (let k = a; k < b; k++) model[k] = false; }
        const count = model.filter(Boolean).length;
        expect(m.count).toBe(count);
        const bytes = model.reduce((acc, d, k) => acc + (d ? Math.min(len, (k + 1) * g) - k * g : 0), 0);
        expect(m.bytes).toBe(bytes);
        const p = Math.floor(r() * len);
        expect(m.get(p)).toBe(model[Math.floor(p / g)]);
      }
      // Draining by nextRun visits every dirty granule exactly once.
      let seen = 0;
      for (let run = m.nextRun(0, g * 3); run; run = m.nextRun(run.offset + run.length, g * 3)) {
        expect(run.length).toBeLessThanOrEqual(g * 3);
        expect(run.offset + run.length).toBeLessThanOrEqual(len);
        for (let o = run.offset; o < run.offset + run.length; o += g) expect(model[o / g]).toBe(true);
        seen += Math.ceil(run.length / g);
        m.clear(run.offset, run.length);
      }
      expect(seen).toBe(model.filter(Boolean).length);
      expect(m.count).toBe(0);
    }
  });

  it('nextRun wraps to the start and clips the last granule', () => {
    const m = new DirtyMap(10_000, 4096);
    m.set(0, 1);
    m.set(9_000, 1);
    expect(m.nextRun(5_000, 1 << 20)).toEqual({ offset: 8192, length: 10_000 - 8192 });
    m.clear(8192, 4096);
    expect(m.nextRun(5_000, 1 << 20)).toEqual({ offset: 0, length: 4096 });
    expect(m.any(4096, 4096)).toBe(false);
    expect(m.any(4000, 200)).toBe(true);
  });
});
