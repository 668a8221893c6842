/**
 * qcow2 header and header extensions: parsing (with every check QEMU makes,
 * and its messages) and serialising. Pure: works on the bytes of the first
 * cluster. Layout facts from qemu's docs/interop/qcow2.txt.
 */
import { BlockError } from '../../../util/errors.ts';

export const QCOW2_MAGIC = 0x514649fb;

export const Incompat = { DIRTY: 1n, CORRUPT: 2n, DATA_FILE: 4n, COMPRESSION: 8n, EXTL2: 16n } as const;
export const KNOWN_INCOMPAT = 31n;
export const Compat = { LAZY_REFCOUNTS: 1n } as const;
export const Autoclear = { BITMAPS: 1n, DATA_FILE_RAW: 2n } as const;
export const KNOWN_AUTOCLEAR = 3n;

export const ExtType = {
  END: 0, BACKING_FORMAT: 0xe2792aca, FEATURE_TABLE: 0x6803f857, BITMAPS: 0x23852875,
  CRYPTO: 0x0537be77, DATA_FILE: 0x44415441,
} as const;

/** Header field offsets that the driver rewrites in place. */
export const HeaderField = {
  SIZE: 24, L1_SIZE: 36, L1_OFFSET: 40, REFTABLE_OFFSET: 48, REFTABLE_CLUSTERS: 56,
  INCOMPAT: 72, COMPAT: 80, AUTOCLEAR: 88,
} as const;

/** QEMU's implementation limits (qcow2.h). */
export const Limit = {
  MIN_CLUSTER_BITS: 9, MAX_CLUSTER_BITS: 21,
  MAX_L1_BYTES: 32 * 1024 * 1024, MAX_REFTABLE_BYTES: 8 * 1024 * 1024,
  MAX_SNAPSHOTS: 65536, MAX_BACKING_NAME: 1023, MAX_BITMAPS: 65535,
} as const;

export interface FeatureName { type: number; bit: number; name: string }
export interface HeaderExtension { type: number; data: Buffer }

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  headerLength: number;
  /** 0 zlib, 1 zstd. */
  compressionType: number;
  /** Header bytes past the fields we know (105..headerLength), kept verbatim. */
  extraFields: Buffer;
  /** Every extension in file order, known or not (rewritten verbatim). */
  extensions: HeaderExtension[];
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  featureNames: FeatureName[];
  bitmaps?: { nbBitmaps: number; directorySize: number; directoryOffset: number };
  crypto?: { offset: number; length: number };
}

const invalid = (msg: string) => new BlockError('EINVAL', msg);

/** A 64-bit field as a number, or Infinity when it cannot be an offset we can use. */
function u64(buf: Buffer, off: number): number {
  const v = buf.readBigUInt64BE(off);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(v);
}

/** QEMU's validate_table_offset: aligned, and the table's end representable. */
function tableOffsetOk(offset: number, entries: number, entryLen: number, clusterSize: number): boolean {
  if (!Number.isFinite(offset)) return false;
  if (entries * entryLen > Number.MAX_SAFE_INTEGER - offset) return false;
  return offset % clusterSize === 0;
}

/**
 * Parses the header from the first bytes of the image (at least the first
 * cluster, or the whole file if shorter). Throws BlockError with QEMU's text.
 */
