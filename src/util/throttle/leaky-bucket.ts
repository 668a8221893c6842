/**
 * QEMU's throttling algorithm (util/throttle.c, docs/throttle.txt): one
 * leaky bucket per limit, "leaky bucket as a meter". Pure: the caller passes
 * the time (milliseconds, any origin) and arms its own timers.
 *
 * - Each request that runs pours its cost into the buckets it touches: its
 *   bytes into bps-total and bps-<direction>, its operation count (1, or
 *   bytes / iops-size for a request larger than iops-size) into iops-total
 *   and iops-<direction>.
 * - Every bucket leaks at its average rate. A bucket with a burst rate also
 *   has a burst level (only when the burst length is above one second) that
 *   leaks at the burst rate, so bursts run at `max`, not faster.
 * - A bucket holds `avg / 10` (no burst rate: a tenth of a second of slack so
 *   small bursts are not throttled request by request) or `max × length`
 *   (with a burst rate); its burst level holds `max / 10`. A request may
 *   start while every bucket of its direction is within its size; otherwise
 *   it waits until the fullest one has leaked back to its size. The wait is
 *   the largest over the buckets.
 *
 * Requests are charged when they start, not checked against their own cost:
 * a bucket may run over by one request, which the next wait pays back.
 */
import { BUCKETS, emptyConfig, cloneConfig, type BucketName, type ThrottleConfig } from './config.ts';

export type Direction = 'read' | 'write';

/** The buckets a request of each direction is checked against and charged to. */
const CHECKED: Record<Direction, readonly BucketName[]> = {
  read: ['bps-total', 'iops-total', 'bps-read', 'iops-read'],
  write: ['bps-total', 'iops-total', 'bps-write', 'iops-write'],
};

interface Level { level: number; burst: number }

export class ThrottleState {
  private cfg: ThrottleConfig;
  private readonly levels = {} as Record<BucketName, Level>;
  private previousLeak: number;

  constructor(cfg: ThrottleConfig = emptyConfig(), now = 0) {
    this.cfg = cloneConfig(cfg);
    for (const b of BUCKETS) this.levels[b] = { level: 0, burst: 0 };
    this.previousLeak = now;
  }

  /** A copy of the current limits. */
  get config(): ThrottleConfig { return cloneConfig(this.cfg); }

  /** throttle_config(): new limits, every bucket emptied. `cfg` must be valid (validateConfig). */
  configure(cfg: ThrottleConfig, now: number): void {
    this.cfg = cloneConfig(cfg);
    for (const b of BUCKETS) this.levels[b] = { level: 0, burst: 0 };
    this.previousLeak = now;
  }

  /** The fill of bucket `b` (and of its burst level) as of the last leak; for tests and diagnostics. */
  level(b: BucketName): Level { return { ...this.levels[b] }; }

  /**
   * Milliseconds a request of `dir` must wait at `now` before it may start;
   * 0 if it may start now. Leaks the buckets first.
   */
  wait(dir: Direction, now: number): number {
    this.leak(now);
    let wait = 0;
    for (const b of CHECKED[dir]) wait = Math.max(wait, this.bucketWait(b));
    return wait;
  }

  /** Charges a request of `bytes` in `dir` that is starting (throttle_account). */
  account(dir: Direction, bytes: number): void {
    const op = this.cfg.opSize;
    // A negative iops-size is QEMU's huge uint64: no request is larger.
    const units = op > 0 && bytes > op ? bytes / op : 1;
    for (const b of CHECKED[dir]) this.pour(b, b.startsWith('bps') ? bytes : units);
  }

  private pour(b: BucketName, amount: number): void {
    const l = this.levels[b];
    l.level += amount;
    if (this.cfg.buckets[b].burstLength > 1) l.burst += amount;
  }

  private leak(now: number): void {
    const dt = now - this.previousLeak;
    this.previousLeak = now;
    if (dt <= 0) return;
    for (const b of BUCKETS) {
      const { avg, max, burstLength } = this.cfg.buckets[b];
      const l = this.levels[b];
      l.level = Math.max(l.level - (avg * dt) / 1000, 0);
      if (burstLength > 1) l.burst = Math.max(l.burst - (max * dt) / 1000, 0);
    }
  }

  private bucketWait(b: BucketName): number {
    const { avg, max, burstLength } = this.cfg.buckets[b];
    if (avg === 0) return 0;
    const l = this.levels[b];
    const size = max === 0 ? avg / 10 : max * burstLength;
    const extra = l.level - size;
    if (extra > 0) return (extra * 1000) / avg;
    if (burstLength > 1) {
      const burstExtra = l.burst - max / 10;
      if (burstExtra > 0) return (burstExtra * 1000) / max;
    }
    return 0;
  }
}
