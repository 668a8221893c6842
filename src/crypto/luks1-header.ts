/**
 * The LUKS1 on-disk header (cryptsetup's "LUKS On-Disk Format Specification"
 * 1.2): 592 big-endian bytes at offset 0, followed by the key material of
 * eight key slots and then the encrypted payload. Parsing is pure; the
 * checks and their texts are QEMU 7.2's (crypto/block-luks.c), which
 * qemu-img prints for a damaged header.
 */
import { BlockError } from '../util/errors.ts';

export const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]); // "LUKS\xba\xbe"
export const LUKS1_HEADER_SIZE = 592;
export const LUKS_SECTOR_SIZE = 512;
export const LUKS_NUM_KEY_SLOTS = 8;
export const LUKS_STRIPES = 4000;
export const LUKS_SALT_LEN = 32;
export const LUKS_DIGEST_LEN = 20;
/** Key material starts at this byte offset; slot areas are rounded to it. */
export const LUKS_KEY_SLOT_OFFSET = 4096;
export const KEY_SLOT_DISABLED = 0x0000dead;
export const KEY_SLOT_ENABLED = 0x00ac71f3;

const FIELD = { cipherName: [8, 32], cipherMode: [40, 32], hashSpec: [72, 32], uuid: [168, 40] } as const;
const SLOTS_AT = 208;
const SLOT_SIZE = 48;

export interface Luks1KeySlot {
  active: number;
  iterations: number;
  salt: Buffer;
  /** In 512-byte sectors from the start of the header. */
  keyOffsetSector: number;
  stripes: number;
}

/** The header's fields as stored (strings without their NUL padding). */
export interface Luks1Header {
  version: number;
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  payloadOffsetSector: number;
  masterKeyLen: number;
  masterKeyDigest: Buffer;
  masterKeySalt: Buffer;
  masterKeyIterations: number;
  uuid: string;
  keySlots: Luks1KeySlot[];
}

/** Whether `buf` starts with a LUKS header of version 1 (QEMU's probe). */
export function hasLuks1Format(buf: Buffer): boolean {
  return buf.length >= 8 && buf.subarray(0, 6).equals(LUKS_MAGIC) && buf.readUInt16BE(6) === 1;
}

/** A NUL-padded string field; null if it has no NUL (QEMU refuses that). */
function cString(buf: Buffer, [at, len]: readonly [number, number]): string | null {
  const field = buf.subarray(at, at + len);
  const nul = field.indexOf(0);
  return nul < 0 ? null : field.toString('latin1', 0, nul);
}

/** Decodes the 592 header bytes after checking magic, version and the string fields' NULs (in QEMU's order). */
export function parseLuks1Header(buf: Buffer): Luks1Header {
  if (buf.length < LUKS1_HEADER_SIZE || !buf.subarray(0, 6).equals(LUKS_MAGIC)) {
    throw new BlockError('EINVAL', 'Volume is not in LUKS format');
  }
  const version = buf.readUInt16BE(6);
  if (version !== 1) throw new BlockError('ENOTSUP', `LUKS version ${version} is not supported`);
  const cipherName = cString(buf, FIELD.cipherName);
  if (cipherName === null) throw new BlockError('EINVAL', 'LUKS header cipher name is not NUL terminated');
  const cipherMode = cString(buf, FIELD.cipherMode);
  if (cipherMode === null) throw new BlockError('EINVAL', 'LUKS header cipher mode is not NUL terminated');
  const hashSpec = cString(buf, FIELD.hashSpec);
  if (hashSpec === null) throw new BlockError('EINVAL', 'LUKS header hash spec is not NUL terminated');
  const keySlots: Luks1KeySlot[] = [];
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
    const at = SLOTS_AT + i * SLOT_SIZE;
    keySlots.push({
      active: buf.readUInt32BE(at),
      iterations: buf.readUInt32BE(at + 4),
      salt: Buffer.from(buf.subarray(at + 8, at + 8 + LUKS_SALT_LEN)),
      keyOffsetSector: buf.readUInt32BE(at + 40),
      stripes: buf.readUInt32BE(at + 44),
    });
  }
  const header: Luks1Header = {
    version,
    cipherName,
    cipherMode,
    hashSpec,
    payloadOffsetSector: buf.readUInt32BE(104),
    masterKeyLen: buf.readUInt32BE(108),
    masterKeyDigest: Buffer.from(buf.subarray(112, 112 + LUKS_DIGEST_LEN)),
    masterKeySalt: Buffer.from(buf.subarray(132, 132 + LUKS_SALT_LEN)),
    masterKeyIterations: buf.readUInt32BE(164),
    uuid: cString(buf, FIELD.uuid) ?? buf.toString('latin1', 168, 208),
    keySlots,
  };
  checkLuks1Layout(header);
  return header;
}

