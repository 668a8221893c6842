/**
 * QMP events: one bus per daemon. Anything (exports, jobs) emits through it;
 * every QMP monitor subscribes and broadcasts to its negotiated clients.
 * The kinds QEMU rate-limits (QUORUM_*) pass through its limits
 * (event-throttle.ts) first.
 */
import { EventThrottle } from './event-throttle.ts';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export type EventListener = (e: QmpEvent) => void;

/** Wall-clock time with microseconds, as QEMU stamps events. */
export function eventTimestamp(): { seconds: number; microseconds: number } {
  const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}

export class QmpEventBus {
  private readonly listeners = new Set<EventListener>();

  /** Returns the function that unsubscribes. */
  subscribe(fn: EventListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private readonly throttle = new EventThrottle((e) => { for (const fn of [...this.listeners]) fn(e); });

  emit(event: string, data?: Record<string, unknown>): void {
    this.throttle.push({ timestamp: eventTimestamp(), event, data });
  }
}
