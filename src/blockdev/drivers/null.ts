/**
 * null-co and null-aio: a node of a given size that stores nothing. Used for benchmarks
 * and tests. Reads always fill the caller's buffer with zeroes: QEMU leaves
 * it untouched unless read-zeroes=on, but blockd never hands out memory a
 * driver did not fill. QEMU's two differ only in how a request completes
 * (coroutine or AIO callback), which nothing outside can see, so both are
 * this driver under their own names (and filenames: "null-aio://").
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockError } from '../../util/errors.ts';
import { COMPLETED } from '../request.ts';
import { obj, opt } from '../../qapi/types.ts';
import type { Driver, DriverOps } from '../driver.ts';

/** QEMU's BlockdevOptionsNull, the options of both. */
const BlockdevOptionsNull = obj('BlockdevOptionsNull', [
  opt('size', 'int', 'size of the device in bytes (default 1 GiB)'),
  opt('latency-ns', 'uint64', 'emulated latency of each request in nanoseconds (default 0)'),
  opt('read-zeroes', 'bool', 'reads return zeroes (default off)'),
]);

function nullDriverNamed(name: 'null-co' | 'null-aio'): Driver {
  return {
    name,
    kind: 'protocol',
    options: BlockdevOptionsNull,
    strongOptions: ['size', 'read-zeroes'],
    reopenWithoutHook: true,
    async open(options): Promise<DriverOps> {
      const size = (options.size as number | undefined) ?? 1 << 30;
      // qsd 7.2 aborts on a negative size; blockd refuses it.
      if (size < 0) throw new BlockError('EINVAL', "Parameter 'size' expects a non-negative value");
      const latencyNs = Number(options['latency-ns'] ?? 0);
      if (latencyNs > Number.MAX_SAFE_INTEGER) throw new BlockError('EINVAL', 'latency-ns is invalid');
      const latencyMs = latencyNs / 1e6;
      const zero = options['read-zeroes'] === true;
      // Without latency every request completes at once: no timer, no promise step.
      const wait = latencyMs > 0 ? () => sleep(latencyMs) : () => COMPLETED;
      return {
        length: () => size,
        limits: { canFua: true },
        read: (_offset, buf) => { buf.fill(0); return wait(); },
        write: () => wait(),
        flush: () => wait(),
        async blockStatus(offset, length) {
          return [{ offset, length, data: false, zero, allocated: true, depth: 1 }];
        },
        filename: () => `${name}://`,
        // Nothing is allocated anywhere (QEMU's bdrv_get_allocated_file_size of a null node).
        info: () => ({ 'actual-size': 0 }),
      };
    },
  };
}

export const nullDriver = nullDriverNamed('null-co');
export const nullAioDriver = nullDriverNamed('null-aio');
