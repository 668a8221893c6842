/**
 * blockdev-create for vdi (QEMU's vdi_co_do_create): the header and block
 * map written at the start of the `file` node; `preallocation=metadata`
 * makes a static image (every block mapped in order, the file sized to hold
 * them all). Checks and texts are qsd 7.2's; the layout is
 * drivers/vdi/header.ts.
 */
import { BlockError } from '../../util/errors.ts';
import { obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { PreallocMode } from './file.ts';
import { BlockdevRef, checkFilePermissions, Refs } from './qcow2.ts';
import { VDI_DISK_SIZE_MAX, vdiLayout } from '../drivers/vdi/header.ts';
import type { CreateContext, ImageCreator } from './types.ts';

export const BlockdevCreateOptionsVdi: ObjectType = obj('BlockdevCreateOptionsVdi', [
  req('file', BlockdevRef, 'Node to create the image format on'),
  req('size', 'size', 'Size of the virtual disk in bytes'),
  opt('preallocation', PreallocMode, 'Preallocation mode for the new image (default: off; allowed values: off, metadata)'),
], { doc: 'Driver specific image creation options for VDI.' });

interface VdiCreateOptions { file: string | Record<string, unknown>; size: number; preallocation?: string }

export const vdiCreator: ImageCreator = {
  driver: 'vdi',
  options: BlockdevCreateOptionsVdi,
  async create(options, ctx: CreateContext): Promise<void> {
    const o = options as unknown as VdiCreateOptions;
    const mode = o.preallocation ?? 'off';
    if (mode !== 'off' && mode !== 'metadata') throw new BlockError('EINVAL', 'Preallocation mode not supported for vdi');
    if (o.size > VDI_DISK_SIZE_MAX) {
      throw new BlockError('ENOTSUP', `Unsupported VDI image size (size is 0x${o.size.toString(16)}, max supported is 0x${VDI_DISK_SIZE_MAX.toString(16)})`);
    }
    const refs = new Refs(ctx.graph);
    try {
      const file = await refs.open(o.file);
      checkFilePermissions(file);
      refs.link(file, 'root', { write: true, resize: true });
      const { head, fileLength } = vdiLayout(o.size, mode === 'metadata');
      // QEMU writes past the end (the file keeps any longer length it had); a static image's file holds every block.
      if (file.length() < head.length) await file.truncate(head.length);
      await file.write(0, head);
      if (fileLength > file.length()) await file.truncate(fileLength);
      await file.flush();
    } finally {
      await refs.close();
    }
  },
};
