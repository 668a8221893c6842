/**
 * qcow2 encryption (QEMU block/qcow2.c with crypto/block-luks.c and
 * crypto/block-qcow.c). Two methods: LUKS (crypt_method 2), whose LUKS1
 * header lives in clusters of the image named by the CRYPTO header
 * extension, and the legacy AES-CBC method (1), keyed by the passphrase
 * itself. Data clusters are encrypted in 512-byte sectors; LUKS numbers the
 * sectors by host offset, AES by guest offset (QEMU's crypt_physical_offset).
 * Metadata is never encrypted; zero and unallocated clusters read as zeroes
 * without decryption.
 */
import { BlockError } from '../../../util/errors.ts';
import { enm, obj, opt, req } from '../../../qapi/types.ts';
import { luks1Info, openLuks1, passwordFromSecret } from '../../../crypto/luks1-open.ts';
import { SectorCipher } from '../../../crypto/sector-cipher.ts';
import type { CipherSpec } from '../../../crypto/cipher-spec.ts';
import type { ReadAt, WriteAt } from '../../../crypto/luks1-keyslot.ts';
import type { AmendableVolume } from '../luks/amend.ts';
import type { BlockNode } from '../../node.ts';
import type { Qcow2Header } from './header.ts';

/** The sector size of both methods (QCRYPTO_BLOCK_LUKS_SECTOR_SIZE, QCRYPTO_BLOCK_QCOW_SECTOR_SIZE). */
export const CRYPT_SECTOR = 512;

export const CryptMethod = { NONE: 0, AES: 1, LUKS: 2 } as const;

const keySecret = opt('key-secret', 'str', 'the ID of a QCryptoSecret object providing the decryption key');

/** BlockdevQcow2Encryption: the `encrypt` member of qcow2's blockdev options. */
export const BlockdevQcow2Encryption = obj('BlockdevQcow2Encryption', [
  req('format', enm('BlockdevQcow2EncryptionFormat', ['aes', 'luks']), 'the encryption format'),
], {
  union: {
    discriminator: 'format',
    variants: {
      aes: obj('QCryptoBlockOptionsQCow', [keySecret]),
      luks: obj('QCryptoBlockOptionsLUKS', [keySecret]),
    },
  },
});

export interface EncryptOptions { format?: 'aes' | 'luks'; 'key-secret'?: string }

/** An open image's encryption. */
export interface Qcow2Crypto {
  readonly cipher: SectorCipher;
  /** Sectors numbered by host offset (LUKS) rather than guest offset (AES). */
  readonly physical: boolean;
  /** ImageInfoSpecificQCow2's `encrypt` member (as it is now: amend changes the key slots). */
  info(): Record<string, unknown>;
  /** LUKS: what x-blockdev-amend works on (the header, and the region it lives in). */
  readonly luks?: AmendableVolume;
}

const FORMAT_NAME: Record<number, 'aes' | 'luks'> = { [CryptMethod.AES]: 'aes', [CryptMethod.LUKS]: 'luks' };

interface OpenContext {
  objects: { secret(id: string): Buffer };
}

function passwordOf(ctx: OpenContext, o: EncryptOptions | undefined): Buffer {
  const id = o?.['key-secret'];
  if (id === undefined) throw new BlockError('EINVAL', "Parameter 'encrypt.key-secret' is required for cipher");
  return passwordFromSecret(id, ctx.objects.secret(id));
}

/**
 * Opens the encryption the header declares, with QEMU's checks and texts in
 * its order; undefined for an unencrypted image (which must not be given
 * `encrypt` options).
 */
export async function openEncryption(h: Qcow2Header, file: BlockNode, clusterSize: number, o: EncryptOptions | undefined, ctx: OpenContext): Promise<Qcow2Crypto | undefined> {
  const method = h.cryptMethod;
  if (method === CryptMethod.NONE) {
    if (o?.format !== undefined) throw new BlockError('EINVAL', `No encryption in image header, but options specified format '${o.format}'`);
    if (h.crypto) throw new BlockError('EINVAL', 'CRYPTO header extension only expected with LUKS encryption method');
    return undefined;
  }
  const name = FORMAT_NAME[method];
  if (o?.format !== undefined && o.format !== name) {
    throw new BlockError('EINVAL', `Header reported '${name}' encryption format but options specify '${o.format}'`);
  }
  if (method === CryptMethod.AES) {
    if (h.crypto) throw new BlockError('EINVAL', 'CRYPTO header extension only expected with LUKS encryption method');
    return openAes(passwordOf(ctx, o));
  }
  const region = h.crypto;
  if (!region) throw new BlockError('EINVAL', `Missing CRYPTO header for crypt method ${method}`);
  if (region.offset % clusterSize !== 0) {
    throw new BlockError('EINVAL', `Encryption header offset '${region.offset}' is not a multiple of cluster size '${clusterSize}'`);
  }
  const password = passwordOf(ctx, o);
  try {
    const read = regionReader(file, region);
    const volume = await openLuks1(read, password);
    return {
      cipher: volume.cipher, physical: true,
      info: () => ({ format: 'luks', ...luks1Info(volume.header, volume.spec) }),
      luks: { header: volume.header, spec: volume.spec, openSecret: o!['key-secret']!, read, write: regionWriter(file, region) },
    };
  } finally {
    password.fill(0);
  }
}

/** Reads inside the LUKS header region only (QEMU's qcow2_crypto_hdr_read_func). */
function regionReader(file: BlockNode, region: { offset: number; length: number }): ReadAt {
  return async (offset, length) => {
    if (offset + length > region.length) throw new BlockError('EINVAL', 'Request for data outside of extension header');
    const buf = Buffer.alloc(length);
    const avail = Math.max(0, Math.min(length, file.length() - region.offset - offset));
    if (avail > 0) await file.read(region.offset + offset, buf.subarray(0, avail));
    return buf;
  };
}

/** Writes inside the LUKS header region only (QEMU's qcow2_crypto_hdr_write_func). */
function regionWriter(file: BlockNode, region: { offset: number; length: number }): WriteAt {
  return async (offset, data) => {
    if (offset + data.length > region.length) throw new BlockError('EINVAL', 'Request for data outside of extension header');
    await file.write(region.offset + offset, data);
  };
}

/** The legacy method's cipher (hash unused: the key is not derived). */
const AES_SPEC: CipherSpec = { cipherAlg: 'aes-128', cipherMode: 'cbc', ivgenAlg: 'plain64', ivgenCipherAlg: 'aes-128', hashAlg: 'sha256', masterKeyLen: 16 };

/** The legacy method (crypto/block-qcow.c): AES-128-CBC, plain64 IVs, the key the passphrase's first 16 bytes, zero-padded. */
function openAes(password: Buffer): Qcow2Crypto {
  const key = Buffer.alloc(16);
  password.copy(key, 0, 0, Math.min(16, password.length));
  password.fill(0);
  try {
    const cipher = SectorCipher.create(AES_SPEC, key, CRYPT_SECTOR);
    return { cipher, physical: false, info: () => ({ format: 'aes' }) };
  } finally {
    key.fill(0);
  }
}

/** Encrypts or decrypts `buf` in place: data at host offset `host`, guest offset `guest`. */
export function cryptData(c: Qcow2Crypto, buf: Buffer, host: number, guest: number, encrypt: boolean, out?: Buffer): Promise<void> | undefined {
  const sector = (c.physical ? host : guest) / CRYPT_SECTOR;
  return out ? c.cipher.cryptInto(buf, out, sector, encrypt) : c.cipher.crypt(buf, sector, encrypt);
}
