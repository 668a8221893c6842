/**
 * DMG (Apple's UDIF) metadata as QEMU 7.2's block/dmg.c reads it. Pure:
 * the koly trailer's search and fields, the resource fork's header, the
 * XML property list's <data> elements (glib's lenient base64), and the
 * 'mish' blocks (blkx tables) whose 40-byte entries make the chunk table.
 * Numbers that QEMU keeps in 64 bits are bigints here and wrap as QEMU's do.
 */
import { BlockError } from '../../../util/errors.ts';

export const UDZE = 0;
export const UDRW = 1;
export const UDIG = 2;
export const UDZO = 0x80000005;
export const UDBZ = 0x80000006;
export const ULFO = 0x80000007;
export const UDCM = 0x7ffffffe;
export const UDLE = 0xffffffff;

/** QEMU's DMG_LENGTHS_MAX and DMG_SECTORCOUNTS_MAX. */
export const LENGTHS_MAX = 64 * 1024 * 1024;
export const SECTORCOUNTS_MAX = LENGTHS_MAX / 512;
/** The XML property list QEMU reads at most. */
export const PLIST_MAX = 16 * 1024 * 1024;

const M64 = (1n << 64n) - 1n;
/**
 * A failure QEMU's dmg_open gives only as an errno (the block layer then
 * says "Could not open 'x': Invalid argument"), with the line it prints to
 * stderr first, if any.
 */
export class DmgErrno extends BlockError {
  constructor(readonly report?: string) { super('EINVAL', 'Invalid argument'); }
}
const einval = () => new DmgErrno();

/** QEMU's dmg_probe: the filename's ".dmg" ending, nothing in the data. */
export const probeDmg = (_head: Buffer, filename?: string): number =>
  (filename !== undefined && filename.length > 4 && filename.endsWith('.dmg') ? 2 : 0);

/**
 * Where the koly trailer starts, given the file's length and the bytes
 * [searchStart(length), +searchLength(length)) (dmg_find_koly_offset: the
 * magic in the last 511 bytes of the second-last sector or the first 4
 * of the last one).
 */
export const searchStart = (length: number): number => (length > 511 + 512 ? length - 511 - 512 : 0);
export const searchLength = (length: number): number => Math.min(length, 515);

export function findKoly(length: number, buf: Buffer): number {
  if (length < 512) throw new BlockError('EINVAL', 'dmg file must be at least 512 bytes long');
  for (let i = 0; i < buf.length - 3; i++) {
    if (buf[i] === 0x6b && buf[i + 1] === 0x6f && buf[i + 2] === 0x6c && buf[i + 3] === 0x79) return searchStart(length) + i;
  }
  throw new BlockError('EINVAL', 'Could not locate UDIF trailer in dmg file');
}

export interface Koly {
  dataForkOffset: bigint;
  rsrcOffset: bigint;
  rsrcLength: bigint;
  xmlOffset: bigint;
  xmlLength: bigint;
  /** Disk sectors. */
  sectors: bigint;
}

/** The BDRV_MAX_LENGTH of QEMU's block layer: requests ending past it fail with EIO. */
export const MAX_LENGTH = (1n << 63n) - (1n << 30n);

/** The trailer's fields (512 bytes from the koly offset, zeroes past the file's end), checked in QEMU's order. */
export function parseKoly(b: Buffer, kolyOffset: number): Koly {
  const koly = BigInt(kolyOffset);
  const dataForkOffset = b.readBigUInt64BE(0x18);
  if (dataForkOffset > koly) throw einval();
  const rsrcOffset = b.readBigUInt64BE(0x28);
  const rsrcLength = b.readBigUInt64BE(0x30);
  if (rsrcOffset >= koly || rsrcLength > koly - rsrcOffset) throw einval();
  const xmlOffset = b.readBigUInt64BE(0xd8);
  const xmlLength = b.readBigUInt64BE(0xe0);
  if (xmlOffset >= koly || xmlLength > koly - xmlOffset) throw einval();
  const sectors = b.readBigInt64BE(0x1ec);
  if (sectors < 0n) throw einval();
  return { dataForkOffset, rsrcOffset, rsrcLength, xmlOffset, xmlLength, sectors };
}

