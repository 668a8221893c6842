/**
 * A latency histogram that costs a few integer operations per request and
 * never allocates: bucket i counts durations in (2^(i-1), 2^i] microseconds
 * (bucket 0: up to 1 µs), the last bucket everything above 2^(BUCKETS-2) µs.
 * Readers (query-blockstats, the metrics endpoint) turn the counts into
 * QEMU's BlockLatencyHistogramInfo or Prometheus buckets at query time.
 */

/** Buckets with an upper bound: 1 µs .. 2^24 µs (about 16.8 s); one more for the rest. */
export const BOUNDED_BUCKETS = 25;
const BUCKETS = BOUNDED_BUCKETS + 1;

/** Monotonic clock in nanoseconds, as a double (performance.now() allocates nothing). */
export function nowNs(): number {
  return performance.now() * 1e6;
}

export class LatencyHistogram {
  /** counts[i]: requests whose duration fell into bucket i (not cumulative). */
  readonly counts = new Float64Array(BUCKETS);
  /** Sum of the durations recorded, in ns. */
  sumNs = 0;

  record(ns: number): void {
    this.sumNs += ns;
    const us = Math.ceil(ns / 1000);
    // ceil(log2(us)) for us >= 2; 0 for us <= 1.
    const i = us <= 1 ? 0 : 32 - Math.clz32(us - 1);
    this.counts[i < BUCKETS ? i : BUCKETS - 1]++;
  }

  get count(): number {
    let n = 0;
    for (let i = 0; i < BUCKETS; i++) n += this.counts[i];
    return n;
  }

  /** Upper bound of bucket i in ns (Infinity for the last). */
  static upperNs(i: number): number {
    return i >= BOUNDED_BUCKETS ? Infinity : 1000 * 2 ** i;
  }

  /** The bucket upper bounds in ns, without the unbounded last one. */
  static boundariesNs(): number[] {
    return Array.from({ length: BOUNDED_BUCKETS }, (_, i) => LatencyHistogram.upperNs(i));
  }

  /** Counts recorded since `before` (an earlier snapshot of `counts`), bucket by bucket. */
  since(before: ArrayLike<number> | undefined): number[] {
    return Array.from(this.counts, (c, i) => c - (before?.[i] ?? 0));
  }
}

/**
 * The q-quantile (0..1) of bucketed counts, as Prometheus' histogram_quantile:
 * linear within the bucket that holds it; the last bounded bound if it falls
 * in the unbounded bucket; undefined without any count.
 */
export function quantileNs(counts: ArrayLike<number>, q: number): number | undefined {
  let total = 0;
  for (let i = 0; i < counts.length; i++) total += counts[i];
  if (total <= 0) return undefined;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    const c = counts[i];
    if (c > 0 && seen + c >= rank) {
      const upper = LatencyHistogram.upperNs(i);
      if (upper === Infinity) return LatencyHistogram.upperNs(BOUNDED_BUCKETS - 1);
      const lower = i === 0 ? 0 : LatencyHistogram.upperNs(i - 1);
      return lower + (upper - lower) * ((rank - seen) / c);
    }
    seen += c;
  }
  return LatencyHistogram.upperNs(BOUNDED_BUCKETS - 1);
}
