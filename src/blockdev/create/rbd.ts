/**
 * blockdev-create for rbd (QEMU's qemu_rbd_do_create): connects as
 * blockdev-add would (location), then rbd_create with the object size
 * (cluster-size, a power of two of at least 4096; librbd's default
 * otherwise). Encryption is refused, as blockdev-add refuses it.
 */
import { obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { BlockError } from '../../util/errors.ts';
import { BlockdevOptionsRbd, connectOptions, rbdErrorText } from '../drivers/rbd/options.ts';
import { rbdAddon } from '../drivers/rbd/index.ts';
import type { ImageCreator, CreateContext } from './types.ts';

export const BlockdevCreateOptionsRbd: ObjectType = obj('BlockdevCreateOptionsRbd', [
  req('location', BlockdevOptionsRbd, 'where to store the new image file; cannot point to a snapshot'),
  req('size', 'size', 'size of the virtual disk in bytes'),
  opt('cluster-size', 'size', 'RBD object size'),
  opt('encrypt', obj('RbdEncryptionCreateOptions', [req('format', 'str', 'encryption format')]), 'image encryption options (refused: blockd does not bind librbd encryption)'),
], { doc: 'Driver specific image creation options for rbd/Ceph.' });

export const rbdCreator: ImageCreator = {
  driver: 'rbd',
  options: BlockdevCreateOptionsRbd,
  async create(options: Record<string, unknown>, ctx: CreateContext): Promise<void> {
    const loc = options.location as Record<string, unknown>;
    if (loc.snapshot !== undefined) throw new BlockError('EINVAL', "Can't use snapshot name for image creation");
    if (options.encrypt !== undefined) throw new BlockError('ENOTSUP', "blockd's rbd driver does not create encrypted images (encrypt): librbd's encryption is not bound");
    let order = 0;
    if (options['cluster-size'] !== undefined) {
      const objsize = Number(options['cluster-size']);
      if (!Number.isInteger(Math.log2(objsize))) throw new BlockError('EINVAL', 'obj size needs to be power of 2');
      if (objsize < 4096) throw new BlockError('EINVAL', 'obj size too small');
      order = Math.log2(objsize);
    }
    const rbd = rbdAddon();
    const c = connectOptions(loc, ctx.graph.env.objects, false);
    try {
      await rbd.rbdCreate({ ...c, size: Number(options.size) }, order);
    } catch (e) {
      throw new BlockError('EIO', rbdErrorText(e as Error & { stage?: string; reason?: string }, c));
    }
  },
};