export function parseHeader(buf: Buffer): Qcow2Header {
  if (buf.length < 72 || buf.readUInt32BE(0) !== QCOW2_MAGIC) throw invalid('Image is not in qcow2 format');
  const version = buf.readUInt32BE(4);
  if (version < 2 || version > 3) throw invalid(`Unsupported qcow2 version ${version}`);
  const clusterBits = buf.readUInt32BE(20);
  if (clusterBits < Limit.MIN_CLUSTER_BITS || clusterBits > Limit.MAX_CLUSTER_BITS) {
    throw invalid(`Unsupported cluster size: 2^${clusterBits}`);
  }
  const clusterSize = 2 ** clusterBits;
  const h: Qcow2Header = {
    version: version as 2 | 3,
    backingFileOffset: u64(buf, 8),
    backingFileSize: buf.readUInt32BE(16),
    clusterBits,
    size: u64(buf, 24),
    cryptMethod: buf.readUInt32BE(32),
    l1Size: buf.readUInt32BE(36),
    l1TableOffset: u64(buf, 40),
    refcountTableOffset: u64(buf, 48),
    refcountTableClusters: buf.readUInt32BE(56),
    nbSnapshots: buf.readUInt32BE(60),
    snapshotsOffset: u64(buf, 64),
    incompatible: 0n, compatible: 0n, autoclear: 0n,
    refcountOrder: 4, headerLength: 72, compressionType: 0,
    extraFields: Buffer.alloc(0), extensions: [], featureNames: [],
  };
  if (version === 3) {
    if (buf.length < 104) throw invalid('qcow2 header too short');
    h.incompatible = buf.readBigUInt64BE(72);
    h.compatible = buf.readBigUInt64BE(80);
    h.autoclear = buf.readBigUInt64BE(88);
    h.refcountOrder = buf.readUInt32BE(96);
    h.headerLength = buf.readUInt32BE(100);
    if (h.headerLength < 104) throw invalid('qcow2 header too short');
  }
  if (h.headerLength > clusterSize) throw invalid('qcow2 header exceeds cluster size');
  if (h.headerLength > buf.length) throw invalid('qcow2 header too short');
  if (h.headerLength > 104) {
    h.compressionType = buf[104];
    h.extraFields = Buffer.from(buf.subarray(105, h.headerLength));
  }
  if (h.backingFileOffset !== 0 && h.backingFileOffset > clusterSize) throw invalid('Invalid backing file offset');

  // Extensions live between the header and the backing file name (or the cluster's end).
  const extEnd = Math.min(buf.length, clusterSize,
    h.backingFileOffset && h.backingFileOffset > h.headerLength ? h.backingFileOffset : clusterSize);
  parseExtensions(h, buf, version === 2 ? 72 : h.headerLength, extEnd);

  const unknown = h.incompatible & ~KNOWN_INCOMPAT;
  if (unknown) throw new BlockError('ENOTSUP', `Unsupported qcow2 feature(s): ${describeFeatures(h, unknown)}`);
  if (h.incompatible & Incompat.COMPRESSION) {
    if (h.compressionType === 0) throw invalid('qcow2: Compression type incompatible feature bit must not be set');
  } else if (h.compressionType !== 0) {
    throw invalid('qcow2: Compression type incompatible feature bit must be set');
  }
  if (h.compressionType > 1) throw invalid(`qcow2: unknown compression type: ${h.compressionType}`);
  if (h.refcountOrder > 6) throw invalid('Reference count entry width too large; may not exceed 64 bits');
  if (h.incompatible & Incompat.EXTL2) {
    const sub = clusterSize / 32;
    if (sub < 512) throw invalid(`Unsupported subcluster size: ${sub}`);
  }
  if (h.cryptMethod > 2) throw invalid(`Unsupported encryption method ${h.cryptMethod}`);

  if (h.refcountTableClusters > Limit.MAX_REFTABLE_BYTES / clusterSize) throw invalid('Reference count table too large');
  if (h.refcountTableClusters === 0) throw invalid('Image does not contain a reference count table');
  if (!tableOffsetOk(h.refcountTableOffset, h.refcountTableClusters, clusterSize, clusterSize)) {
    throw invalid('Reference count table offset invalid');
  }
  if (h.nbSnapshots > Limit.MAX_SNAPSHOTS) throw invalid('Snapshot table too large');
  if (!tableOffsetOk(h.snapshotsOffset, h.nbSnapshots, 40, clusterSize)) throw invalid('Snapshot table offset invalid');
  if (h.l1Size > Limit.MAX_L1_BYTES / 8) throw invalid('Active L1 table too large');
  if (!Number.isFinite(h.size)) throw invalid('Image is too big');
  const l2Entries = clusterSize / ((h.incompatible & Incompat.EXTL2) ? 16 : 8);
  const needL1 = Math.ceil(h.size / (clusterSize * l2Entries));
  if (needL1 > 0x7fffffff) throw invalid('Image is too big');
  if (h.l1Size < needL1) throw invalid('L1 table is too small');
  if (!tableOffsetOk(h.l1TableOffset, h.l1Size, 8, clusterSize)) throw invalid('Active L1 table offset invalid');
  if (h.backingFileOffset) {
    if (h.backingFileSize > Limit.MAX_BACKING_NAME || h.backingFileSize >= clusterSize) {
      throw invalid('Backing file name too long');
    }
    const end = h.backingFileOffset + h.backingFileSize;
    if (end > buf.length) throw invalid('Invalid backing file offset');
    h.backingFile = buf.toString('utf8', h.backingFileOffset, end);
  }
  if (h.incompatible & Incompat.DATA_FILE) {
    if (h.backingFile !== undefined) throw invalid('data-file can only be set for images without a backing file');
  } else if (h.autoclear & Autoclear.DATA_FILE_RAW) {
    // QEMU silently drops the raw bit when there is no external data file.
    h.autoclear &= ~Autoclear.DATA_FILE_RAW;
  }
  return h;
}

