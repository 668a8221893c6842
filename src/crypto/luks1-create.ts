/**
 * A new LUKS1 volume header, as QEMU's qcrypto_block_luks_create lays it out:
 * the 592-byte header in the first 4 KiB, eight key-slot areas of the split
 * key rounded up to 4 KiB each (slot i at 8 + i * area sectors), the payload
 * right after them, and key slot 0 filled with the master key under the
 * passphrase. Defaults and error texts are QEMU 7.2's.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { BlockError } from '../util/errors.ts';
import { essivCipher, KEY_LEN, luksCipherName, opensslCipher, type CipherAlg, type CipherMode, type CipherSpec, type HashAlg, type IvgenAlg } from './cipher-spec.ts';
import { KEY_SLOT_DISABLED, LUKS_DIGEST_LEN, LUKS_KEY_SLOT_OFFSET, LUKS_NUM_KEY_SLOTS, LUKS_SALT_LEN, LUKS_SECTOR_SIZE, LUKS_STRIPES, serializeLuks1Header, splitKeySectors, type Luks1Header } from './luks1-header.ts';
import { MIN_MASTER_KEY_ITERS, storeKey, type WriteAt } from './luks1-keyslot.ts';
import { pbkdf2, pbkdf2IterationsPerSecond } from './pbkdf2.ts';

export const DEFAULT_ITER_TIME_MS = 2000;

/** QCryptoBlockCreateOptionsLUKS without key-secret (the caller has looked the password up). */
export interface Luks1CreateOptions {
  cipherAlg?: CipherAlg;
  cipherMode?: CipherMode;
  ivgenAlg?: IvgenAlg;
  ivgenHashAlg?: HashAlg;
  hashAlg?: HashAlg;
  iterTime?: number;
}

export interface Luks1Created {
  header: Luks1Header;
  spec: CipherSpec;
  /** The new master key: the caller keys its payload cipher with it, then erases it. */
  masterKey: Buffer;
  /** Bytes before the payload (header and key material). */
  payloadOffset: number;
}

/** The cipher of a new volume, QEMU's defaults filled in; refuses what blockd cannot run. */
export function luks1CreateSpec(o: Luks1CreateOptions): CipherSpec {
  const cipherAlg = o.cipherAlg ?? 'aes-256';
  const cipherMode = o.cipherMode ?? 'xts';
  const ivgenAlg = o.ivgenAlg ?? 'plain64';
  const hashAlg = o.hashAlg ?? 'sha256';
  const ivgenHashAlg = o.ivgenHashAlg ?? (ivgenAlg === 'essiv' ? 'sha256' : undefined);
  luksCipherName(cipherAlg); // QEMU's first refusal: a cipher LUKS has no name for
  const ivgenCipherAlg = ivgenAlg === 'essiv' ? essivCipher(cipherAlg, ivgenHashAlg!) : cipherAlg;
  const masterKeyLen = KEY_LEN[cipherAlg] * (cipherMode === 'xts' ? 2 : 1);
  opensslCipher(cipherAlg, cipherMode);
  if (ivgenAlg === 'essiv') opensslCipher(ivgenCipherAlg, 'ecb');
  return { cipherAlg, cipherMode, ivgenAlg, ivgenHashAlg, ivgenCipherAlg, hashAlg, masterKeyLen };
}

/** Bytes of header and key material a new volume with these options takes (its payload offset). */
export function luks1HeaderSize(o: Luks1CreateOptions): number {
  const headerSectors = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;
  return (headerSectors + LUKS_NUM_KEY_SLOTS * splitKeySectors(luks1CreateSpec(o).masterKeyLen, LUKS_STRIPES)) * LUKS_SECTOR_SIZE;
}

/**
 * Builds the header and slot 0. `init(headerSize)` is called once the layout
 * is known (the caller sizes its file or clusters), then the key material and
 * the header are written through `write`.
 */
export async function createLuks1(o: Luks1CreateOptions, password: Buffer, init: (headerSize: number) => Promise<void>, write: WriteAt): Promise<Luks1Created> {
  const iterTime = o.iterTime ?? DEFAULT_ITER_TIME_MS;
  // Refuses what blockd cannot run before anything is written.
  const spec = luks1CreateSpec(o);
  const { cipherAlg, cipherMode, ivgenAlg, ivgenHashAlg, hashAlg, masterKeyLen } = spec;
  const cipherName = luksCipherName(cipherAlg);
  const modeSpec = ivgenHashAlg ? `${cipherMode}-${ivgenAlg}:${ivgenHashAlg}` : `${cipherMode}-${ivgenAlg}`;

  const area = splitKeySectors(masterKeyLen, LUKS_STRIPES);
  const headerSectors = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;
  const header: Luks1Header = {
    version: 1,
    cipherName,
    cipherMode: modeSpec,
    hashSpec: hashAlg,
    payloadOffsetSector: headerSectors + LUKS_NUM_KEY_SLOTS * area,
    masterKeyLen,
    masterKeyDigest: Buffer.alloc(LUKS_DIGEST_LEN),
    masterKeySalt: randomBytes(LUKS_SALT_LEN),
    masterKeyIterations: 0,
    uuid: randomUUID(),
    keySlots: Array.from({ length: LUKS_NUM_KEY_SLOTS }, (_, i) => ({
      active: KEY_SLOT_DISABLED, iterations: 0, salt: Buffer.alloc(LUKS_SALT_LEN), keyOffsetSector: headerSectors + i * area, stripes: LUKS_STRIPES,
    })),
  };
  serializeLuks1Header(header); // the name length checks, before any I/O
  const masterKey = randomBytes(masterKeyLen);
  try {
    const mkIters = Math.floor((await pbkdf2IterationsPerSecond(hashAlg, masterKey, header.masterKeySalt, LUKS_DIGEST_LEN)) * iterTime / 1000 / 8);
    if (mkIters > 0xffffffff) throw new BlockError('EINVAL', `PBKDF iterations ${mkIters} larger than ${0xffffffff}`);
    header.masterKeyIterations = Math.max(mkIters, MIN_MASTER_KEY_ITERS);
    header.masterKeyDigest = await pbkdf2(hashAlg, masterKey, header.masterKeySalt, header.masterKeyIterations, LUKS_DIGEST_LEN);
    const payloadOffset = header.payloadOffsetSector * LUKS_SECTOR_SIZE;
    await init(payloadOffset);
    const slotIters = await pbkdf2IterationsPerSecond(hashAlg, password, header.keySlots[0].salt, masterKeyLen);
    await storeKey(header, spec, 0, password, masterKey, slotIters, iterTime, write);
    await write(0, serializeLuks1Header(header));
    return { header, spec, masterKey, payloadOffset };
  } catch (e) {
    masterKey.fill(0);
    throw e;
  }
}
