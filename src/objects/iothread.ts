/**
 * iothread: accepted and kept, but a no-op: blockd runs every node in its one
 * event loop (file I/O already goes to libuv's thread pool), so there is
 * nothing to pin to a thread. Exports' iothread= options name one.
 */
import { obj, opt } from '../qapi/types.ts';
import type { ObjectTypeDef } from './object-type.ts';

const IothreadProperties = obj('IothreadProperties', [
  opt('aio-max-batch', 'int', 'maximum number of requests in a batch for the AIO engine (ignored: blockd has no iothreads)'),
  opt('thread-pool-min', 'int', 'minimum number of threads in the thread pool (ignored)'),
  opt('thread-pool-max', 'int', 'maximum number of threads in the thread pool (ignored)'),
  opt('poll-max-ns', 'int', 'the maximum number of nanoseconds to busy wait for events (ignored)'),
  opt('poll-grow', 'int', 'the multiplier used to increase the polling time (ignored)'),
  opt('poll-shrink', 'int', 'the divisor used to decrease the polling time (ignored)'),
]);

export const iothreadType: ObjectTypeDef<Record<string, unknown>> = {
  qomType: 'iothread',
  properties: IothreadProperties,
  create: (options) => options,
};
