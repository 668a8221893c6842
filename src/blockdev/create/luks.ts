/**
 * blockdev-create for luks (QEMU block/crypto.c block_crypto_co_create_luks):
 * a LUKS1 header and key slot 0 written onto the `file` node, which is sized
 * to the header plus `size` (with the preallocation asked for). Defaults,
 * order of checks and texts are qsd 7.2's; the layout is crypto/luks1-create.ts.
 */
import { BlockError } from '../../util/errors.ts';
import { obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { createLuks1 } from '../../crypto/luks1-create.ts';
import { lookupPassword } from '../drivers/luks/index.ts';
import { PreallocMode } from './file.ts';
import { BlockdevRef, checkFilePermissions, preallocate, Refs } from './qcow2.ts';
import { QCRYPTO_LUKS_CREATE_MEMBERS, luksCreateOptions, type LuksCreateMembers } from './luks-options.ts';
import type { CreateContext, ImageCreator } from './types.ts';

export const BlockdevCreateOptionsLUKS: ObjectType = obj('BlockdevCreateOptionsLUKS', [
  ...QCRYPTO_LUKS_CREATE_MEMBERS,
  req('file', BlockdevRef, 'Node to create the image format on'),
  req('size', 'size', 'Size of the virtual disk in bytes'),
  opt('preallocation', PreallocMode, 'Preallocation mode for the new image (default: off; allowed values: off, metadata, falloc, full)'),
], { doc: 'Driver specific image creation options for LUKS.' });

interface LuksCreateOptions extends LuksCreateMembers {
  file: string | Record<string, unknown>;
  size: number;
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
}

export const luksCreator: ImageCreator = {
  driver: 'luks',
  options: BlockdevCreateOptionsLUKS,
  async create(options, ctx: CreateContext): Promise<void> {
    const o = options as unknown as LuksCreateOptions;
    const refs = new Refs(ctx.graph);
    try {
      const file = await refs.open(o.file);
      checkFilePermissions(file);
      refs.link(file, 'root', { write: true, resize: true });
      const prealloc = o.preallocation === 'metadata' ? 'off' : o.preallocation ?? 'off';
      const password = lookupPassword(ctx.graph.env, o['key-secret']);
      try {
        const created = await createLuks1(luksCreateOptions(o), password, async (headerSize) => {
          if (o.size > Number.MAX_SAFE_INTEGER - headerSize) throw new BlockError('EOVERFLOW', 'The requested file size is too large');
          const start = file.length();
          await file.truncate(headerSize + o.size);
          if (prealloc !== 'off') await preallocate(file, Math.min(start, headerSize + o.size), headerSize + o.size, prealloc, ctx.signal);
        }, (offset, data) => file.write(offset, data));
        created.masterKey.fill(0);
      } finally {
        password.fill(0);
      }
      await file.flush();
    } finally {
      await refs.close();
    }
  },
};
