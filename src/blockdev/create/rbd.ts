/**
 * blockdev-create for rbd (QEMU's qemu_rbd_do_create): connects as
 * blockdev-add would (location), then rbd_create with the object size
 * (cluster-size, a power of two of at least 4096; librbd's default
 * otherwise); with encrypt, rbd_encryption_format on the new image, grown by
 * the LUKS header so the size seen through the encryption is `size` (the
 * image is removed again if formatting fails).
 */
import { obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { BlockError } from '../../util/errors.ts';
import { BlockdevOptionsRbd, RbdImageEncryptionFormat, connectOptions, encryptOptions, rbdErrorText } from '../drivers/rbd/options.ts';
import { QCryptoCipherAlgorithm } from './luks-options.ts';
import { rbdAddon } from '../drivers/rbd/index.ts';
import type { ImageCreator, CreateContext } from './types.ts';

/** The union RbdEncryptionCreateOptions: both branches (luks, luks2) are RbdEncryptionCreateOptionsLUKSBase. */
const RbdEncryptionCreateOptions = obj('RbdEncryptionCreateOptions', [
  req('format', RbdImageEncryptionFormat, 'encryption format'),
  req('key-secret', 'str', 'ID of a QCryptoSecret object providing a passphrase for unlocking the encryption'),
  opt('cipher-alg', QCryptoCipherAlgorithm, 'the encryption algorithm (aes-256 if not given)'),
]);

export const BlockdevCreateOptionsRbd: ObjectType = obj('BlockdevCreateOptionsRbd', [
  req('location', BlockdevOptionsRbd, 'where to store the new image file; cannot point to a snapshot'),
  req('size', 'size', 'size of the virtual disk in bytes'),
  opt('cluster-size', 'size', 'RBD object size'),
  opt('encrypt', RbdEncryptionCreateOptions, 'image encryption options'),
], { doc: 'Driver specific image creation options for rbd/Ceph.' });

export const rbdCreator: ImageCreator = {
  driver: 'rbd',
  options: BlockdevCreateOptionsRbd,
  async create(options: Record<string, unknown>, ctx: CreateContext): Promise<void> {
    const loc = options.location as Record<string, unknown>;
    if (loc.snapshot !== undefined) throw new BlockError('EINVAL', "Can't use snapshot name for image creation");
    let order = 0;
    if (options['cluster-size'] !== undefined) {
      const objsize = Number(options['cluster-size']);
      if (!Number.isInteger(Math.log2(objsize))) throw new BlockError('EINVAL', 'obj size needs to be power of 2');
      if (objsize < 4096) throw new BlockError('EINVAL', 'obj size too small');
      order = Math.log2(objsize);
    }
    const rbd = rbdAddon();
    // The location's own encrypt is not used (QEMU formats with the create options' encrypt).
    const c = connectOptions({ ...loc, encrypt: undefined }, ctx.graph.env.objects, false);
    if (options.encrypt !== undefined) c.encrypt = encryptOptions(options.encrypt as Record<string, unknown>, ctx.graph.env.objects);
    try {
      await rbd.rbdCreate({ ...c, size: Number(options.size) }, order);
    } catch (e) {
      throw new BlockError('EIO', rbdErrorText(e as Error & { stage?: string; reason?: string }, c));
    }
  },
};
