/**
 * raw: the format driver for images without metadata. It forwards to its
 * 'file' child, optionally exposing only the window [offset, offset+size).
 * Opened with its format probed (a drive-mirror target without `format`),
 * it warns and guards block 0 as QEMU does.
 */
import { BlockError } from '../../util/errors.ts';
import { obj, opt, req } from '../../qapi/types.ts';
import { BlockdevRef } from '../options.ts';
import { createFile } from '../create/file.ts';
import { PROBE_BYTES } from '../probe.ts';
import type { Driver, DriverContext, DriverOps } from '../driver.ts';
import type { BlockNode } from '../node.ts';

export const rawDriver: Driver = {
  name: 'raw',
  kind: 'format',
  options: obj('BlockdevOptionsRaw', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
    opt('offset', 'int', 'position where the block device starts'),
    opt('size', 'int', 'the assumed size of the device'),
  ]),
  // No metadata of its own: raw needs on its file what its users need, and lets others do with the file
  // what its own users let them do (QEMU's filtered child); it never resizes the file for itself.
  strongOptions: ['offset', 'size'],
  getInfo: 'file',
  childPerm: (role, readOnly) => ({
    perm: { read: true, write: !readOnly && role !== 'backing', resize: false },
    shared: { read: true, write: true, resize: true },
    passThrough: role === 'file',
  }),
  probedWarning: (filename) => `Image format was not specified for '${filename}' and probing guessed raw.\n`
    + '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n'
    + "         Specify the 'raw' format explicitly to remove the restrictions.",
  createImage: (filename, o) => createFile({ filename, size: o.size } as never),
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const offset = (options.offset as number | undefined) ?? 0;
    const fixedSize = options.size as number | undefined;
    checkWindow(file, offset, fixedSize);
    const length = () => fixedSize ?? Math.max(0, file.length() - offset);
    // A probed raw node (QEMU's bs->probed) keeps its first sector from turning into another format's header.
    const guard = ctx.probed;
    const write = (o: number, buf: Buffer, flags: number) => { file.debugEvent('write_aio'); return file.write(o + offset, buf, flags); };
    return {
      length,
      limits: {
        canFua: file.limits.canFua, canZero: file.limits.canZero, canTrim: file.limits.canTrim,
        // Whole sectors only, so that block 0 is always written whole (raw_refresh_limits).
        ...(guard ? { alignment: Math.max(PROBE_BYTES, file.limits.alignment) } : {}),
      },
      // read_aio and write_aio: QEMU's raw raises them on its file before each request (blkdebug listens).
      read: (o, buf) => { file.debugEvent('read_aio'); return file.read(o + offset, buf); },
      write: guard ? (o, buf, flags) => (o < PROBE_BYTES ? guardedWrite(ctx, o, buf, flags, write) : write(o, buf, flags)) : write,
      writeZeroes: (o, l, flags) => file.writeZeroes(o + offset, l, flags),
      discard: (o, l) => file.discard(o + offset, l),
      async blockStatus(o, l, flags) {
        const ext = await file.blockStatus(o + offset, l, flags);
        return ext.map((e) => ({ ...e, offset: e.offset - offset }));
      },
      async truncate(size) {
        if (offset !== 0 || fixedSize !== undefined) {
          throw new BlockError('ENOTSUP', 'Cannot resize fixed-size raw disks');
        }
        await file.truncate(size);
      },
      filename: () => file.ops.filename?.() ?? file.nodeName,
    };
  },
};

/**
 * A write of block 0 of a probed raw node (QEMU's raw_co_pwritev): refused
 * with EPERM if the new first sector would probe as another format; the
 * sector written is a checked copy, so a writer changing its buffer
 * meanwhile cannot slip a header through.
 */
function guardedWrite(ctx: DriverContext, o: number, buf: Buffer, flags: number, write: (o: number, buf: Buffer, flags: number) => Promise<void>): Promise<void> {
  const head = Buffer.from(buf.subarray(0, PROBE_BYTES));
  if (ctx.probeBytes(head) !== 'raw') return Promise.reject(new BlockError('EPERM', 'Operation not permitted'));
  return write(o, buf.length === PROBE_BYTES ? head : Buffer.concat([head, buf.subarray(PROBE_BYTES)]), flags);
}

function checkWindow(file: BlockNode, offset: number, size: number | undefined): void {
  const real = file.length();
  if (offset < 0) throw new BlockError('EINVAL', 'offset cannot be negative');
  if (size !== undefined && size < 0) throw new BlockError('EINVAL', 'size cannot be negative');
  if (offset > real) {
    throw new BlockError('EINVAL', `The sum of offset (${offset}) has to be smaller or equal to the  actual size of the containing file (${real})`);
  }
  if (size !== undefined && offset + size > real) {
    throw new BlockError('EINVAL', `The sum of offset (${offset}) and size (${size}) has to be smaller or equal to the  actual size of the containing file (${real})`);
  }
}
