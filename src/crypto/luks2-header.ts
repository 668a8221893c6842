/**
 * The LUKS2 on-disk header (cryptsetup's "LUKS2 On-Disk Format
 * Specification"): two copies of a 4 KiB binary header, each followed by a
 * JSON area, checksummed together; the copy with the higher sequence number
 * of those that check is the one in force. The JSON names the key slots
 * (their KDF, anti-forensic split and encrypted area), the data segments
 * (offset, size, cipher, sector size, IV tweak) and the digests that tie a
 * master key to both. Parsing only: nothing here writes a header.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { BlockError } from '../util/errors.ts';

export const LUKS2_BINARY_HEADER = 4096;
const MAGIC_PRIMARY = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
const MAGIC_SECONDARY = Buffer.from([0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe]);
/** Header sizes the specification allows (binary header + JSON area). */
const HDR_SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096].map((k) => k * 1024);
const CSUM_OFFSET = 448;
const CSUM_LEN = 64;

export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

export interface Luks2Kdf {
  type: 'pbkdf2' | 'argon2i' | 'argon2id';
  salt: Buffer;
  /** pbkdf2 */
  hash?: string;
  iterations?: number;
  /** argon2: passes, KiB, lanes */
  time?: number;
  memory?: number;
  cpus?: number;
}

export interface Luks2Keyslot {
  id: string;
  /** Bytes of the key this slot holds. */
  keySize: number;
  /** 0 ignore (only tried when named), 1 normal, 2 high. */
  priority: number;
  af: { stripes: number; hash: string };
  area: { offset: number; size: number; encryption: string; keySize: number };
  kdf: Luks2Kdf;
}

export interface Luks2Segment {
  id: string;
  offset: number;
  /** Bytes, or undefined for "dynamic" (to the end of the device). */
  size?: number;
  ivTweak: number;
  encryption: string;
  sectorSize: number;
}

export interface Luks2Digest {
  keyslots: string[];
  segments: string[];
  hash: string;
  iterations: number;
  salt: Buffer;
  digest: Buffer;
}

export interface Luks2Header {
  seqid: number;
  uuid: string;
  label: string;
  hdrSize: number;
  keyslots: Luks2Keyslot[];
  segments: Luks2Segment[];
  digests: Luks2Digest[];
}

const invalid = (what: string) => new BlockError('EINVAL', `LUKS2 header: ${what}`);

/** Whether the first bytes are a LUKS header of version 2. */
export function isLuks2(head: Buffer): boolean {
  return head.length >= 8 && head.subarray(0, 6).equals(MAGIC_PRIMARY) && head.readUInt16BE(6) === 2;
}

function cstr(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.toString('latin1', 0, nul < 0 ? b.length : nul);
}

/** A JSON number or a decimal string of one (the spec writes 64-bit values as strings). */
function num(v: unknown, what: string): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : typeof v === 'number' ? v : NaN;
  if (!Number.isSafeInteger(n) || n < 0) throw invalid(`bad ${what}`);
  return n;
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw invalid(`missing ${what}`);
  return v as Record<string, unknown>;
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string') throw invalid(`missing ${what}`);
  return v;
}

const b64 = (v: unknown, what: string) => Buffer.from(str(v, what), 'base64');

/** One copy (binary header and JSON) at `offset`, or the reason it is unusable. */
async function readCopy(read: ReadAt, offset: number, magic: Buffer): Promise<{ seqid: number; bin: Buffer; json: string } | string> {
  const bin = await read(offset, LUKS2_BINARY_HEADER);
  if (!bin.subarray(0, 6).equals(magic)) return 'bad magic';
  if (bin.readUInt16BE(6) !== 2) return 'not version 2';
  const hdrSize = Number(bin.readBigUInt64BE(8));
  if (!HDR_SIZES.includes(hdrSize)) return 'bad header size';
  if (Number(bin.readBigUInt64BE(256)) !== offset) return 'header offset mismatch';
  const alg = cstr(bin.subarray(72, 104));
  if (alg !== 'sha256') return `unsupported checksum ${alg}`;
  const area = await read(offset + LUKS2_BINARY_HEADER, hdrSize - LUKS2_BINARY_HEADER);
  const zeroed = Buffer.from(bin);
  zeroed.fill(0, CSUM_OFFSET, CSUM_OFFSET + CSUM_LEN);
  const sum = createHash('sha256').update(zeroed).update(area).digest();
  if (!timingSafeEqual(sum, bin.subarray(CSUM_OFFSET, CSUM_OFFSET + sum.length))) return 'checksum mismatch';
  const nul = area.indexOf(0);
  return { seqid: Number(bin.readBigUInt64BE(16)), bin, json: area.toString('utf8', 0, nul < 0 ? area.length : nul) };
}