/**
 * The disk's size in bytes, after the tables are read (QEMU's
 * refresh_total_sectors: the int64 product, which wraps, past
 * BDRV_MAX_LENGTH). A product that wrapped leaves QEMU a node whose size it
 * cannot get ("Can't get image size"); blockd refuses that one too.
 */
export function diskSize(sectors: bigint): number {
  if (BigInt.asIntN(64, sectors * 512n) > MAX_LENGTH || sectors * 512n > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new BlockError('EOVERFLOW', 'Could not refresh total sector count: File too large');
  }
  return Number(sectors) * 512;
}

/** The chunk table (BDRVDMGState's arrays), in the images' order. */
export interface ChunkTable {
  types: number[];
  sectors: bigint[];
  counts: bigint[];
  offsets: bigint[];
  lengths: bigint[];
  /** Largest compressed chunk and most sectors a chunk buffers (DmgHeaderState; both start at 1). */
  maxCompressed: number;
  maxSectors: number;
  /** What QEMU's warn_report_once would print, once each. */
  warnings: Set<string>;
}

export const emptyTable = (): ChunkTable => ({ types: [], sectors: [], counts: [], offsets: [], lengths: [], maxCompressed: 1, maxSectors: 1, warnings: new Set() });

/** Chunk types QEMU 7.2 keeps (dmg_is_known_block_type; Debian's build has neither the dmg-bz2 nor the dmg-lzfse module). */
const KNOWN = new Set([UDZE, UDRW, UDIG, UDZO]);

/**
 * dmg_read_mish_block: appends the entries of one blkx table. Data that is
 * not a mish block (wrong magic or under 244 bytes) is skipped; entries of
 * types QEMU cannot read are left out (their sectors then fail to read).
 */
export function addMishBlock(t: ChunkTable, b: Buffer, dataForkOffset: bigint): void {
  if (b.length < 244 || b.readUInt32BE(0) !== 0x6d697368) return;
  const outOffset = b.readBigUInt64BE(8);
  const inOffset = (dataForkOffset + b.readBigUInt64BE(0x18)) & M64;
  const n = Math.floor((b.length - 204) / 40);
  for (let k = 0; k < n; k++) {
    const at = 204 + 40 * k;
    const type = b.readUInt32BE(at);
    if (!KNOWN.has(type)) {
      if (type === UDBZ) t.warnings.add('dmg-bzip2 module is missing, accessing bzip2 compressed blocks will result in I/O errors');
      else if (type === ULFO) t.warnings.add('dmg-lzfse module is missing, accessing lzfse compressed blocks will result in I/O errors');
      else if (type !== UDCM && type !== UDLE) t.warnings.add(`Image contains chunks of unknown type ${type.toString(16)}, accessing them will result in I/O errors`);
      continue;
    }
    const i = t.types.length;
    const count = b.readBigUInt64BE(at + 0x10);
    if (type !== UDZE && type !== UDIG && count > BigInt(SECTORCOUNTS_MAX)) {
      throw new DmgErrno(`sector count ${count} for chunk ${i} is larger than max (${SECTORCOUNTS_MAX})`);
    }
    const length = b.readBigUInt64BE(at + 0x20);
    if (length > BigInt(LENGTHS_MAX)) {
      throw new DmgErrno(`length ${length} for chunk ${i} is larger than max (${LENGTHS_MAX})`);
    }
    t.types.push(type);
    t.sectors.push((b.readBigUInt64BE(at + 8) + outOffset) & M64);
    t.counts.push(count);
    t.offsets.push((b.readBigUInt64BE(at + 0x18) + inOffset) & M64);
    t.lengths.push(length);
    // update_max_chunk_size
    if (type === UDZO) {
      t.maxCompressed = Math.max(t.maxCompressed, Number(length));
      t.maxSectors = Math.max(t.maxSectors, Number(count));
    } else if (type === UDRW) {
      t.maxSectors = Math.max(t.maxSectors, Math.ceil(Number(length) / 512));
    }
  }
}

