/**
 * Opening a LUKS1 volume (QEMU's qcrypto_block_luks_open): read and check the
 * header, resolve its cipher, find the key slot the passphrase opens and key
 * the payload cipher with the master key. Shared by the luks format driver
 * and qcow2's encrypt.format=luks (whose "volume" is the header region
 * inside the qcow2 file).
 */
import { BlockError } from '../util/errors.ts';
import { parseCipherSpec, type CipherSpec } from './cipher-spec.ts';
import { KEY_SLOT_ENABLED, LUKS1_HEADER_SIZE, LUKS_SECTOR_SIZE, parseLuks1Header, type Luks1Header } from './luks1-header.ts';
import { findKey, type ReadAt } from './luks1-keyslot.ts';
import { SectorCipher } from './sector-cipher.ts';

export interface Luks1Volume {
  header: Luks1Header;
  spec: CipherSpec;
  /** Keyed with the master key; the owner wipes it at close. */
  cipher: SectorCipher;
  /** Byte offset of the payload from the start of the header. */
  payloadOffset: number;
}

/** Reads and checks the header only (for an open without I/O, e.g. qemu-img info's). */
export async function readLuks1Header(read: ReadAt): Promise<{ header: Luks1Header; spec: CipherSpec }> {
  const header = parseLuks1Header(await read(0, LUKS1_HEADER_SIZE));
  return { header, spec: parseCipherSpec(header.cipherName, header.cipherMode, header.hashSpec, header.masterKeyLen) };
}

export async function openLuks1(read: ReadAt, password: Buffer): Promise<Luks1Volume> {
  const { header, spec } = await readLuks1Header(read);
  const { key } = await findKey(header, spec, password, read);
  try {
    return { header, spec, cipher: SectorCipher.create(spec, key, LUKS_SECTOR_SIZE), payloadOffset: header.payloadOffsetSector * LUKS_SECTOR_SIZE };
  } finally {
    key.fill(0);
  }
}

/** QEMU's QCryptoBlockInfoLUKS (query-named-block-nodes' format-specific data), keys in QEMU's order. */
export function luks1Info(header: Luks1Header, spec: CipherSpec): Record<string, unknown> {
  const info: Record<string, unknown> = {
    'cipher-alg': spec.cipherAlg,
    'cipher-mode': spec.cipherMode,
    'ivgen-alg': spec.ivgenAlg,
  };
  if (spec.ivgenAlg === 'essiv') info['ivgen-hash-alg'] = spec.ivgenHashAlg;
  info['hash-alg'] = spec.hashAlg;
  info['payload-offset'] = header.payloadOffsetSector * LUKS_SECTOR_SIZE;
  info['master-key-iters'] = header.masterKeyIterations;
  info.uuid = header.uuid;
  info.slots = header.keySlots.map((s) => {
    const active = s.active === KEY_SLOT_ENABLED;
    return active
      ? { active, iters: s.iterations, stripes: s.stripes, 'key-offset': s.keyOffsetSector * LUKS_SECTOR_SIZE }
      : { active, 'key-offset': s.keyOffsetSector * LUKS_SECTOR_SIZE };
  });
  return info;
}

/**
 * The passphrase in a secret's bytes as QEMU takes it
 * (qcrypto_secret_lookup_as_utf8, then strlen): valid UTF-8, up to the first NUL.
 */
export function passwordFromSecret(id: string, data: Buffer): Buffer {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(data);
  } catch {
    data.fill(0);
    throw new BlockError('EINVAL', `Data from secret ${id} is not valid UTF-8`);
  }
  const nul = data.indexOf(0);
  return nul < 0 ? data : data.subarray(0, nul);
}