/** Reads both copies and parses the newer valid one. */
export async function readLuks2Header(read: ReadAt): Promise<Luks2Header> {
  const primary = await readCopy(read, 0, MAGIC_PRIMARY);
  const hdrSize = typeof primary === 'string' ? 16384 : Number(primary.bin.readBigUInt64BE(8));
  const secondary = await readCopy(read, hdrSize, MAGIC_SECONDARY);
  const copies = [primary, secondary].filter((c): c is Exclude<typeof c, string> => typeof c !== 'string');
  if (copies.length === 0) throw invalid(`no valid copy (primary: ${primary}; secondary: ${secondary})`);
  const best = copies.reduce((a, b) => (b.seqid > a.seqid ? b : a));
  let j: Record<string, unknown>;
  try {
    j = obj(JSON.parse(best.json), 'JSON object');
  } catch (e) {
    throw e instanceof BlockError ? e : invalid('JSON area does not parse');
  }
  const config = obj(j.config, 'config');
  const mandatory = (config.requirements as { mandatory?: unknown[] } | undefined)?.mandatory;
  if (Array.isArray(mandatory) && mandatory.length) throw new BlockError('ENOTSUP', `LUKS2 requirements not supported by blockd: ${mandatory.join(', ')}`);
  return {
    seqid: best.seqid,
    uuid: cstr(best.bin.subarray(168, 208)),
    label: cstr(best.bin.subarray(24, 72)),
    hdrSize: Number(best.bin.readBigUInt64BE(8)),
    keyslots: Object.entries(obj(j.keyslots, 'keyslots')).map(([id, v]) => keyslot(id, obj(v, `keyslot ${id}`))).filter((k): k is Luks2Keyslot => !!k),
    segments: Object.entries(obj(j.segments, 'segments')).map(([id, v]) => segment(id, obj(v, `segment ${id}`))),
    digests: Object.entries(obj(j.digests, 'digests')).map(([id, v]) => digest(id, obj(v, `digest ${id}`))),
  };
}

/** A key slot, or undefined for types blockd cannot unlock (reencryption slots). */
function keyslot(id: string, k: Record<string, unknown>): Luks2Keyslot | undefined {
  if (k.type !== 'luks2') return undefined;
  const af = obj(k.af, `keyslot ${id} af`);
  if (af.type !== 'luks1') throw invalid(`keyslot ${id}: unsupported af ${String(af.type)}`);
  const area = obj(k.area, `keyslot ${id} area`);
  if (area.type !== 'raw') throw invalid(`keyslot ${id}: unsupported area ${String(area.type)}`);
  const kdf = obj(k.kdf, `keyslot ${id} kdf`);
  const type = str(kdf.type, `keyslot ${id} kdf type`);
  if (type !== 'pbkdf2' && type !== 'argon2i' && type !== 'argon2id') throw invalid(`keyslot ${id}: unsupported kdf ${type}`);
  return {
    id,
    keySize: num(k.key_size, `keyslot ${id} key_size`),
    priority: k.priority === undefined ? 1 : num(k.priority, `keyslot ${id} priority`),
    af: { stripes: num(af.stripes, `keyslot ${id} stripes`), hash: str(af.hash, `keyslot ${id} af hash`) },
    area: {
      offset: num(area.offset, `keyslot ${id} area offset`), size: num(area.size, `keyslot ${id} area size`),
      encryption: str(area.encryption, `keyslot ${id} area encryption`), keySize: num(area.key_size, `keyslot ${id} area key_size`),
    },
    kdf: type === 'pbkdf2'
      ? { type, salt: b64(kdf.salt, 'kdf salt'), hash: str(kdf.hash, 'kdf hash'), iterations: num(kdf.iterations, 'kdf iterations') }
      : { type, salt: b64(kdf.salt, 'kdf salt'), time: num(kdf.time, 'kdf time'), memory: num(kdf.memory, 'kdf memory'), cpus: num(kdf.cpus, 'kdf cpus') },
  };
}

function segment(id: string, s: Record<string, unknown>): Luks2Segment {
  if (s.type !== 'crypt') throw new BlockError('ENOTSUP', `LUKS2 segment ${id} of type ${String(s.type)} is not supported by blockd`);
  if (s.integrity !== undefined) throw new BlockError('ENOTSUP', `LUKS2 segment ${id} with integrity protection is not supported by blockd`);
  return {
    id,
    offset: num(s.offset, `segment ${id} offset`),
    size: s.size === 'dynamic' ? undefined : num(s.size, `segment ${id} size`),
    ivTweak: num(s.iv_tweak ?? '0', `segment ${id} iv_tweak`),
    encryption: str(s.encryption, `segment ${id} encryption`),
    sectorSize: num(s.sector_size ?? 512, `segment ${id} sector_size`),
  };
}

function digest(id: string, d: Record<string, unknown>): Luks2Digest {
  if (d.type !== 'pbkdf2') throw invalid(`digest ${id}: unsupported type ${String(d.type)}`);
  const list = (v: unknown) => (Array.isArray(v) ? v.map(String) : []);
  return {
    keyslots: list(d.keyslots), segments: list(d.segments), hash: str(d.hash, `digest ${id} hash`),
    iterations: num(d.iterations, `digest ${id} iterations`), salt: b64(d.salt, `digest ${id} salt`), digest: b64(d.digest, `digest ${id} digest`),
  };
}
