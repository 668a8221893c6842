/**
 * A throttle group: one ThrottleState shared by its members (the throttle
 * filter nodes that name the group), scheduled as QEMU's
 * block/throttle-groups.c does.
 *
 * - Each member queues its waiting requests FIFO, per direction.
 * - Per direction, at most one timer is armed in the whole group
 *   (`timerArmed`); while it is, every new request of that direction queues.
 * - When a request may run, the next one to run is chosen round-robin among
 *   the members with queued requests (`token`), so members that compete share
 *   the budget evenly, whatever their queue depths.
 * - A member being drained (`disable()`) skips the limits: its queued
 *   requests are let through at once, one after the other, and new ones do
 *   not wait. A drain must never wait on the throttle.
 *
 * The clock is injected, so the scheduling is tested with a fake one.
 */
import { ThrottleState, type Direction } from './leaky-bucket.ts';
import type { ThrottleConfig } from './config.ts';

export interface ThrottleClock {
  /** Milliseconds, monotonic. */
  now(): number;
  /** Calls `cb` after `ms` (0: on the next turn of the event loop). */
  setTimer(ms: number, cb: () => void): unknown;
  clearTimer(handle: unknown): void;
}

export const realClock: ThrottleClock = {
  now: () => performance.now(),
  setTimer: (ms, cb) => (ms <= 0 ? setImmediate(cb) : setTimeout(cb, Math.ceil(ms))),
  clearTimer: (h) => {
    clearTimeout(h as NodeJS.Timeout);
    clearImmediate(h as NodeJS.Immediate);
  },
};

const DIRECTIONS: readonly Direction[] = ['read', 'write'];

export class ThrottleGroup {
  readonly state: ThrottleState;
  /** Members, most recently joined first (QEMU inserts at the list head); the round-robin walks this ring. */
  readonly members: ThrottleMember[] = [];
  private readonly token: Record<Direction, ThrottleMember | undefined> = { read: undefined, write: undefined };
  private readonly timerArmed: Record<Direction, boolean> = { read: false, write: false };

  constructor(cfg: ThrottleConfig, readonly clock: ThrottleClock = realClock) {
    this.state = new ThrottleState(cfg, clock.now());
  }

  /** A new member (a throttle node opened on this group). */
  join(): ThrottleMember {
    const m = new ThrottleMember(this);
    this.members.unshift(m);
    for (const d of DIRECTIONS) this.token[d] ??= m;
    return m;
  }

  /**
   * New limits (qom-set of `limits`): the buckets start empty, and requests
   * already waiting are timed again under the new limits rather than at the
   * old ones' pace.
   */
  configure(cfg: ThrottleConfig): void {
    this.state.configure(cfg, this.clock.now());
    for (const m of [...this.members]) m.restart();
  }

  /** @internal */ leave(m: ThrottleMember): void {
    const i = this.members.indexOf(m);
    if (i < 0) return;
    for (const d of DIRECTIONS) {
      if (m.cancelTimer(d)) {
        // Its timer was the group's one for this direction: pass the turn on.
        this.timerArmed[d] = false;
        this.scheduleNext(m, d);
      }
      if (this.token[d] === m) {
        const next = this.after(m);
        this.token[d] = next === m ? undefined : next;
      }
    }
    this.members.splice(i, 1);
  }

  /** @internal QEMU's throttle_group_co_io_limits_intercept: undefined if the request may run now. */
  intercept(m: ThrottleMember, bytes: number, dir: Direction): Promise<void> | undefined {
    const token = this.nextToken(m, dir);
    const mustWait = this.scheduleTimer(token, dir);
    if (mustWait || m.pending[dir] > 0) {
      m.pending[dir]++;
      return new Promise<void>((resolve) => m.queues[dir].push(resolve)).then(() => {
        m.pending[dir]--;
        this.run(m, bytes, dir);
      });
    }
    this.run(m, bytes, dir);
    return undefined;
  }

  /** @internal A member's timer fired (or was fired early by a drain or a new configuration). */
  timerFired(m: ThrottleMember, dir: Direction): void {
    this.timerArmed[dir] = false;
    this.restartQueue(m, dir);
  }

  /** @internal Lets the member's next queued request run; if it has none, picks the next member's. */
  restartQueue(m: ThrottleMember, dir: Direction): void {
    if (!m.wakeNext(dir)) this.scheduleNext(m, dir);
  }

  private run(m: ThrottleMember, bytes: number, dir: Direction): void {
    this.state.account(dir, bytes);
    this.scheduleNext(m, dir, true);
  }

  /** The member whose request runs next: round-robin from the current token over members with queued requests. */
  private nextToken(m: ThrottleMember, dir: Direction): ThrottleMember {
    if (m.pending[dir] > 0 && m.disabled) return m;
    const start = this.token[dir] ?? m;
    let token = this.after(start);
    while (token !== start && token.pending[dir] === 0) token = this.after(token);
    if (token === start && token.pending[dir] === 0) token = m;
    return token;
  }

