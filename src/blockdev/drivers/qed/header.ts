/**
 * The QED header (QEMU's block/qed.h, docs/interop/qed_spec.txt): a 64-byte
 * little-endian structure at offset 0, the backing file name after it, an
 * L1 table and L2 tables of little-endian 64-bit cluster offsets (0:
 * unallocated, 1: zero cluster). Parsed and checked here with QEMU's
 * messages in bdrv_qed_do_open's order, laid out for a new image as
 * bdrv_qed_co_create does. Pure: no I/O.
 */
import { BlockError } from '../../../util/errors.ts';

export const QED_MAGIC = 0x00444551; // 'Q' 'E' 'D' '\0'
export const HEADER_SIZE = 64;
export const F_BACKING_FILE = 0x01n;
export const F_NEED_CHECK = 0x02n;
export const F_BACKING_FORMAT_NO_PROBE = 0x04n;
const FEATURE_MASK = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE;
export const AUTOCLEAR_FEATURE_MASK = 0n;
export const DEFAULT_CLUSTER_SIZE = 65536;
export const DEFAULT_TABLE_SIZE = 4;
export const MIN_CLUSTER_SIZE = 4 * 1024;
export const MAX_CLUSTER_SIZE = 64 * 1024 * 1024;
export const MIN_TABLE_SIZE = 1;
export const MAX_TABLE_SIZE = 16;
/** L2 entries with these values are no cluster in the file. */
export const UNALLOCATED = 0;
export const ZERO_CLUSTER = 1;

export interface QedHeader {
  clusterSize: number;
  tableSize: number;
  headerSize: number;
  features: bigint;
  compatFeatures: bigint;
  autoclearFeatures: bigint;
  l1TableOffset: number;
  imageSize: number;
  backingFilenameOffset: number;
  backingFilenameSize: number;
}

/** Derived geometry of an opened image (QEMU's table_nelems, l1_shift, l2_shift, file_size). */
export interface QedGeometry {
  cs: number;
  /** Entries per table. */
  nelems: number;
  /** Bytes of guest data one L2 table maps. */
  l2Span: number;
  /** Bytes of one table (L1 or L2). */
  tableBytes: number;
  /** First byte past the metadata header (header_size clusters). */
  headerBytes: number;
}

/** QEMU's bdrv_qed_probe: the magic in a whole header. */
export function probeQed(head: Buffer): number {
  return head.length >= HEADER_SIZE && head.readUInt32LE(0) === QED_MAGIC ? 100 : 0;
}

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
export const isClusterSizeValid = (cs: number) => cs >= MIN_CLUSTER_SIZE && cs <= MAX_CLUSTER_SIZE && isPow2(cs);
export const isTableSizeValid = (ts: number) => ts >= MIN_TABLE_SIZE && ts <= MAX_TABLE_SIZE && isPow2(ts);

/** QEMU's qed_max_image_size. */
export function maxImageSize(cs: number, ts: number): bigint {
  const entries = BigInt((ts * cs) / 8);
  return entries * BigInt(cs) * entries;
}

/** QEMU's qed_is_image_size_valid: whole sectors, no larger than two table levels can map. */
export function isImageSizeValid(size: bigint, cs: number, ts: number): boolean {
  return size % 512n === 0n && size <= maxImageSize(cs, ts);
}

export function geometry(h: QedHeader): QedGeometry {
  const tableBytes = h.clusterSize * h.tableSize;
  const nelems = tableBytes / 8;
  return { cs: h.clusterSize, nelems, l2Span: nelems * h.clusterSize, tableBytes, headerBytes: h.headerSize * h.clusterSize };
}

/**
 * QEMU's qed_bytes_to_clusters, exactly: it divides by cluster_size - 1,
 * which gives one cluster too many only for runs of cluster_size - 1 or
 * more clusters; allocation and check follow it, so blockd does too.
 */
export function bytesToClusters(cs: number, bytes: number): number {
  return Math.floor(Math.floor((bytes + cs - 1) / cs) * cs / (cs - 1));
}

/** QEMU's qed_check_cluster_offset: aligned, past the header, inside the file. */
export function isClusterOffsetValid(g: QedGeometry, fileSize: number, offset: number): boolean {
  return offset % g.cs === 0 && offset >= g.headerBytes && offset < fileSize;
}

/** QEMU's qed_check_table_offset: the table's first and last cluster valid; its overflow test (end <= offset) also refuses one-cluster tables. */
export function isTableOffsetValid(g: QedGeometry, fileSize: number, offset: number): boolean {
  const end = offset + (g.tableBytes - g.cs);
  if (end <= offset) return false;
  return isClusterOffsetValid(g, fileSize, offset) && isClusterOffsetValid(g, fileSize, end);
}

/** A 64-bit field as a number; past 2^53 it is no offset inside any file blockd opens. */
const safe = (v: bigint) => (v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v));

/**
 * Parses and checks the header against the file's length (QEMU's
 * bdrv_qed_do_open up to the backing file name, with its texts). `fileLength`
 * is the file node's length, rounded down to whole clusters here.
 */
