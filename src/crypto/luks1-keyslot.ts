/**
 * Opening and filling LUKS1 key slots. A slot holds the master key split by
 * the anti-forensic splitter (4000 stripes) and encrypted, sector by sector
 * as the payload is, with a key derived from the passphrase by PBKDF2 over
 * the slot's salt. The master key is recognised by its PBKDF2 digest in the
 * header (QEMU crypto/block-luks.c load_key / find_key / store_key).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { BlockError } from '../util/errors.ts';
import { afMerge, afSplit } from './afsplit.ts';
import type { CipherSpec } from './cipher-spec.ts';
import { KEY_SLOT_ENABLED, LUKS_DIGEST_LEN, LUKS_NUM_KEY_SLOTS, LUKS_SALT_LEN, LUKS_SECTOR_SIZE, type Luks1Header } from './luks1-header.ts';
import { pbkdf2 } from './pbkdf2.ts';
import { SectorCipher } from './sector-cipher.ts';

/** Reads `length` bytes at `offset` of the LUKS volume (relative to its header). */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;
export type WriteAt = (offset: number, data: Buffer) => Promise<void>;

export const MIN_SLOT_KEY_ITERS = 1000;
export const MIN_MASTER_KEY_ITERS = 1000;

/** Whether `key` is the master key of `header`. */
export async function masterKeyMatches(header: Luks1Header, spec: CipherSpec, key: Buffer): Promise<boolean> {
  const digest = await pbkdf2(spec.hashAlg, key, header.masterKeySalt, header.masterKeyIterations, LUKS_DIGEST_LEN);
  return timingSafeEqual(digest, header.masterKeyDigest);
}

/** The master key from slot `index` if `password` opens it, else null. */
export async function loadKey(header: Luks1Header, spec: CipherSpec, index: number, password: Buffer, read: ReadAt): Promise<Buffer | null> {
  const slot = header.keySlots[index];
  if (slot.active !== KEY_SLOT_ENABLED) return null;
  const keyLen = header.masterKeyLen;
  const slotKey = await pbkdf2(spec.hashAlg, password, slot.salt, slot.iterations, keyLen);
  const split = await read(slot.keyOffsetSector * LUKS_SECTOR_SIZE, keyLen * slot.stripes);
  const cipher = SectorCipher.create(spec, slotKey);
  slotKey.fill(0);
  // The split key's last sector may be partial: decrypt whole sectors of a padded copy.
  const padded = Buffer.alloc(Math.ceil(split.length / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE);
  split.copy(padded);
  split.fill(0);
  try {
    await cipher.crypt(padded, 0, false);
  } finally {
    cipher.wipe();
  }
  const candidate = afMerge(spec.hashAlg, padded, keyLen, slot.stripes);
  padded.fill(0);
  if (await masterKeyMatches(header, spec, candidate)) return candidate;
  candidate.fill(0);
  return null;
}

/** Tries every slot in turn (QEMU's find_key); the wrong passphrase gets QEMU's text. */
export async function findKey(header: Luks1Header, spec: CipherSpec, password: Buffer, read: ReadAt): Promise<{ key: Buffer; slot: number }> {
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
    const key = await loadKey(header, spec, i, password, read);
    if (key) return { key, slot: i };
  }
  throw new BlockError('EPERM', 'Invalid password, cannot unlock any keyslot');
}

/**
 * Fills slot `index` with `masterKey` under `password` (new salt, iterations
 * from `itersPerSecond` scaled to `iterTimeMs`) and writes its key material;
 * the caller writes the header, whose slot entry is updated here.
 */
export async function storeKey(header: Luks1Header, spec: CipherSpec, index: number, password: Buffer, masterKey: Buffer,
  itersPerSecond: number, iterTimeMs: number, write: WriteAt): Promise<void> {
  const slot = header.keySlots[index];
  slot.salt = randomBytes(LUKS_SALT_LEN);
  const iters = Math.floor((itersPerSecond * iterTimeMs) / 1000);
  if (iters > 0xffffffff) throw new BlockError('EINVAL', `PBKDF iterations ${iters} larger than ${0xffffffff}`);
  slot.iterations = Math.max(iters, MIN_SLOT_KEY_ITERS);
  const slotKey = await pbkdf2(spec.hashAlg, password, slot.salt, slot.iterations, header.masterKeyLen);
  const split = afSplit(spec.hashAlg, masterKey, slot.stripes);
  const padded = Buffer.alloc(Math.ceil(split.length / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE);
  split.copy(padded);
  split.fill(0);
  const cipher = SectorCipher.create(spec, slotKey);
  slotKey.fill(0);
  try {
    await cipher.crypt(padded, 0, true);
  } finally {
    cipher.wipe();
  }
  await write(slot.keyOffsetSector * LUKS_SECTOR_SIZE, padded.subarray(0, masterKey.length * slot.stripes));
  slot.active = KEY_SLOT_ENABLED;
}