  /** Whether `m`'s next request must wait; arms the group's timer for it if so. */
  private scheduleTimer(m: ThrottleMember, dir: Direction): boolean {
    if (m.disabled) return false;
    if (this.timerArmed[dir]) return true;
    const wait = this.state.wait(dir, this.clock.now());
    if (wait <= 0) return false;
    m.armTimer(dir, wait);
    this.token[dir] = m;
    this.timerArmed[dir] = true;
    return true;
  }

  /** After a request of `m` ran: start the next queued one of the group, now or when the limits allow. */
  private scheduleNext(m: ThrottleMember, dir: Direction, fromRequest = false): void {
    let token = this.nextToken(m, dir);
    if (token.pending[dir] === 0) return;
    if (this.scheduleTimer(token, dir)) return;
    // It may run now. Requests of the member that just ran go first (QEMU's
    // preference for the current coroutine's queue); otherwise the chosen
    // member is kicked on the next turn of the loop.
    if (fromRequest && m.wakeNext(dir)) {
      token = m;
    } else {
      token.armTimer(dir, 0);
      this.timerArmed[dir] = true;
    }
    this.token[dir] = token;
  }

  private after(m: ThrottleMember): ThrottleMember {
    const i = this.members.indexOf(m);
    return this.members[(i + 1) % this.members.length] ?? m;
  }
}

export class ThrottleMember {
  /** @internal Queued requests per direction, FIFO (their wake-ups). */
  readonly queues: Record<Direction, Array<() => void>> = { read: [], write: [] };
  /**
   * @internal Requests queued or woken but not yet run (QEMU's pending_reqs):
   * a woken request runs a microtask later, and until it has, newer requests
   * of the member still queue behind it.
   */
  readonly pending: Record<Direction, number> = { read: 0, write: 0 };
  private readonly timers: Record<Direction, unknown> = { read: undefined, write: undefined };
  private disableCount = 0;
  private left = false;

  constructor(readonly group: ThrottleGroup) {}

  /** True while drained: limits do not apply. */
  get disabled(): boolean { return this.disableCount > 0; }

  /** Requests waiting in `dir`. */
  queued(dir: Direction): number { return this.pending[dir]; }

  /**
   * Call before a request of `bytes` in `dir` starts: undefined if it may
   * start now (and it is charged), else a promise that resolves when it may
   * (charged then). Flushes are not throttled and never come here.
   */
  intercept(bytes: number, dir: Direction): Promise<void> | undefined {
    return this.group.intercept(this, bytes, dir);
  }

  /** Drain begin (nested): queued requests are let through at once; new ones do not wait. */
  disable(): void {
    if (this.disableCount++ === 0) this.restart();
  }

  /** Drain end. */
  enable(): void {
    if (this.disableCount === 0) throw new Error('assertion failed: throttle member enabled more often than disabled');
    this.disableCount--;
  }

  /** Leaves the group (the node closes or moves to another group). The member must have nothing queued. */
  leave(): void {
    if (this.left) return;
    if (this.pending.read + this.pending.write > 0) throw new Error('assertion failed: throttle member left with queued requests');
    this.left = true;
    this.group.leave(this);
  }

  /**
   * Leaves this group and joins `other` (blockdev-reopen naming another
   * group, with the node drained): the new member keeps the drain state.
   */
  moveTo(other: ThrottleGroup): ThrottleMember {
    if (other === this.group) return this;
    this.leave();
    const m = other.join();
    m.disableCount = this.disableCount;
    return m;
  }

  /** @internal QEMU's throttle_group_restart_tgm: fire a pending timer now, else run the next queued request. */
  restart(): void {
    for (const d of DIRECTIONS) {
      if (this.cancelTimer(d)) this.group.timerFired(this, d);
      else this.group.restartQueue(this, d);
    }
  }

  /** @internal */ armTimer(dir: Direction, ms: number): void {
    if (this.timers[dir] !== undefined) return;
    const clock = this.group.clock;
    this.timers[dir] = clock.setTimer(ms, () => {
      this.timers[dir] = undefined;
      this.group.timerFired(this, dir);
    });
  }

  /** @internal Cancels this member's timer for `dir`; true if one was armed. */
  cancelTimer(dir: Direction): boolean {
    const t = this.timers[dir];
    if (t === undefined) return false;
    this.group.clock.clearTimer(t);
    this.timers[dir] = undefined;
    return true;
  }

  /** @internal Lets the oldest queued request of `dir` run; false if none is queued. */
  wakeNext(dir: Direction): boolean {
    const next = this.queues[dir].shift();
    if (!next) return false;
    next();
    return true;
  }
}
