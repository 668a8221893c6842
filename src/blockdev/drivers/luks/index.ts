/**
 * luks: the format driver for LUKS volumes (QEMU block/crypto.c over
 * crypto/block-luks.c for LUKS1; LUKS2, which qsd 7.2 cannot open, from
 * cryptsetup's specification). The payload after the header and key
 * material is the guest's disk, encrypted in sectors (512 bytes in LUKS1,
 * the segment's sector size in LUKS2) whose IVs count 512-byte units from
 * the payload's start (plus LUKS2's iv_tweak). Reads decrypt in the caller's
 * buffer; writes encrypt a copy.
 */
import { BlockError } from '../../../util/errors.ts';
import { obj, opt, req } from '../../../qapi/types.ts';
import { BlockdevRef } from '../../options.ts';
import { cryptBuffers as bounce } from '../../copy-buffers.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import { luks1Info, openLuks1, passwordFromSecret } from '../../../crypto/luks1-open.ts';
import { luks2Info, openLuks2 } from '../../../crypto/luks2-open.ts';
import { isLuks2 } from '../../../crypto/luks2-header.ts';
import type { SectorCipher } from '../../../crypto/sector-cipher.ts';
import type { CipherSpec } from '../../../crypto/cipher-spec.ts';
import type { Luks1Header } from '../../../crypto/luks1-header.ts';
import type { Luks1AmendOptions } from '../../../crypto/luks1-amend.ts';
import { QCRYPTO_LUKS_AMEND_MEMBERS, amendVolume } from './amend.ts';
import { LUKS_SECTOR_SIZE, hasLuks1Format } from '../../../crypto/luks1-header.ts';
import type { ReadAt } from '../../../crypto/luks1-keyslot.ts';

/** QEMU's BLOCK_CRYPTO_MAX_IO_SIZE: requests are encrypted in bounce buffers of at most this size. */
export const LUKS_MAX_IO = 1024 * 1024;


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
  // QEMU's block_crypto_probe_luks: a LUKS1 header (its qcrypto has_format knows version 1 only).
  probe: (head) => (hasLuks1Format(head) ? 100 : 0),
  options: obj('BlockdevOptionsLUKS', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
    opt('key-secret', 'str', 'the ID of a QCryptoSecret object providing the decryption key'),
  ]),
  amendOptions: obj('BlockdevAmendOptionsLUKS', QCRYPTO_LUKS_AMEND_MEMBERS),
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const password = lookupPassword(ctx, options['key-secret']);
    let v: OpenVolume;
    try {
      v = await openVolume(file, password);
    } finally {
      password.fill(0);
    }
    const { cipher, payloadOffset, sectorSize, ivBase } = v;
    const iv = (o: number) => ivBase + o / LUKS_SECTOR_SIZE;
    return {
      length: () => Math.max(0, (v.size ?? file.length() - payloadOffset)),
      limits: { alignment: sectorSize, maxTransfer: LUKS_MAX_IO, canFua: file.limits.canFua, canZero: false, canTrim: false },
      async read(o, buf) {
        await file.read(payloadOffset + o, buf);
        await cipher.crypt(buf, iv(o), false);
      },
      async write(o, buf, flags) {
        const enc = bounce.get(buf.length);
        try {
          await cipher.cryptInto(buf, enc, iv(o), true);
          await file.write(payloadOffset + o, enc, flags);
        } finally {
          bounce.put(enc);
        }
      },
      truncate: (size) => file.truncate(payloadOffset + size),
      async amend(o, force) {
        if (!v.luks1) throw new BlockError('ENOTSUP', 'blockd cannot amend the key slots of a LUKS2 volume');
        if (ctx.readOnly) throw new BlockError('EPERM', 'Block node is read-only');
        const amendable = { ...v.luks1, openSecret: options['key-secret'] as string, read: childReader(file), write: (off: number, d: Buffer) => file.write(off, d) };
        await amendVolume(amendable, ctx.objects, o as unknown as Luks1AmendOptions, force);
      },
      async close() { cipher.wipe(); },
      info: () => ({ 'format-specific': { type: 'luks', data: v.info() }, encrypted: true, 'dirty-flag': false }),
      filename: () => file.fileName(),
    };
  },
};

/** An unlocked volume of either version, as the driver uses it. */
interface OpenVolume {
  cipher: SectorCipher;
  payloadOffset: number;
  /** Encryption unit and request alignment. */
  sectorSize: number;
  /** IV number of the payload's first 512 bytes. */
  ivBase: number;
  /** Fixed payload size (a LUKS2 segment's), else to the end of the file. */
  size?: number;
  info(): Record<string, unknown>;
  /** A LUKS1 volume's header, which x-blockdev-amend changes. */
  luks1?: { header: Luks1Header; spec: CipherSpec };
}

async function openVolume(file: BlockNode, password: Buffer): Promise<OpenVolume> {
  const read = childReader(file);
  if (isLuks2(await read(0, 8))) {
    const v = await openLuks2(read, password);
    return { cipher: v.cipher, payloadOffset: v.segment.offset, sectorSize: v.segment.sectorSize, ivBase: v.segment.ivTweak, size: v.segment.size, info: () => luks2Info(v) };
  }
  const { cipher, payloadOffset, header, spec } = await openLuks1(read, password);
  return { cipher, payloadOffset, sectorSize: LUKS_SECTOR_SIZE, ivBase: 0, info: () => luks1Info(header, spec), luks1: { header, spec } };
}
