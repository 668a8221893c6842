/**
 * iothread: a name here; the worker thread behind it (src/iothread) starts
 * when the first export with iothread= naming it can move there, its event
 * loop polling as poll-max-ns says. Its other tuning properties are kept
 * and have no effect (see the descriptions).
 */
import { obj, opt } from '../qapi/types.ts';
import type { ObjectTypeDef } from './object-type.ts';

const IothreadProperties = obj('IothreadProperties', [
  opt('aio-max-batch', 'int', 'maximum number of requests in a batch for the AIO engine (no effect: blockd batches writes its own way)'),
  opt('thread-pool-min', 'int', 'minimum number of threads in the thread pool (no effect: every loop shares libuv\'s one pool)'),
  opt('thread-pool-max', 'int', 'maximum number of threads in the thread pool (no effect: every loop shares libuv\'s one pool)'),
  opt('poll-max-ns', 'int', 'the maximum number of nanoseconds to busy wait for events before the thread sleeps (default 32768, 0: off; read when the iothread starts)'),
  opt('poll-grow', 'int', 'the multiplier used to increase the polling time (no effect: blockd\'s window is open or closed, not grown)'),
  opt('poll-shrink', 'int', 'the divisor used to decrease the polling time (no effect: blockd\'s window is open or closed, not shrunk)'),
]);

export const iothreadType: ObjectTypeDef<Record<string, unknown>> = {
  qomType: 'iothread',
  properties: IothreadProperties,
  create: (options) => options,
};
