/**
 * What an export's clients asked for, counted where the server runs each
 * request (whatever node it lands on, and also what a node never sees:
 * block-status and cache requests, requests refused as invalid). Plain
 * fields and fixed arrays indexed by ExportOp: a request costs a few
 * increments and two clock reads, nothing allocated. The metrics endpoint
 * reads them.
 */
import { LatencyHistogram, nowNs } from '../util/stats/latency-histogram.ts';

/** Request kinds, as any export type's protocol maps its commands onto them. */
export const ExportOp = { READ: 0, WRITE: 1, WRITE_ZEROES: 2, TRIM: 3, FLUSH: 4, BLOCK_STATUS: 5, CACHE: 6 } as const;
export type ExportOpIndex = (typeof ExportOp)[keyof typeof ExportOp];
/** Label values, by ExportOp index. */
export const EXPORT_OP_NAMES = ['read', 'write', 'write_zeroes', 'trim', 'flush', 'block_status', 'cache'] as const;
const N = EXPORT_OP_NAMES.length;

export class ExportIoStats {
  /** Requests that ended (successfully or not), by kind. */
  readonly ops = new Float64Array(N);
  /** Bytes of the requests that ended successfully (read, write, write-zeroes, trim), by kind. */
  readonly bytes = new Float64Array(N);
  /** Requests that ran and failed, by kind. */
  readonly errors = new Float64Array(N);
  /** Requests refused before they ran (out of range, not allowed, malformed), by kind. */
  readonly invalid = new Float64Array(N);
  readonly latency: readonly LatencyHistogram[] = Array.from({ length: N }, () => new LatencyHistogram());
  /** Requests running now. */
  inFlight = 0;

  /** A request starts; returns its start time for ended(). */
  started(): number {
    this.inFlight++;
    return nowNs();
  }

  ended(op: ExportOpIndex, length: number, t0: number, failed: boolean): void {
    this.inFlight--;
    this.latency[op].record(nowNs() - t0);
    this.ops[op]++;
    if (failed) this.errors[op]++;
    else if (op <= ExportOp.TRIM) this.bytes[op] += length;
  }

  refused(op: ExportOpIndex): void {
    this.invalid[op]++;
  }
}
