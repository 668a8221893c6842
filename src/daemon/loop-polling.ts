/**
 * Adaptive polling of the main event loop (native/src/loop_poll.c): before
 * the loop sleeps it busy-waits a short window for the next event, as QEMU's
 * IOThreads do (poll-max-ns). qsd's main loop does not poll; blockd's does,
 * because on a virtual machine the sleep and wake-up between a reply and the
 * next request was most of a queue-depth-1 round trip (README, "Where blockd
 * differs from qsd"). An idle daemon does not poll: two waits in a row longer
 * than the window close it.
 *
 * Set with the environment, as there is no qsd option for the main loop's
 * polling: BLOCKD_POLL_MAX_NS, the window in nanoseconds (default 65536,
 * twice QEMU's IOThread default, measured in the README; 0 turns polling off).
 */
import { native } from '../platform/native.ts';
import { CliError } from './cli.ts';

export interface LoopPolling { maxNs: number }

export const DEFAULT_LOOP_POLLING: LoopPolling = { maxNs: 65536 };

/** The settings the environment gives; a CliError naming the variable for a value that is not an integer >= 0. */
export function loopPollingFromEnv(env: NodeJS.ProcessEnv): LoopPolling {
  const v = env.BLOCKD_POLL_MAX_NS;
  if (v === undefined || v === '') return { ...DEFAULT_LOOP_POLLING };
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new CliError(`BLOCKD_POLL_MAX_NS: '${v}' is not an integer >= 0`);
  return { maxNs: Number(v) };
}

export function startLoopPolling(p: LoopPolling): void {
  native().loopPollSet(p.maxNs);
}