function parseExtensions(h: Qcow2Header, buf: Buffer, start: number, end: number): void {
  let off = start;
  while (off < end) {
    if (end - off < 8) throw invalid('Header extension too large');
    const type = buf.readUInt32BE(off);
    const len = buf.readUInt32BE(off + 4);
    off += 8;
    if (len > end - off) throw invalid('Header extension too large');
    if (type === ExtType.END) break;
    const data = Buffer.from(buf.subarray(off, off + len));
    off += Math.ceil(len / 8) * 8;
    h.extensions.push({ type, data });
    switch (type) {
      case ExtType.BACKING_FORMAT:
        if (len >= 16) throw invalid(`ERROR: ext_backing_format: len=${len} too large (>=16)`);
        // A C string to QEMU (read up to its NUL); bytes kept as they are (latin1), so a rewrite of the header keeps them.
        h.backingFormat = data.toString('latin1', 0, data.indexOf(0) < 0 ? len : data.indexOf(0));
        break;
      case ExtType.FEATURE_TABLE:
        for (let i = 0; i + 48 <= len; i += 48) {
          const raw = data.subarray(i + 2, i + 48);
          const nul = raw.indexOf(0);
          h.featureNames.push({ type: data[i], bit: data[i + 1], name: raw.toString('utf8', 0, nul < 0 ? 46 : nul) });
        }
        break;
      case ExtType.DATA_FILE:
        h.dataFile = data.toString('utf8');
        break;
      case ExtType.CRYPTO:
        if (len !== 16) throw invalid(`Unable to read CRYPTO header extension`);
        h.crypto = { offset: u64(data, 0), length: u64(data, 8) };
        break;
      case ExtType.BITMAPS: {
        if (len !== 24) throw invalid('bitmaps_ext: Invalid extension length');
        const nb = data.readUInt32BE(0);
        // Kept intact: blockd does not interpret persistent bitmaps yet, but validates
        // what QEMU validates so that a malformed directory is refused the same way.
        if (data.readUInt32BE(4) !== 0) throw invalid('bitmaps_ext: Reserved field is not zero');
        if (nb === 0) throw invalid('found bitmaps extension with zero bitmaps');
        if (nb > Limit.MAX_BITMAPS) throw invalid('bitmaps_ext: Image has too many bitmaps');
        h.bitmaps = { nbBitmaps: nb, directorySize: u64(data, 8), directoryOffset: u64(data, 16) };
        break;
      }
      default:
        break;
    }
  }
}

/** QEMU's report of incompatible bits: names from the feature table, else the raw mask. */
function describeFeatures(h: Qcow2Header, mask: bigint): string {
  const parts: string[] = [];
  let rest = mask;
  for (const f of h.featureNames) {
    if (f.type !== 0 || f.bit > 63) continue;
    const bit = 1n << BigInt(f.bit);
    if (rest & bit) { parts.push(f.name); rest &= ~bit; }
  }
  if (rest) parts.push(`Unknown incompatible feature: ${rest.toString(16)}`);
  return parts.join(', ');
}

