/**
 * Unlocking a LUKS2 volume made by cryptsetup (which qsd 7.2 cannot open):
 * for each key slot, high priority first, derive the slot key (PBKDF2, or
 * Argon2i/Argon2id in a worker), decrypt the slot's area (512-byte sectors,
 * IVs from 0), merge the anti-forensic stripes, and accept the result when a
 * digest that binds this slot to the data segment matches. The payload is
 * then the segment: its cipher, its sector size (often 4 KiB) with IVs
 * counted in 512-byte units from iv_tweak, as dm-crypt maps LUKS2 (cryptsetup
 * sets iv_large_sectors only for plain and BitLocker mappings).
 */
import { timingSafeEqual } from 'node:crypto';
import { BlockError } from '../util/errors.ts';
import { afMerge } from './afsplit.ts';
import { argon2 } from './argon2.ts';
import { HASH_ALGS, parseCipherSpec, type CipherSpec, type HashAlg } from './cipher-spec.ts';
import { readLuks2Header, type Luks2Digest, type Luks2Header, type Luks2Keyslot, type Luks2Segment, type ReadAt } from './luks2-header.ts';
import { pbkdf2 } from './pbkdf2.ts';
import { SectorCipher } from './sector-cipher.ts';

/** dm-crypt's IV unit: IVs count 512-byte sectors whatever the segment's sector size. */
export const LUKS2_IV_UNIT = 512;

export interface Luks2Volume {
  header: Luks2Header;
  segment: Luks2Segment;
  spec: CipherSpec;
  /** Keyed with the master key, sectors of the segment's size; the owner wipes it at close. */
  cipher: SectorCipher;
}

function hashAlg(name: string): HashAlg {
  if (!(HASH_ALGS as readonly string[]).includes(name)) throw new BlockError('ENOTSUP', `Hash algorithm '${name}' not supported`);
  return name as HashAlg;
}

/** "aes-xts-plain64" → the cipher spec, as LUKS1's name and mode fields would give it. */
function specOf(encryption: string, keySize: number, hash: HashAlg): CipherSpec {
  const dash = encryption.indexOf('-');
  if (dash < 0) throw new BlockError('EINVAL', `Unexpected cipher string format '${encryption}'`);
  return parseCipherSpec(encryption.slice(0, dash), encryption.slice(dash + 1), hash, keySize);
}

async function slotKey(k: Luks2Keyslot, password: Buffer): Promise<Buffer> {
  const f = k.kdf;
  if (f.type === 'pbkdf2') return pbkdf2(hashAlg(f.hash!), password, f.salt, f.iterations!, k.area.keySize);
  return argon2({ type: f.type, iterations: f.time!, memorySize: f.memory!, parallelism: f.cpus! }, password, f.salt, k.area.keySize);
}

async function digestMatches(d: Luks2Digest, key: Buffer): Promise<boolean> {
  const got = await pbkdf2(hashAlg(d.hash), key, d.salt, d.iterations, d.digest.length);
  return got.length === d.digest.length && timingSafeEqual(got, d.digest);
}

/** The master key in slot `k`, or null when the password does not open it. */
async function tryKeyslot(k: Luks2Keyslot, digests: Luks2Digest[], password: Buffer, read: ReadAt): Promise<Buffer | null> {
  const key = await slotKey(k, password);
  const splitLen = k.keySize * k.af.stripes;
  if (splitLen > k.area.size) throw new BlockError('EINVAL', `LUKS2 header: keyslot ${k.id} area too small`);
  const padded = Buffer.alloc(Math.ceil(splitLen / 512) * 512);
  (await read(k.area.offset, splitLen)).copy(padded);
  const cipher = SectorCipher.create(specOf(k.area.encryption, k.area.keySize, 'sha256'), key, 512);
  key.fill(0);
  try {
    await cipher.crypt(padded, 0, false);
  } finally {
    cipher.wipe();
  }
  const candidate = afMerge(hashAlg(k.af.hash), padded, k.keySize, k.af.stripes);
  padded.fill(0);
  for (const d of digests) if (await digestMatches(d, candidate)) return candidate;
  candidate.fill(0);
  return null;
}

export async function openLuks2(read: ReadAt, password: Buffer): Promise<Luks2Volume> {
  const header = await readLuks2Header(read);
  const segment = header.segments.find((s) => s.id === '0') ?? header.segments[0];
  if (!segment) throw new BlockError('EINVAL', 'LUKS2 header: no data segment');
  const digests = header.digests.filter((d) => d.segments.includes(segment.id));
  // cryptsetup's order: high-priority slots, then normal ones; "ignore" slots only when asked for by number.
  const slots = header.keyslots.filter((k) => k.priority > 0 && digests.some((d) => d.keyslots.includes(k.id)))
    .sort((a, b) => b.priority - a.priority || Number(a.id) - Number(b.id));
  for (const k of slots) {
    const key = await tryKeyslot(k, digests.filter((d) => d.keyslots.includes(k.id)), password, read);
    if (!key) continue;
    try {
      const spec = specOf(segment.encryption, key.length, 'sha256');
      return { header, segment, spec, cipher: SectorCipher.create(spec, key, segment.sectorSize, LUKS2_IV_UNIT) };
    } finally {
      key.fill(0);
    }
  }
  throw new BlockError('EPERM', 'Invalid password, cannot unlock any keyslot');
}

/** query-named-block-nodes' format-specific data: QCryptoBlockInfoLUKS's members where LUKS2 has them. */
export function luks2Info(v: Luks2Volume): Record<string, unknown> {
  const info: Record<string, unknown> = { 'cipher-alg': v.spec.cipherAlg, 'cipher-mode': v.spec.cipherMode, 'ivgen-alg': v.spec.ivgenAlg };
  if (v.spec.ivgenAlg === 'essiv') info['ivgen-hash-alg'] = v.spec.ivgenHashAlg;
  const d = v.header.digests.find((x) => x.segments.includes(v.segment.id));
  if (d) { info['hash-alg'] = d.hash; info['master-key-iters'] = d.iterations; }
  info['payload-offset'] = v.segment.offset;
  info['sector-size'] = v.segment.sectorSize;
  info.uuid = v.header.uuid;
  info.slots = v.header.keyslots.map((k) => ({ active: true, ...(k.kdf.type === 'pbkdf2' ? { iters: k.kdf.iterations } : {}), stripes: k.af.stripes, 'key-offset': k.area.offset }));
  return info;
}
