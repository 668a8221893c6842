import { describe, expect, it } from 'vitest';
import { BOUNDED_BUCKETS, LatencyHistogram, quantileNs } from '../../src/util/stats/latency-histogram.ts';

describe('LatencyHistogram', () => {
  it('puts a duration in the bucket (2^(i-1), 2^i] µs, everything past 2^24 µs in the last', () => {
    const cases: [number, number][] = [[0, 0], [999, 0], [1000, 0], [1001, 1], [2000, 1], [2001, 2], [4000, 2], [1e6, 10], [1_048_576_000, 20],
      [2 ** 24 * 1000, 24], [2 ** 24 * 1000 + 1, 25], [1e12, 25]];
    for (const [ns, bucket] of cases) {
      const h = new LatencyHistogram();
      h.record(ns);
      expect([ns, [...h.counts].indexOf(1)]).toEqual([ns, bucket]);
      expect(h.sumNs).toBe(ns);
    }
  });

  it('lists QEMU-style boundaries (one fewer than bins) and counts since a snapshot', () => {
    const h = new LatencyHistogram();
    expect(LatencyHistogram.boundariesNs()).toHaveLength(BOUNDED_BUCKETS);
    expect(h.counts).toHaveLength(BOUNDED_BUCKETS + 1);
    h.record(1500);
    const before = Float64Array.from(h.counts);
    h.record(1500);
    h.record(3000);
    expect(h.since(before).slice(0, 3)).toEqual([0, 1, 1]);
    expect(h.count).toBe(3);
  });

  it('quantiles interpolate within the bucket, as histogram_quantile', () => {
    const h = new LatencyHistogram();
    for (let i = 0; i < 50; i++) h.record(1500); // (1, 2] µs
    for (let i = 0; i < 50; i++) h.record(3000); // (2, 4] µs
    expect(quantileNs(h.counts, 0.5)).toBe(2000);
    expect(quantileNs(h.counts, 0.75)).toBe(3000);
    expect(quantileNs(h.counts, 1)).toBe(4000);
    expect(quantileNs(new LatencyHistogram().counts, 0.5)).toBeUndefined();
    const slow = new LatencyHistogram();
    slow.record(1e12);
    expect(quantileNs(slow.counts, 0.99)).toBe(2 ** 24 * 1000);
  });
});