/** The names QEMU writes into the feature name table of images it creates. */
export const DEFAULT_FEATURE_NAMES: FeatureName[] = [
  { type: 0, bit: 0, name: 'dirty bit' },
  { type: 0, bit: 1, name: 'corrupt bit' },
  { type: 0, bit: 2, name: 'external data file' },
  { type: 0, bit: 3, name: 'compression type' },
  { type: 0, bit: 4, name: 'extended L2 entries' },
  { type: 1, bit: 0, name: 'lazy refcounts' },
  { type: 2, bit: 0, name: 'bitmaps' },
  { type: 2, bit: 1, name: 'raw external data' },
];

export function featureTable(names: FeatureName[]): Buffer {
  const out = Buffer.alloc(names.length * 48);
  names.forEach((f, i) => {
    out[i * 48] = f.type;
    out[i * 48 + 1] = f.bit;
    out.write(f.name, i * 48 + 2, 46, 'utf8');
  });
  return out;
}

/**
 * Serialises a header with its extensions and backing file name into one
 * cluster-sized buffer. Extensions are written from `h.extensions` (so
 * unknown ones survive), with the string extensions regenerated from the
 * parsed fields. Throws if it does not fit.
 */
export function serializeHeader(h: Qcow2Header): Buffer {
  const clusterSize = 2 ** h.clusterBits;
  const out = Buffer.alloc(clusterSize);
  const headerLength = h.version === 2 ? 72 : Math.max(h.headerLength, 104);
  out.writeUInt32BE(QCOW2_MAGIC, 0);
  out.writeUInt32BE(h.version, 4);
  out.writeUInt32BE(h.clusterBits, 20);
  out.writeBigUInt64BE(BigInt(h.size), 24);
  out.writeUInt32BE(h.cryptMethod, 32);
  out.writeUInt32BE(h.l1Size, 36);
  out.writeBigUInt64BE(BigInt(h.l1TableOffset), 40);
  out.writeBigUInt64BE(BigInt(h.refcountTableOffset), 48);
  out.writeUInt32BE(h.refcountTableClusters, 56);
  out.writeUInt32BE(h.nbSnapshots, 60);
  out.writeBigUInt64BE(BigInt(h.snapshotsOffset), 64);
  if (h.version === 3) {
    out.writeBigUInt64BE(h.incompatible, 72);
    out.writeBigUInt64BE(h.compatible, 80);
    out.writeBigUInt64BE(h.autoclear, 88);
    out.writeUInt32BE(h.refcountOrder, 96);
    out.writeUInt32BE(headerLength, 100);
    if (headerLength > 104) {
      out[104] = h.compressionType;
      h.extraFields.copy(out, 105, 0, headerLength - 105);
    }
  }
  let off = headerLength;
  const put = (type: number, data: Buffer) => {
    const padded = Math.ceil(data.length / 8) * 8;
    if (off + 8 + padded > clusterSize) throw invalid('qcow2 header extensions do not fit in the first cluster');
    out.writeUInt32BE(type, off);
    out.writeUInt32BE(data.length, off + 4);
    data.copy(out, off + 8);
    off += 8 + padded;
  };
  const seen = new Set<number>();
  for (const e of h.extensions) {
    let data = e.data;
    if (e.type === ExtType.BACKING_FORMAT) { if (h.backingFormat === undefined) continue; data = Buffer.from(h.backingFormat, 'latin1'); }
    if (e.type === ExtType.DATA_FILE) { if (h.dataFile === undefined) continue; data = Buffer.from(h.dataFile); }
    seen.add(e.type);
    put(e.type, data);
  }
  if (!seen.has(ExtType.BACKING_FORMAT) && h.backingFormat !== undefined) put(ExtType.BACKING_FORMAT, Buffer.from(h.backingFormat, 'latin1'));
  if (!seen.has(ExtType.DATA_FILE) && h.dataFile !== undefined) put(ExtType.DATA_FILE, Buffer.from(h.dataFile));
  if (off + 8 > clusterSize) throw invalid('qcow2 header extensions do not fit in the first cluster');
  off += 8; // end marker (zeroes)
  if (h.backingFile !== undefined) {
    const name = Buffer.from(h.backingFile);
    if (name.length > Limit.MAX_BACKING_NAME || off + name.length > clusterSize) throw invalid('Backing file name too long');
    name.copy(out, off);
    out.writeBigUInt64BE(BigInt(off), 8);
    out.writeUInt32BE(name.length, 16);
  }
  return out;
}
