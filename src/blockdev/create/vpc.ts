/**
 * blockdev-create for vpc (QEMU's vpc_co_create): a dynamic image (footer
 * copy, dynamic header, BAT, footer) or a fixed one (the disk, then the
 * footer) on the `file` node. The size must be one the CHS geometry can
 * say, unless force-size=on. Checks and texts are qsd 7.2's; the layout is
 * drivers/vpc/header.ts.
 */
import { BlockError } from '../../util/errors.ts';
import { enm, obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { BlockdevRef, checkFilePermissions, Refs } from './qcow2.ts';
import { FOOTER_SIZE, VHD_DYNAMIC, VHD_FIXED, dynamicLayout, newFooter, roundedSize } from '../drivers/vpc/header.ts';
import type { CreateContext, ImageCreator } from './types.ts';

export const BlockdevCreateOptionsVpc: ObjectType = obj('BlockdevCreateOptionsVpc', [
  req('file', BlockdevRef, 'Node to create the image format on'),
  req('size', 'size', 'Size of the virtual disk in bytes'),
  opt('subformat', enm('BlockdevVpcSubformat', ['dynamic', 'fixed']), 'vhdx subformat (default: dynamic)'),
  opt('force-size', 'bool', 'Force use of the exact byte size instead of rounding to the next size that can be represented in CHS geometry (default: false)'),
], { doc: 'Driver specific image creation options for vpc (VHD).' });

interface VpcCreateOptions { file: string | Record<string, unknown>; size: number; subformat?: 'dynamic' | 'fixed'; 'force-size'?: boolean }

export const vpcCreator: ImageCreator = {
  driver: 'vpc',
  options: BlockdevCreateOptionsVpc,
  async create(options, ctx: CreateContext): Promise<void> {
    const o = options as unknown as VpcCreateOptions;
    const force = o['force-size'] === true;
    const refs = new Refs(ctx.graph);
    try {
      const file = await refs.open(o.file);
      checkFilePermissions(file);
      refs.link(file, 'root', { write: true, resize: true });
      const { chs, totalSectors } = roundedSize(o.size, force);
      if (o.size !== totalSectors * 512) throw new BlockError('EINVAL', 'The requested image size cannot be represented in CHS geometry');
      const fixed = o.subformat === 'fixed';
      const footer = newFooter(o.size, fixed ? VHD_FIXED : VHD_DYNAMIC, chs, force);
      if (fixed) {
        const total = o.size + FOOTER_SIZE;
        if (file.length() < total) await file.truncate(total);
        await file.write(o.size, footer);
      } else {
        const { head, footerAt } = dynamicLayout(footer, totalSectors);
        if (file.length() < footerAt + FOOTER_SIZE) await file.truncate(footerAt + FOOTER_SIZE);
        await file.write(0, head);
        await file.write(footerAt, footer);
      }
      await file.flush();
    } finally {
      await refs.close();
    }
  },
};
