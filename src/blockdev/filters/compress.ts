/**
 * compress: a filter whose writes reach its file as compressed writes
 * (QEMU's block/filter-compress.c); reads, write-zeroes and discards pass.
 * Its request alignment is the file's cluster size, so BlockNode turns any
 * write into whole clusters (read-modify-write) as QEMU's block layer does.
 * A file that cannot take compressed writes is refused at open with QEMU's
 * text; one whose compressed writes blockd cannot do (a zstd qcow2 with an
 * addon built before its zstd compressor) with that reason.
 */
import { BlockError } from '../../util/errors.ts';
import { obj, req } from '../../qapi/types.ts';
import { BlockdevRef } from '../options.ts';
import { followEdge } from './follow-edge.ts';
import type { Driver, DriverOps } from '../driver.ts';

export const compressDriver: Driver = {
  name: 'compress',
  kind: 'filter',
  options: obj('BlockdevOptionsGenericFormat', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
  ]),
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    if (!file.canCompress) {
      throw new BlockError('ENOTSUP', `Compression is not supported for underlying format: ${file.driver.name}`);
    }
    const refused = file.compressRefusal();
    if (refused) throw new BlockError('ENOTSUP', refused);
    const child = followEdge(ctx, file, 'file');
    const cluster = (file.ops.info?.() as { 'cluster-size'?: number } | undefined)?.['cluster-size'];
    return {
      read: (o, buf) => child().read(o, buf),
      write: (o, buf) => child().writeCompressed(o, buf),
      writeZeroes: (o, l, flags) => child().writeZeroes(o, l, flags),
      discard: (o, l) => child().discard(o, l),
      limits: {
        ...(cluster ? { alignment: cluster } : {}),
        canFua: false, canZero: file.limits.canZero, canTrim: file.limits.canTrim,
      },
    };
  },
};