/** The resource fork's header (dmg_read_resource_fork): where its data begins and where it ends, relative to the fork. */
export function parseResourceHeader(b: Buffer, forkLength: bigint): { begin: number; end: number } {
  const dataOffset = b.readUInt32BE(0);
  if (BigInt(dataOffset) > forkLength) throw einval();
  const count = b.readUInt32BE(8);
  // QEMU adds the two 32-bit numbers in 32 bits.
  if (count === 0 || BigInt((dataOffset + count) >>> 0) > forkLength) throw einval();
  return { begin: dataOffset, end: dataOffset + count };
}

// glib's base64 alphabet ranks ('=' ranks 0; anything else is skipped).
const RANK = new Uint8Array(256).fill(0xff);
'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.split('').forEach((c, i) => { RANK[c.charCodeAt(0)] = i; });
RANK[0x3d] = 0;

/**
 * g_base64_decode (glib 2.74): characters outside the alphabet are
 * skipped; each quantum of four gives its first byte, its second unless
 * its third character is '=', its third unless its fourth is '='; a
 * partial quantum at the end gives nothing.
 */
export function glibBase64(s: Buffer): Buffer {
  const out = Buffer.alloc(Math.floor((s.length * 3) / 4) + 3);
  let n = 0;
  let v = 0;
  let i = 0;
  let last0 = 0;
  let last1 = 0;
  for (const c of s) {
    const r = RANK[c];
    if (r === 0xff) continue;
    last1 = last0;
    last0 = c;
    v = ((v << 6) | r) & 0xffffff;
    if (++i === 4) {
      out[n++] = v >> 16;
      if (last1 !== 0x3d) out[n++] = (v >> 8) & 0xff;
      if (last0 !== 0x3d) out[n++] = v & 0xff;
      i = 0;
    }
  }
  return out.subarray(0, n);
}

/**
 * dmg_read_plist_xml's walk: the decoded contents of every
 * <data>...</data> in the property list, which is read as a C string (up
 * to its first NUL). A <data> without its </data> is malformed.
 */
export function plistData(xml: Buffer): Buffer[] {
  const nul = xml.indexOf(0);
  const text = nul < 0 ? xml : xml.subarray(0, nul);
  const out: Buffer[] = [];
  for (let at = 0; ;) {
    const begin = text.indexOf('<data>', at, 'latin1');
    if (begin < 0) return out;
    const end = text.indexOf('</data>', begin + 6, 'latin1');
    if (end < 0) throw einval();
    out.push(glibBase64(text.subarray(begin + 6, end)));
    at = end + 1;
  }
}

/** search_chunk: QEMU's binary search over the table (which it takes to be sorted); -1 when no chunk holds the sector. */
export function searchChunk(t: ChunkTable, sector: bigint): number {
  const n = t.types.length;
  let lo = 0;
  let hi = n;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    // QEMU reads one entry past the table here; whatever it holds, the search fails.
    if (mid >= n) return -1;
    if (t.sectors[mid] > sector) {
      if (mid === 0) return -1;
      hi = mid - 1;
    } else if (((t.sectors[mid] + t.counts[mid]) & M64) > sector) {
      return mid;
    } else {
      lo = mid + 1;
    }
  }
  return -1;
}

/** is_sector_in_chunk. */
export const inChunk = (t: ChunkTable, i: number, sector: bigint): boolean =>
  i >= 0 && i < t.types.length && t.sectors[i] <= sector && ((t.sectors[i] + t.counts[i]) & M64) > sector;