/** Sectors one key slot's split key occupies, rounded up to whole 4 KiB areas (QEMU's splitkeylen_sectors). */
export function splitKeySectors(masterKeyLen: number, stripes: number): number {
  const headerSectors = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;
  const sectors = Math.ceil((masterKeyLen * stripes) / LUKS_SECTOR_SIZE);
  return Math.ceil(sectors / headerSectors) * headerSectors;
}

/** QEMU's qcrypto_block_luks_check_header after the string fields: payload, iterations, key slots. */
function checkLuks1Layout(h: Luks1Header): void {
  const headerSectors = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;
  if (h.payloadOffsetSector < headerSectors) throw new BlockError('EINVAL', 'LUKS payload is overlapping with the header');
  if (h.masterKeyIterations === 0) throw new BlockError('EINVAL', 'LUKS key iteration count is zero');
  const slots = h.keySlots;
  for (let i = 0; i < slots.length; i++) {
    const s = slots[i];
    const start = s.keyOffsetSector;
    const len = splitKeySectors(h.masterKeyLen, s.stripes);
    if (s.stripes !== LUKS_STRIPES) throw new BlockError('EINVAL', `Keyslot ${i} is corrupted (stripes ${s.stripes} != ${LUKS_STRIPES})`);
    if (s.active !== KEY_SLOT_DISABLED && s.active !== KEY_SLOT_ENABLED) throw new BlockError('EINVAL', `Keyslot ${i} state (active/disable) is corrupted`);
    if (s.active === KEY_SLOT_ENABLED && s.iterations === 0) throw new BlockError('EINVAL', `Keyslot ${i} iteration count is zero`);
    if (start < headerSectors) throw new BlockError('EINVAL', `Keyslot ${i} is overlapping with the LUKS header`);
    if (start + len > h.payloadOffsetSector) throw new BlockError('EINVAL', `Keyslot ${i} is overlapping with the encrypted payload`);
    for (let j = i + 1; j < slots.length; j++) {
      const start2 = slots[j].keyOffsetSector;
      const len2 = splitKeySectors(h.masterKeyLen, slots[j].stripes);
      if (start + len > start2 && start2 + len2 > start) throw new BlockError('EINVAL', `Keyslots ${i} and ${j} are overlapping in the header`);
    }
  }
}

function putString(buf: Buffer, [at, len]: readonly [number, number], s: string, what: string): void {
  if (Buffer.byteLength(s, 'latin1') >= len) throw new BlockError('EINVAL', `${what} '${s}' is too long for LUKS header`);
  buf.fill(0, at, at + len);
  buf.write(s, at, 'latin1');
}

/** The 592 on-disk bytes of `h` (for creating images and updating key slots). */
export function serializeLuks1Header(h: Luks1Header): Buffer {
  const buf = Buffer.alloc(LUKS1_HEADER_SIZE);
  LUKS_MAGIC.copy(buf, 0);
  buf.writeUInt16BE(h.version, 6);
  putString(buf, FIELD.cipherName, h.cipherName, 'Cipher name');
  putString(buf, FIELD.cipherMode, h.cipherMode, 'Cipher mode');
  putString(buf, FIELD.hashSpec, h.hashSpec, 'Hash name');
  buf.writeUInt32BE(h.payloadOffsetSector, 104);
  buf.writeUInt32BE(h.masterKeyLen, 108);
  h.masterKeyDigest.copy(buf, 112, 0, LUKS_DIGEST_LEN);
  h.masterKeySalt.copy(buf, 132, 0, LUKS_SALT_LEN);
  buf.writeUInt32BE(h.masterKeyIterations, 164);
  buf.write(h.uuid, 168, 39, 'latin1');
  h.keySlots.forEach((s, i) => {
    const at = SLOTS_AT + i * SLOT_SIZE;
    buf.writeUInt32BE(s.active, at);
    buf.writeUInt32BE(s.iterations, at + 4);
    s.salt.copy(buf, at + 8, 0, LUKS_SALT_LEN);
    buf.writeUInt32BE(s.keyOffsetSector, at + 40);
    buf.writeUInt32BE(s.stripes, at + 44);
  });
  return buf;
}
