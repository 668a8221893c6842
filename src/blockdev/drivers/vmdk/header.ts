/**
 * VMDK sparse extent headers (QEMU's block/vmdk.c): the hosted sparse
 * "KDMV" header (VMDK4, with the streamOptimized footer), the old VMFS
 * sparse "COWD" header (VMDK3), their checks in QEMU's order with its
 * texts, the extent geometry they give, and the layout of a new sparse
 * extent (QEMU's vmdk_init_extent). Pure: no I/O. Sizes are in 512-byte
 * sectors; arithmetic follows QEMU's integer widths (BigInt, truncated).
 */
import { BlockError } from '../../../util/errors.ts';

export const SECTOR = 512;
export const VMDK3_MAGIC = 0x434f5744; // "COWD"
export const VMDK4_MAGIC = 0x4b444d56; // "KDMV"
export const FLAG_NL_DETECT = 1;
export const FLAG_RGD = 2;
export const FLAG_ZERO_GRAIN = 4;
export const FLAG_COMPRESS = 1 << 16;
export const FLAG_MARKER = 1 << 17;
export const COMPRESSION_DEFLATE = 1;
export const GD_AT_END = 0xffffffffffffffffn;
export const MARKER_END_OF_STREAM = 0;
export const MARKER_FOOTER = 3;
/** Where the header fields lie (after the 4-byte magic; QEMU's VMDK4Header, packed). */
const H = { version: 4, flags: 8, capacity: 12, granularity: 20, descOffset: 28, descSize: 36, numGtes: 44, rgdOffset: 48, gdOffset: 56, grainOffset: 64, checkBytes: 73, compress: 77 } as const;
/** The header's bytes after the magic (sizeof(VMDK4Header)). */
const HEADER_BODY = 75;

const u32 = (x: bigint) => BigInt.asUintN(32, x);
const i64 = (x: bigint) => BigInt.asIntN(64, x);

export interface Vmdk4Header {
  version: number;
  flags: number;
  capacity: bigint;
  granularity: bigint;
  descOffset: bigint;
  numGtes: number;
  rgdOffset: bigint;
  gdOffset: bigint;
  grainOffset: bigint;
  compressAlgorithm: number;
}

/** The header fields of a sector that starts with the magic (or of the footer's copy). */
export function readVmdk4Header(b: Buffer, at = 0): Vmdk4Header {
  return {
    version: b.readUInt32LE(at + H.version), flags: b.readUInt32LE(at + H.flags),
    capacity: b.readBigUInt64LE(at + H.capacity), granularity: b.readBigUInt64LE(at + H.granularity),
    descOffset: b.readBigUInt64LE(at + H.descOffset), numGtes: b.readUInt32LE(at + H.numGtes),
    rgdOffset: b.readBigUInt64LE(at + H.rgdOffset), gdOffset: b.readBigUInt64LE(at + H.gdOffset),
    grainOffset: b.readBigUInt64LE(at + H.grainOffset), compressAlgorithm: b.readUInt16LE(at + H.compress),
  };
}

/**
 * QEMU's footer sanity checks: the 1536 bytes before the end of a
 * streamOptimized file are a footer marker, the footer (a header copy) and
 * the end-of-stream marker. Returns the footer's header.
 */
export function parseFooter(b: Buffer): Vmdk4Header {
  if (b.readUInt32BE(512) !== VMDK4_MAGIC || b.readUInt32LE(8) !== 0 || b.readUInt32LE(12) !== MARKER_FOOTER ||
      b.readBigUInt64LE(1024) !== 0n || b.readUInt32LE(1032) !== 0 || b.readUInt32LE(1036) !== MARKER_END_OF_STREAM) {
    throw new BlockError('EINVAL', 'Invalid footer');
  }
  return readVmdk4Header(b, 512);
}

/** What an extent's sparse header gives vmdk_add_extent (sectors, byte offsets of the grain directories). */
export interface SparseGeometry {
  sectors: bigint;
  /** Byte offsets (QEMU's int64: may be negative for a hostile header). */
  l1Offset: bigint;
  l1BackupOffset: bigint;
  l1Size: number;
  l2Size: number;
  clusterSectors: bigint;
  version: number;
  compressed: boolean;
  hasMarker: boolean;
  hasZeroGrain: boolean;
}

/** QEMU's vmdk_open_vmdk4 checks, after any footer was read (fileSectors: the extent file's size in sectors). */
export function vmdk4Geometry(h: Vmdk4Header, readWrite: boolean, fileSectors: number): SparseGeometry {
  const compressed = h.compressAlgorithm === COMPRESSION_DEFLATE;
  if (h.version > 3) throw new BlockError('ENOTSUP', `Unsupported VMDK version ${h.version}`);
  if (h.version === 3 && readWrite && !compressed) throw new BlockError('EINVAL', 'VMDK version 3 must be read only');
  if (h.numGtes > 512) throw new BlockError('EINVAL', 'L2 table size too big');
  const l1EntrySectors = u32(BigInt(h.numGtes) * h.granularity);
  if (l1EntrySectors === 0n) throw new BlockError('EINVAL', 'L1 entry size is invalid');
  const l1Size = Number(u32(BigInt.asUintN(64, h.capacity + l1EntrySectors - 1n) / l1EntrySectors));
  const l1BackupOffset = h.flags & FLAG_RGD ? i64(h.rgdOffset << 9n) : 0n;
  if (BigInt(fileSectors) < h.grainOffset) {
    throw new BlockError('EINVAL', `File truncated, expecting at least ${i64(h.grainOffset * 512n)} bytes`);
  }
  return checkExtent({
    sectors: i64(h.capacity), l1Offset: i64(h.gdOffset << 9n), l1BackupOffset, l1Size, l2Size: h.numGtes,
    clusterSectors: h.granularity, version: h.version, compressed,
    hasMarker: (h.flags & FLAG_MARKER) !== 0, hasZeroGrain: (h.flags & FLAG_ZERO_GRAIN) !== 0,
  });
}

