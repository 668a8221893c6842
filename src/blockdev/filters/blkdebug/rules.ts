/**
 * blkdebug's rule engine (QEMU's block/blkdebug.c semantics), pure: no
 * node, no I/O. Rules hang off the event that triggers them. When an event
 * is heard, the rules for it whose state matches (0 = any) take effect: the
 * set-state rules pick the next state (the last one processed wins), and if
 * any inject-error rule matched, those become the active set, replacing the
 * previous one. Every request then asks check() whether an active rule
 * covers it; a `once` rule is gone after it fired.
 *
 * Order, as QEMU's lists give it: rules for one event are processed newest
 * first, and the active set is searched in the order the rules were added.
 */
import type { BlkdebugEvent, BlkdebugIoType } from '../../debug-events.ts';

export interface InjectErrorRule {
  event: BlkdebugEvent;
  /** 0: in any state. */
  state: number;
  /** undefined: read, write, write-zeroes, discard and flush (not block-status). */
  iotype?: BlkdebugIoType;
  /** A positive errno; 0 makes a matching request succeed untouched. */
  errno: number;
  /** Byte offset (sector * 512) a request must cover, or undefined for any. */
  offset?: number;
  once: boolean;
  immediately: boolean;
}

export interface SetStateRule {
  event: BlkdebugEvent;
  state: number;
  newState: number;
}

type Rule = ({ kind: 'inject' } & InjectErrorRule) | ({ kind: 'set-state' } & SetStateRule);

const DEFAULT_IO: ReadonlySet<BlkdebugIoType> = new Set(['read', 'write', 'write-zeroes', 'discard', 'flush']);

export interface Injection { errno: number; immediately: boolean }

export class BlkdebugRules {
  /** Per event, newest first (QLIST_INSERT_HEAD). */
  private readonly byEvent = new Map<BlkdebugEvent, Rule[]>();
  private active: InjectErrorRule[] = [];
  private stateValue = 1;

  get state(): number { return this.stateValue; }

  addInjectError(r: InjectErrorRule): void { this.add({ kind: 'inject', ...r }); }
  addSetState(r: SetStateRule): void { this.add({ kind: 'set-state', ...r }); }

  private add(r: Rule): void {
    const list = this.byEvent.get(r.event) ?? [];
    list.unshift(r);
    this.byEvent.set(r.event, list);
  }

  /** Whether any rule waits for `event` (raising an event nobody listens to is then free). */
  listens(event: BlkdebugEvent): boolean { return this.byEvent.has(event); }

  /** The event happened (QEMU's blkdebug_debug_event). */
  event(event: BlkdebugEvent): void {
    const list = this.byEvent.get(event);
    if (!list) return;
    let next = this.stateValue;
    let injects = 0;
    for (const r of list) {
      if (r.state && r.state !== this.stateValue) continue;
      if (r.kind === 'inject') {
        if (++injects === 1) this.active = [];
        this.active.unshift(r);
      } else {
        next = r.newState;
      }
    }
    this.stateValue = next;
  }

  /**
   * The error a request of `iotype` over [offset, offset+bytes) gets, or
   * undefined. A flush is (0, 0) and so matches only rules without a sector.
   */
  check(offset: number, bytes: number, iotype: BlkdebugIoType): Injection | undefined {
    const rule = this.active.find((r) =>
      (r.offset === undefined || (bytes > 0 && r.offset >= offset && r.offset < offset + bytes)) &&
      (r.iotype === undefined ? DEFAULT_IO.has(iotype) : r.iotype === iotype));
    if (!rule || !rule.errno) return undefined;
    if (rule.once) {
      this.active = this.active.filter((r) => r !== rule);
      for (const [ev, list] of this.byEvent) {
        const rest = list.filter((r) => r !== rule);
        if (rest.length) this.byEvent.set(ev, rest);
        else this.byEvent.delete(ev);
      }
    }
    return { errno: rule.errno, immediately: rule.immediately };
  }
}
