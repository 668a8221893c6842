/**
 * luks: the format driver for LUKS1 volumes (QEMU block/crypto.c over
 * crypto/block-luks.c). The payload after the header and key material is the
 * guest's disk, encrypted in 512-byte sectors numbered from the payload's
 * start. Reads decrypt in the caller's buffer; writes encrypt a copy.
 */
import { BlockError } from '../../../util/errors.ts';
import { obj, opt, req } from '../../../qapi/types.ts';
import { BlockdevRef } from '../../options.ts';
import { CopyBufferPool } from '../../copy-buffers.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import { luks1Info, openLuks1, passwordFromSecret } from '../../../crypto/luks1-open.ts';
import { LUKS_SECTOR_SIZE } from '../../../crypto/luks1-header.ts';
import type { ReadAt } from '../../../crypto/luks1-keyslot.ts';

/** QEMU's BLOCK_CRYPTO_MAX_IO_SIZE: requests are encrypted in bounce buffers of at most this size. */
export const LUKS_MAX_IO = 1024 * 1024;

/** Write bounce buffers: the caller's data is never encrypted in place. */
const bounce = new CopyBufferPool(LUKS_MAX_IO);

/** Reads from a child, past its end as zeroes (QEMU's bdrv_pread on a short file). */
export function childReader(file: BlockNode, base = 0): ReadAt {
  return async (offset, length) => {
    const buf = Buffer.alloc(length);
    const avail = Math.max(0, Math.min(length, file.length() - base - offset));
    if (avail > 0) await file.read(base + offset, buf.subarray(0, avail));
    return buf;
  };
}

/** The passphrase of key-secret (QEMU's checks and texts, in its order). */
export function lookupPassword(ctx: { objects: { secret(id: string): Buffer } }, keySecret: unknown, prefix = ''): Buffer {
  if (keySecret === undefined) throw new BlockError('EINVAL', `Parameter '${prefix}key-secret' is required for cipher`);
  return passwordFromSecret(keySecret as string, ctx.objects.secret(keySecret as string));
}

export const luksDriver: Driver = {
  name: 'luks',
  kind: 'format',
  // QEMU's block_crypto_strong_runtime_opts: the json: filename names the secret.
  strongOptions: ['key-secret'],
  options: obj('BlockdevOptionsLUKS', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
    opt('key-secret', 'str', 'the ID of a QCryptoSecret object providing the decryption key'),
  ]),
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const password = lookupPassword(ctx, options['key-secret']);
    let volume;
    try {
      volume = await openLuks1(childReader(file), password);
    } finally {
      password.fill(0);
    }
    const { cipher, payloadOffset, header, spec } = volume;
    const SECTOR = LUKS_SECTOR_SIZE;
    return {
      length: () => Math.max(0, file.length() - payloadOffset),
      limits: { alignment: SECTOR, maxTransfer: LUKS_MAX_IO, canFua: file.limits.canFua, canZero: false, canTrim: false },
      async read(o, buf) {
        await file.read(payloadOffset + o, buf);
        await cipher.crypt(buf, o / SECTOR, false);
      },
      async write(o, buf, flags) {
        const enc = bounce.get(buf.length);
        try {
          buf.copy(enc);
          await cipher.crypt(enc, o / SECTOR, true);
          await file.write(payloadOffset + o, enc, flags);
        } finally {
          bounce.put(enc);
        }
      },
      truncate: (size) => file.truncate(payloadOffset + size),
      async close() { cipher.wipe(); },
      info: () => ({ 'format-specific': { type: 'luks', data: luks1Info(header, spec) }, encrypted: true, 'dirty-flag': false }),
      filename: () => file.fileName(),
    };
  },
};
