/**
 * QMP event rate limits, as QEMU's monitor applies them
 * (monitor_qapi_event_queue): an event of a limited kind goes out at once
 * unless one with the same key went out less than `ms` ago; then it is held,
 * replacing any held before it (only the latest survives, with its own
 * timestamp), and sent when the period ends, which starts a new period.
 * A period in which nothing was held ends the limit for that key.
 */
import type { QmpEvent } from './events.ts';

interface Limit {
  ms: number;
  /** Events with different keys are limited apart (QEMU's qapi_event_throttle_equal). */
  key?: (data: Record<string, unknown> | undefined) => string;
}

/** QEMU's monitor_qapi_event_conf for the events blockd raises (not the guest-device ones, which it never raises). */
const LIMITS: Record<string, Limit> = {
  QUORUM_REPORT_BAD: { ms: 1000, key: (d) => String(d?.['node-name']) },
  QUORUM_FAILURE: { ms: 1000 },
};

interface Period { held?: QmpEvent; timer: NodeJS.Timeout }

export class EventThrottle {
  private readonly periods = new Map<string, Period>();

  constructor(private readonly send: (e: QmpEvent) => void) {}

  push(e: QmpEvent): void {
    const limit = LIMITS[e.event];
    if (!limit) return this.send(e);
    const id = `${e.event}\0${limit.key?.(e.data) ?? ''}`;
    const period = this.periods.get(id);
    if (period) {
      period.held = e;
      return;
    }
    this.send(e);
    this.startPeriod(id, limit.ms);
  }

  private startPeriod(id: string, ms: number): void {
    const p: Period = {
      timer: setTimeout(() => {
        const held = p.held;
        this.periods.delete(id);
        if (!held) return;
        this.send(held);
        this.startPeriod(id, ms);
      }, ms),
    };
    p.timer.unref();
    this.periods.set(id, p);
  }

  /** Drops held events and timers (the daemon is going away). */
  close(): void {
    for (const p of this.periods.values()) clearTimeout(p.timer);
    this.periods.clear();
  }
}
