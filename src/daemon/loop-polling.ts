/**
 * Adaptive polling of the main event loop (native/src/loop_poll.c): before
 * the loop sleeps it busy-waits a short, self-adjusting window for the next
 * event, as QEMU's IOThreads do with poll-max-ns, poll-grow and poll-shrink.
 * qsd's main loop does not poll; blockd's does, because on a virtual machine
 * the sleep and wake-up between a reply and the next request was most of a
 * queue-depth-1 round trip (README, "Performance"). An idle daemon does not
 * poll: the window closes after the first wait longer than the maximum.
 *
 * Set with the environment (there is no qsd option for the main loop's
 * polling): BLOCKD_POLL_MAX_NS (default 65536, twice QEMU's IOThread default: see README; 0
 * turns polling off), BLOCKD_POLL_GROW (default 0: doubles),
 * BLOCKD_POLL_SHRINK (default 0: closes the window at once).
 */
import { native } from '../platform/native.ts';

export interface LoopPolling { maxNs: number }

export const DEFAULT_LOOP_POLLING: LoopPolling = { maxNs: 65536 };

const VARS = { maxNs: 'BLOCKD_POLL_MAX_NS' } as const;

/** The settings the environment gives; throws with the variable's name on a value that is not an integer >= 0. */
export function loopPollingFromEnv(env: NodeJS.ProcessEnv): LoopPolling {
  const out = { ...DEFAULT_LOOP_POLLING };
  for (const [key, name] of Object.entries(VARS) as [keyof LoopPolling, string][]) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new Error(`${name}: '${v}' is not an integer >= 0`);
    out[key] = Number(v);
  }
  return out;
}

export function startLoopPolling(p: LoopPolling): void {
  native().loopPollSet(p.maxNs);
}
