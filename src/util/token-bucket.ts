/**
 * A token bucket for a job's `speed` (bytes per second). Pure: the caller
 * passes the time, so it is tested without clocks or timers.
 *
 * Work is charged after it is done (take), possibly driving the bucket into
 * debt; the caller then waits delay() milliseconds before the next unit.
 * Tokens refill continuously at `rate` up to `capacity` (the burst allowed
 * after an idle period; by default a tenth of a second's worth, the slice
 * QEMU's rate limiter uses). Rate 0 means unlimited.
 */
export const DEFAULT_BURST_SECONDS = 0.1;

export class TokenBucket {
  private tokens: number;
  private last: number;
  private rateBps: number;
  private cap: number;

  constructor(rate: number, now: number, private readonly burstSeconds = DEFAULT_BURST_SECONDS) {
    this.rateBps = checkRate(rate);
    this.cap = this.capacityFor(this.rateBps);
    this.tokens = this.cap;
    this.last = now;
  }

  get rate(): number { return this.rateBps; }
  get capacity(): number { return this.cap; }

  /** Tokens available at `now` (negative while in debt). */
  level(now: number): number {
    this.refill(now);
    return this.tokens;
  }

  /** Changes the rate; accumulated debt is kept, accumulated credit is capped at the new capacity. */
  setRate(rate: number, now: number): void {
    this.refill(now);
    this.rateBps = checkRate(rate);
    this.cap = this.capacityFor(this.rateBps);
    if (this.rateBps === 0) this.tokens = 0;
    else this.tokens = Math.min(this.tokens, this.cap);
  }

  /** Charges `n` tokens for work just done. */
  take(n: number, now: number): void {
    if (!(n >= 0)) throw new RangeError(`token count must be non-negative, got ${n}`);
    this.refill(now);
    if (this.rateBps === 0) return;
    this.tokens -= n;
  }

  /** Milliseconds to wait at `now` until the bucket is out of debt; 0 if it is not in debt (or unlimited). */
  delay(now: number): number {
    this.refill(now);
    if (this.rateBps === 0 || this.tokens >= 0) return 0;
    return Math.ceil((-this.tokens / this.rateBps) * 1000);
  }

  private refill(now: number): void {
    const dt = Math.max(0, now - this.last);
    this.last = Math.max(this.last, now);
    if (this.rateBps === 0) return;
    this.tokens = Math.min(this.cap, this.tokens + (dt * this.rateBps) / 1000);
  }

  private capacityFor(rate: number): number {
    // At least one token, so a tiny rate still lets work through one unit at a time.
    return rate === 0 ? 0 : Math.max(1, rate * this.burstSeconds);
  }
}

function checkRate(rate: number): number {
  if (!Number.isFinite(rate) || rate < 0) throw new RangeError(`rate must be a non-negative number, got ${rate}`);
  return rate;
}