/** QEMU's vmdk_open_vmfs_sparse: the COWD header (32-bit fields after the magic), 4096-entry grain tables. */
export function vmdk3Geometry(b: Buffer): SparseGeometry {
  return checkExtent({
    sectors: BigInt(b.readUInt32LE(8)), l1Offset: BigInt(b.readUInt32LE(16)) << 9n, l1BackupOffset: 0n,
    l1Size: b.readUInt32LE(20), l2Size: 4096, clusterSectors: BigInt(b.readUInt32LE(12)), version: 0,
    compressed: false, hasMarker: false, hasZeroGrain: false,
  });
}

/** vmdk_add_extent's checks. */
function checkExtent(g: SparseGeometry): SparseGeometry {
  if (g.clusterSectors > 0x200000n) throw new BlockError('EOVERFLOW', 'Invalid granularity, image may be corrupt');
  if (g.l1Size > 32 * 1024 * 1024) throw new BlockError('EOVERFLOW', 'L1 size too big');
  return g;
}

/** The bytes of the header sector starting with the magic needed to parse (magic + VMDK4Header). */
export const HEADER_BYTES = 4 + HEADER_BODY;

export interface SparseLayout {
  /** The header sector. */
  header: Buffer;
  /** Redundant and primary grain directories with their (empty) grain tables, each at its byte offset. */
  writes: { offset: number; data: Buffer }[];
  /** The file's length (grain_offset): QEMU truncates to it. */
  fileLength: number;
}

/** QEMU's vmdk_init_extent for a sparse extent of `size` bytes. */
export function sparseLayout(size: number, compress: boolean, zeroedGrain: boolean): SparseLayout {
  const capacity = Math.floor(size / SECTOR);
  const granularity = 128;
  const numGtes = 512;
  const grains = Math.ceil(capacity / granularity);
  const gtSize = Math.ceil((numGtes * 4) / SECTOR);
  const gtCount = Math.ceil(grains / numGtes);
  const gdSectors = Math.ceil((gtCount * 4) / SECTOR);
  const descOffset = 1;
  const descSize = 20;
  const rgdOffset = descOffset + descSize;
  const gdOffset = rgdOffset + gdSectors + gtSize * gtCount;
  const grainOffset = Math.ceil((gdOffset + gdSectors + gtSize * gtCount) / granularity) * granularity;
  const header = Buffer.alloc(SECTOR);
  header.writeUInt32BE(VMDK4_MAGIC, 0);
  header.writeUInt32LE(compress ? 3 : zeroedGrain ? 2 : 1, H.version);
  header.writeUInt32LE(FLAG_RGD | FLAG_NL_DETECT | (compress ? FLAG_COMPRESS | FLAG_MARKER : 0) | (zeroedGrain ? FLAG_ZERO_GRAIN : 0), H.flags);
  header.writeBigUInt64LE(BigInt(capacity), H.capacity);
  header.writeBigUInt64LE(BigInt(granularity), H.granularity);
  header.writeBigUInt64LE(BigInt(descOffset), H.descOffset);
  header.writeBigUInt64LE(BigInt(descSize), H.descSize);
  header.writeUInt32LE(numGtes, H.numGtes);
  header.writeBigUInt64LE(BigInt(rgdOffset), H.rgdOffset);
  header.writeBigUInt64LE(BigInt(gdOffset), H.gdOffset);
  header.writeBigUInt64LE(BigInt(grainOffset), H.grainOffset);
  Buffer.from([0x0a, 0x20, 0x0d, 0x0a]).copy(header, H.checkBytes);
  header.writeUInt16LE(compress ? COMPRESSION_DEFLATE : 0, H.compress);
  const gd = (first: number) => {
    const b = Buffer.alloc(gdSectors * SECTOR);
    for (let i = 0; i < gtCount; i++) b.writeUInt32LE(first + gdSectors + i * gtSize, i * 4);
    return b;
  };
  return {
    // QEMU writes only the magic and the header body: the rest of the sector stays as the file had it (zeroes after its truncate).
    header: header.subarray(0, HEADER_BYTES),
    writes: [{ offset: rgdOffset * SECTOR, data: gd(rgdOffset) }, { offset: gdOffset * SECTOR, data: gd(gdOffset) }],
    fileLength: grainOffset * SECTOR,
  };
}