export function parseQedHeader(b: Buffer, fileLength: number): { h: QedHeader; fileSize: number } {
  const magic = b.readUInt32LE(0);
  const h: QedHeader = {
    clusterSize: b.readUInt32LE(4), tableSize: b.readUInt32LE(8), headerSize: b.readUInt32LE(12),
    features: b.readBigUInt64LE(16), compatFeatures: b.readBigUInt64LE(24), autoclearFeatures: b.readBigUInt64LE(32),
    l1TableOffset: 0, imageSize: 0, backingFilenameOffset: b.readUInt32LE(56), backingFilenameSize: b.readUInt32LE(60),
  };
  const l1 = b.readBigUInt64LE(40);
  const size = b.readBigUInt64LE(48);
  if (magic !== QED_MAGIC) throw new BlockError('EINVAL', 'Image not in QED format');
  if (h.features & ~FEATURE_MASK) throw new BlockError('ENOTSUP', `Unsupported QED features: ${(h.features & ~FEATURE_MASK).toString(16)}`);
  if (!isClusterSizeValid(h.clusterSize)) throw new BlockError('EINVAL', 'QED cluster size is invalid');
  const fileSize = Math.floor(fileLength / h.clusterSize) * h.clusterSize;
  if (!isTableSizeValid(h.tableSize)) throw new BlockError('EINVAL', 'QED table size is invalid');
  if (!isImageSizeValid(size, h.clusterSize, h.tableSize)) throw new BlockError('EINVAL', 'QED image size is invalid');
  h.imageSize = Number(size);
  h.l1TableOffset = safe(l1);
  // QEMU multiplies header_size by cluster_size in 64 bits here, before its overflow check below.
  const g = geometry(h);
  const headerBytes = g.headerBytes;
  if (!isTableOffsetValid(g, fileSize, h.l1TableOffset)) throw new BlockError('EINVAL', 'QED table offset is invalid');
  if (h.headerSize > Math.floor(0xffffffff / h.clusterSize)) throw new BlockError('EINVAL', 'QED header size is too large');
  if (h.features & F_BACKING_FILE) {
    if (h.backingFilenameOffset + h.backingFilenameSize > headerBytes) throw new BlockError('EINVAL', 'QED backing filename offset is invalid');
    // QEMU reads the name into bs->backing_file (1024 bytes with its NUL).
    if (h.backingFilenameSize >= 1024) throw new BlockError('EINVAL', 'Failed to read backing filename');
  }
  return { h, fileSize };
}

/** The 64-byte header as QEMU writes it (qed_header_cpu_to_le). */
export function encodeHeader(h: QedHeader): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt32LE(QED_MAGIC, 0);
  b.writeUInt32LE(h.clusterSize, 4);
  b.writeUInt32LE(h.tableSize, 8);
  b.writeUInt32LE(h.headerSize, 12);
  b.writeBigUInt64LE(h.features, 16);
  b.writeBigUInt64LE(h.compatFeatures, 24);
  b.writeBigUInt64LE(h.autoclearFeatures, 32);
  b.writeBigUInt64LE(BigInt(h.l1TableOffset), 40);
  b.writeBigUInt64LE(BigInt(h.imageSize), 48);
  b.writeUInt32LE(h.backingFilenameOffset, 56);
  b.writeUInt32LE(h.backingFilenameSize, 60);
  return b;
}

export interface QedCreateOptions {
  size: number;
  clusterSize: number;
  tableSize: number;
  backingFile?: string;
  /** The backing format's name: 'raw' sets QED_F_BACKING_FORMAT_NO_PROBE (QED records no other). */
  backingFmt?: string;
}

/** QEMU's bdrv_qed_co_create checks, with its texts. */
export function checkCreateOptions(o: QedCreateOptions): void {
  if (!isClusterSizeValid(o.clusterSize)) {
    throw new BlockError('EINVAL', `QED cluster size must be within range [${MIN_CLUSTER_SIZE}, ${MAX_CLUSTER_SIZE}] and power of 2`);
  }
  if (!isTableSizeValid(o.tableSize)) {
    throw new BlockError('EINVAL', `QED table size must be within range [${MIN_TABLE_SIZE}, ${MAX_TABLE_SIZE}] and power of 2`);
  }
  if (!isImageSizeValid(BigInt(o.size), o.clusterSize, o.tableSize)) {
    throw new BlockError('EINVAL', `QED image size must be a non-zero multiple of cluster size and less than ${maxImageSize(o.clusterSize, o.tableSize)} bytes`);
  }
}

/** A new image: the header with the backing file name after it, and where the (zeroed) L1 table goes. */
export function qedLayout(o: QedCreateOptions): { head: Buffer; l1Offset: number; l1Bytes: number } {
  let features = 0n;
  const name = o.backingFile !== undefined ? Buffer.from(o.backingFile, 'utf8') : Buffer.alloc(0);
  if (o.backingFile !== undefined) {
    features |= F_BACKING_FILE;
    if (o.backingFmt === 'raw') features |= F_BACKING_FORMAT_NO_PROBE;
  }
  const h: QedHeader = {
    clusterSize: o.clusterSize, tableSize: o.tableSize, headerSize: 1, features, compatFeatures: 0n, autoclearFeatures: 0n,
    l1TableOffset: o.clusterSize, imageSize: o.size,
    backingFilenameOffset: o.backingFile !== undefined ? HEADER_SIZE : 0, backingFilenameSize: name.length,
  };
  return { head: Buffer.concat([encodeHeader(h), name]), l1Offset: o.clusterSize, l1Bytes: o.clusterSize * o.tableSize };
}
