/**
 * Statistics counted in an iothread, carried to the main loop's objects
 * that query-blockstats and the metrics endpoint read. A stats object
 * (NodeStats, ExportIoStats) is flattened into numbers in a fixed order
 * (its own fields: numbers, Float64Arrays, latency histograms); the
 * iothread sends what changed since its last report, and the main loop
 * adds that to its copy. Two fields are not sums: a time (lastAccessNs),
 * where the later one wins, moved onto the main thread's clock (each
 * thread's performance.now() counts from its own start), and a high-water
 * mark (wrHighestOffset), where the higher one does; both travel as they are.
 */
import { LatencyHistogram } from '../util/stats/latency-histogram.ts';

const TIME_FIELDS: ReadonlySet<string> = new Set(['lastAccessNs']);
const MAX_FIELDS: ReadonlySet<string> = new Set(['wrHighestOffset']);

/** The object's counters, in field order. */
export function flatten(o: object, out: number[] = []): number[] {
  for (const v of Object.values(o)) {
    if (typeof v === 'number') out.push(v);
    else if (v instanceof Float64Array) for (const x of v) out.push(x);
    else if (v instanceof LatencyHistogram) {
      out.push(v.sumNs);
      for (const x of v.counts) out.push(x);
    } else if (Array.isArray(v) && v.every((h) => h instanceof LatencyHistogram)) {
      for (const h of v as LatencyHistogram[]) flatten({ h }, out);
    }
  }
  return out;
}

/** `cur` minus `prev` (an earlier flatten of the same object; missing: all zero), times and high-water marks as they are. */
export function delta(cur: readonly number[], prev: readonly number[] | undefined, o: object): number[] {
  const asIs = absoluteSlots(o);
  return cur.map((v, i) => (asIs.has(i) || !prev ? v : v - prev[i]!));
}

/** Adds a delta (of an object of the same class) into `o`; `clockShiftNs` moves its times onto this thread's clock. */
export function addDelta(o: object, d: readonly number[], clockShiftNs: number): void {
  let i = 0;
  const rec = o as Record<string, unknown>;
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === 'number') {
      if (TIME_FIELDS.has(k)) {
        const t = d[i++]!;
        if (t > 0) rec[k] = Math.max(v, t + clockShiftNs);
      } else if (MAX_FIELDS.has(k)) {
        rec[k] = Math.max(v, d[i++]!);
      } else {
        rec[k] = v + d[i++]!;
      }
    } else if (v instanceof Float64Array) {
      for (let j = 0; j < v.length; j++) v[j]! += d[i++]!;
    } else if (v instanceof LatencyHistogram) {
      i = addHistogram(v, d, i);
    } else if (Array.isArray(v) && v.every((h) => h instanceof LatencyHistogram)) {
      for (const h of v as LatencyHistogram[]) i = addHistogram(h, d, i);
    }
  }
  if (i !== d.length) throw new Error(`assertion failed: a stats delta of ${d.length} numbers for an object of ${i}`);
}

function addHistogram(h: LatencyHistogram, d: readonly number[], i: number): number {
  h.sumNs += d[i++]!;
  for (let j = 0; j < h.counts.length; j++) h.counts[j]! += d[i++]!;
  return i;
}

/** The positions of the fields sent as they are (times, high-water marks) in the flattened form. */
function absoluteSlots(o: object): Set<number> {
  const slots = new Set<number>();
  let i = 0;
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === 'number') {
      if (TIME_FIELDS.has(k) || MAX_FIELDS.has(k)) slots.add(i);
      i++;
    } else if (v instanceof Float64Array) i += v.length;
    else if (v instanceof LatencyHistogram) i += 1 + v.counts.length;
    else if (Array.isArray(v) && v.every((h) => h instanceof LatencyHistogram)) {
      for (const h of v as LatencyHistogram[]) i += 1 + h.counts.length;
    }
  }
  return slots;
}
