/**
 * blockdev-create for parallels (QEMU's parallels_co_create): the header
 * sector at the start of the `file` node, then zeroes up to the data area
 * (the first cluster boundary after the BAT); a longer file keeps its
 * length. Checks and texts are qsd 7.2's; the layout is
 * drivers/parallels/header.ts.
 */
import { BlockError } from '../../util/errors.ts';
import { obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { BlockdevRef, checkFilePermissions, Refs } from './qcow2.ts';
import { DEFAULT_CLUSTER_SIZE, checkCreateOptions, parallelsLayout } from '../drivers/parallels/header.ts';
import type { CreateContext, ImageCreator } from './types.ts';

export const BlockdevCreateOptionsParallels: ObjectType = obj('BlockdevCreateOptionsParallels', [
  req('file', BlockdevRef, 'Node to create the image format on'),
  req('size', 'size', 'Size of the virtual disk in bytes'),
  opt('cluster-size', 'size', 'Cluster size in bytes (default: 1 MB)'),
], { doc: 'Driver specific image creation options for parallels.' });

interface ParallelsCreate { file: string | Record<string, unknown>; size: number; 'cluster-size'?: number }

export const parallelsCreator: ImageCreator = {
  driver: 'parallels',
  options: BlockdevCreateOptionsParallels,
  async create(options, ctx: CreateContext): Promise<void> {
    const o = options as unknown as ParallelsCreate;
    const cs = o['cluster-size'] ?? DEFAULT_CLUSTER_SIZE;
    checkCreateOptions(o.size, cs);
    const refs = new Refs(ctx.graph);
    try {
      const file = await refs.open(o.file);
      checkFilePermissions(file);
      refs.link(file, 'root', { write: true, resize: true });
      const { head, dataOffset } = parallelsLayout(o.size, cs);
      try {
        if (file.length() < head.length) await file.truncate(head.length);
        await file.write(0, head);
        if (dataOffset > head.length) {
          if (file.length() < dataOffset) await file.truncate(dataOffset);
          await file.writeZeroes(head.length, dataOffset - head.length);
        }
      } catch (e) {
        throw new BlockError((e as BlockError).code ?? 'EIO', `Failed to create Parallels image: ${(e as Error).message}`);
      }
      await file.flush();
    } finally {
      await refs.close();
    }
  },
};
