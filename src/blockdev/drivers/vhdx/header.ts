/**
 * VHDX layout as QEMU's block/vhdx.c reads and writes it (Microsoft's VHDX
 * 1.00 specification): the file identifier, the two 4 KiB headers, the
 * region table, the metadata table and its items, BAT entries and the
 * layout of a new image. Everything little-endian; GUIDs are kept in their
 * on-disk byte order. QEMU's checks, in its order; an error without text of
 * its own is QEMU's bare errno ("Could not open 'x': ..." at the driver).
 * Pure: no I/O.
 */
import { randomBytes } from 'node:crypto';
import { BlockError } from '../../../util/errors.ts';
import { crc32c } from './crc32c.ts';

export const MiB = 1024 * 1024;
export const HEADER_BLOCK = 64 * 1024;
export const HEADER1_OFFSET = HEADER_BLOCK;
export const HEADER2_OFFSET = 2 * HEADER_BLOCK;
export const REGION_TABLE_OFFSET = 3 * HEADER_BLOCK;
export const REGION_TABLE2_OFFSET = 4 * HEADER_BLOCK;
export const HEADER_SECTION_END = MiB;
/** The checksummed size of a header; QEMU writes only the 80-byte structure. */
export const HEADER_SIZE = 4096;
export const HEADER_STRUCT_SIZE = 80;
export const METADATA_TABLE_MAX = 32 * 2048;
export const DEFAULT_LOG_SIZE = MiB;
export const BLOCK_SIZE_MIN = MiB;
export const BLOCK_SIZE_MAX = 256 * MiB;
export const MAX_IMAGE_SIZE = 64 * 1024 * 1024 * MiB;
const MAX_SECTORS_PER_BLOCK = 2 ** 23;

export const PAYLOAD_NOT_PRESENT = 0;
export const PAYLOAD_UNDEFINED = 1;
export const PAYLOAD_ZERO = 2;
export const PAYLOAD_UNMAPPED = 3;
export const PAYLOAD_UNMAPPED_V095 = 5;
export const PAYLOAD_FULLY_PRESENT = 6;
export const PAYLOAD_PARTIALLY_PRESENT = 7;
export const BAT_STATE_MASK = 7n;
export const BAT_OFFSET_MASK = 0xfffffffffff00000n;

const PARAMS_LEAVE_BLOCKS_ALLOCATED = 1;
export const PARAMS_HAS_PARENT = 2;
const REGION_REQUIRED = 1;
const META_REQUIRED = 4;

/** A GUID in on-disk order from QEMU's {data1, data2, data3, data4} notation. */
function guid(d1: number, d2: number, d3: number, d4: number[]): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(d1, 0); b.writeUInt16LE(d2, 4); b.writeUInt16LE(d3, 6);
  Buffer.from(d4).copy(b, 8);
  return b;
}
export const BAT_GUID = guid(0x2dc27766, 0xf623, 0x4200, [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08]);
export const METADATA_GUID = guid(0x8b7ca206, 0x4790, 0x4b9a, [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e]);
const FILE_PARAM_GUID = guid(0xcaa16737, 0xfa36, 0x4d43, [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b]);
const VIRTUAL_SIZE_GUID = guid(0x2fa54224, 0xcd1b, 0x4876, [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8]);
const PAGE83_GUID = guid(0xbeca12ab, 0xb2e6, 0x4523, [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46]);
const PHYS_SECTOR_GUID = guid(0xcda348c7, 0x445d, 0x4471, [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56]);
const PARENT_LOCATOR_GUID = guid(0xa8d35f2d, 0xb30b, 0x454d, [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c]);
const LOGICAL_SECTOR_GUID = guid(0x8141bf1d, 0xa96f, 0x4709, [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f]);

export const ZERO_GUID = Buffer.alloc(16);
/** QEMU's vhdx_guid_generate: a random (version 4) UUID's bytes. */
export function newGuid(): Buffer {
  const u = randomBytes(16);
  u[6] = (u[6] & 0x0f) | 0x40;
  u[8] = (u[8] & 0x3f) | 0x80;
  return u;
}

const invalid = () => new BlockError('EINVAL', 'Invalid argument');
const unsupported = () => new BlockError('ENOTSUP', 'Operation not supported');

/** True if the CRC-32C of `b` with its 4-byte checksum at `at` zeroed equals that checksum. */
export function checksumValid(b: Buffer, at: number): boolean {
  const c = Buffer.from(b);
  const want = c.readUInt32LE(at);
  c.writeUInt32LE(0, at);
  return crc32c(c) === want;
}

/** Sets the checksum at `at` over all of `b` (QEMU's vhdx_update_checksum). */
export function setChecksum(b: Buffer, at: number): void {
  b.writeUInt32LE(0, at);
  b.writeUInt32LE(crc32c(b), at);
}

export const probeVhdx = (head: Buffer): number => (head.length >= 8 && head.toString('latin1', 0, 8) === 'vhdxfile' ? 100 : 0);

/** One of the two headers, its fields as read (also from an invalid one: QEMU updates it in place). */
export interface VhdxHeader {
  signature: number;
  sequence: bigint;
  fileWriteGuid: Buffer;
  dataWriteGuid: Buffer;
  logGuid: Buffer;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: bigint;
}

export function decodeHeader(b: Buffer): VhdxHeader {
  return {
    signature: b.readUInt32LE(0), sequence: b.readBigUInt64LE(8),
    fileWriteGuid: Buffer.from(b.subarray(16, 32)), dataWriteGuid: Buffer.from(b.subarray(32, 48)), logGuid: Buffer.from(b.subarray(48, 64)),
    logVersion: b.readUInt16LE(64), version: b.readUInt16LE(66), logLength: b.readUInt32LE(68), logOffset: b.readBigUInt64LE(72),
  };
}

/** The header's 4 KiB block: `base` (what the file holds there, or zeroes) with the structure and checksum over it. */
export function encodeHeader(h: VhdxHeader, base: Buffer = Buffer.alloc(HEADER_SIZE)): Buffer {
  const b = Buffer.from(base.subarray(0, HEADER_SIZE));
  b.writeUInt32LE(h.signature, 0);
  b.writeBigUInt64LE(h.sequence & 0xffffffffffffffffn, 8);
  h.fileWriteGuid.copy(b, 16); h.dataWriteGuid.copy(b, 32); h.logGuid.copy(b, 48);
  b.writeUInt16LE(h.logVersion, 64); b.writeUInt16LE(h.version, 66);
  b.writeUInt32LE(h.logLength, 68); b.writeBigUInt64LE(h.logOffset, 72);
  setChecksum(b, 4);
  return b;
}

const HEADER_SIGNATURE = 0x64616568;

/** QEMU's vhdx_parse_header: both headers decoded, the index of the current one. */
export function pickHeader(b1: Buffer, b2: Buffer): { headers: [VhdxHeader, VhdxHeader]; current: 0 | 1 } {
  const headers: [VhdxHeader, VhdxHeader] = [decodeHeader(b1), decodeHeader(b2)];
  const ok = [b1, b2].map((b, i) => checksumValid(b, 4) && headers[i].signature === HEADER_SIGNATURE && headers[i].version === 1);
  let current: 0 | 1;
  if (ok[0] && !ok[1]) current = 0;
  else if (!ok[0] && ok[1]) current = 1;
  else if (!ok[0] && !ok[1]) throw new BlockError('EINVAL', 'No valid VHDX header found');
  else if (headers[0].sequence > headers[1].sequence) current = 0;
  else if (headers[1].sequence > headers[0].sequence) current = 1;
  // Disk2VHD writes two identical headers with the same sequence number.
  else if (b1.subarray(0, HEADER_STRUCT_SIZE).equals(b2.subarray(0, HEADER_STRUCT_SIZE))) current = 0;
  else throw new BlockError('EINVAL', 'No valid VHDX header found');
  return { headers, current };
}

/** Byte ranges of the file's objects (log, regions), checked for overlaps as QEMU's vhdx_region_check. */
export class Regions {
  private readonly list: { start: bigint; end: bigint }[] = [];
  overlaps(start: bigint, length: bigint): boolean {
    const end = (start + length) & 0xffffffffffffffffn;
    return this.list.some((r) => !(start >= r.end || end <= r.start));
  }
  add(start: bigint, length: bigint): void { this.list.push({ start, end: (start + length) & 0xffffffffffffffffn }); }
}

export interface RegionEntry { offset: bigint; length: number }

/** QEMU's vhdx_open_region_tables over the 64 KiB table: the BAT and metadata regions. */
export function parseRegionTable(b: Buffer, regions: Regions): { bat: RegionEntry; metadata: RegionEntry } {
  if (!checksumValid(b, 4)) throw invalid();
  if (b.readUInt32LE(0) !== 0x69676572) throw invalid();
  const count = b.readUInt32LE(8);
  if (count > 2047) throw invalid();
  let bat: RegionEntry | undefined;
  let metadata: RegionEntry | undefined;
  for (let i = 0; i < count; i++) {
    const at = 16 + 32 * i;
    const e = { offset: b.readBigUInt64LE(at + 16), length: b.readUInt32LE(at + 24) };
    if (regions.overlaps(e.offset, BigInt(e.length))) throw invalid();
    regions.add(e.offset, BigInt(e.length));
    const id = b.subarray(at, at + 16);
    if (id.equals(BAT_GUID)) {
      if (bat) throw invalid();
      bat = e;
    } else if (id.equals(METADATA_GUID)) {
      if (metadata) throw invalid();
      metadata = e;
    } else if (b.readUInt32LE(at + 28) & REGION_REQUIRED) throw unsupported();
  }
  if (!bat || !metadata) throw invalid();
  return { bat, metadata };
}

/** Where the metadata items live (offsets relative to the metadata region), from its table (QEMU's vhdx_parse_metadata, first half). */
export interface MetadataItems { fileParams: number; virtualSize: number; logicalSector: number; physSector: number }

export function parseMetadataTable(b: Buffer): MetadataItems {
  if (b.toString('latin1', 0, 8) !== 'metadata') throw invalid();
  const count = b.readUInt16LE(10);
  if (count * 32 > METADATA_TABLE_MAX - 32) throw invalid();
  const found = new Map<Buffer, number>();
  const known = [FILE_PARAM_GUID, VIRTUAL_SIZE_GUID, PAGE83_GUID, LOGICAL_SECTOR_GUID, PHYS_SECTOR_GUID, PARENT_LOCATOR_GUID];
  for (let i = 0; i < count; i++) {
    const at = 32 + 32 * i;
    const id = b.subarray(at, at + 16);
    const k = known.find((g) => g.equals(id));
    if (k) {
      if (found.has(k)) throw invalid();
      found.set(k, b.readUInt32LE(at + 16));
    } else if (b.readUInt32LE(at + 24) & META_REQUIRED) throw unsupported();
  }
  // Exactly the five required items: a parent locator (a differencing image, which QEMU 7.2 does not open) is refused too.
  if (found.size !== 5 || found.has(PARENT_LOCATOR_GUID)) throw unsupported();
  return {
    fileParams: found.get(FILE_PARAM_GUID)!, virtualSize: found.get(VIRTUAL_SIZE_GUID)!, logicalSector: found.get(LOGICAL_SECTOR_GUID)!,
    physSector: found.get(PHYS_SECTOR_GUID)!,
  };
}

/** The disk's geometry: block size, sizes and the BAT's shape (QEMU's checks after reading the items). */
export interface VhdxGeometry {
  blockSize: number;
  dataBits: number;
  virtualSize: number;
  logicalSectorSize: number;
  /** Payload blocks per sector-bitmap block (BAT entries interleave one bitmap entry after each chunk). */
  chunkRatio: number;
  batEntries: number;
}

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** QEMU's vhdx_calc_bat_entries (32-bit arithmetic included). */
export function batEntries(virtualSize: number, blockSize: number, chunkRatio: number): number {
  const data = Math.ceil(virtualSize / blockSize) >>> 0;
  const bits = Math.log2(chunkRatio);
  return (data + (((data - 1) >>> 0) >>> bits)) >>> 0;
}

export function parseGeometry(params: Buffer, virtualSize: bigint, logicalSectorSize: number): VhdxGeometry {
  const blockSize = params.readUInt32LE(0);
  const dataBits = params.readUInt32LE(4);
  // has_parent without a parent locator (one was refused with the table).
  if (dataBits & PARAMS_HAS_PARENT) throw invalid();
  if (blockSize < BLOCK_SIZE_MIN || blockSize > BLOCK_SIZE_MAX) throw invalid();
  if (logicalSectorSize !== 512) throw unsupported();
  if (!isPow2(blockSize)) throw invalid();
  // Sizes past 2^53 are refused by the driver once the BAT is checked (blockd's offsets are JS numbers).
  const size = Number(virtualSize) - (Number(virtualSize) % 512);
  const chunkRatio = (MAX_SECTORS_PER_BLOCK * logicalSectorSize) / blockSize;
  return { blockSize, dataBits, virtualSize: size, logicalSectorSize, chunkRatio, batEntries: batEntries(Number(virtualSize), blockSize, chunkRatio) };
}

/** The BAT index of the payload block holding `offset` (QEMU's vhdx_block_translate): a bitmap entry follows every chunk. */
export function batIndex(g: VhdxGeometry, offset: number): number {
  const block = Math.floor(offset / g.blockSize);
  return block + Math.floor(block / g.chunkRatio);
}

export interface CreateParams { size: number; logSize: number; blockSize: number; fixed: boolean; zeroBlocks: boolean }

/** QEMU's default block size for an image size (vhdx_co_create). */
export function defaultBlockSize(size: number): number {
  if (size > 32 * 1024 * 1024 * MiB) return 64 * MiB;
  if (size > 100 * 1024 * MiB) return 32 * MiB;
  if (size > 1024 * MiB) return 16 * MiB;
  return 8 * MiB;
}

export interface VhdxLayout {
  /** [offset, bytes] pieces to write, in QEMU's order. */
  writes: [number, Buffer][];
  /** The file's length once made. */
  fileLength: number;
}

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/** A new image (QEMU's vhdx_co_create): identifier, headers, region tables, BAT (unless all zeroes), metadata. */
export function vhdxLayout(p: CreateParams): VhdxLayout {
  const writes: [number, Buffer][] = [];
  const id = Buffer.alloc(8 + 2 * 'QEMU v7.2.22'.length);
  id.write('vhdxfile', 0, 'latin1');
  id.write('QEMU v7.2.22', 8, 'utf16le');
  writes.push([0, id]);
  const seq = BigInt(randomBytes(4).readUInt32LE(0));
  const h: VhdxHeader = {
    signature: HEADER_SIGNATURE, sequence: seq, fileWriteGuid: newGuid(), dataWriteGuid: newGuid(), logGuid: ZERO_GUID,
    logVersion: 0, version: 1, logLength: p.logSize, logOffset: BigInt(HEADER_SECTION_END),
  };
  writes.push([HEADER1_OFFSET, encodeHeader(h).subarray(0, HEADER_STRUCT_SIZE)]);
  writes.push([HEADER2_OFFSET, encodeHeader({ ...h, sequence: seq + 1n }).subarray(0, HEADER_STRUCT_SIZE)]);

  const chunkRatio = (MAX_SECTORS_PER_BLOCK * 512) / p.blockSize;
  const entries = batEntries(p.size, p.blockSize, chunkRatio);
  const batLength = roundUp(entries * 8, MiB);
  const batOffset = roundUp(HEADER_SECTION_END + p.logSize, MiB);
  const metadataOffset = roundUp(batOffset + batLength, MiB);
  const rt = Buffer.alloc(HEADER_BLOCK);
  rt.writeUInt32LE(0x69676572, 0);
  rt.writeUInt32LE(2, 8);
  BAT_GUID.copy(rt, 16); rt.writeBigUInt64LE(BigInt(batOffset), 32); rt.writeUInt32LE(batLength, 40);
  METADATA_GUID.copy(rt, 48); rt.writeBigUInt64LE(BigInt(metadataOffset), 64); rt.writeUInt32LE(MiB, 72);
  setChecksum(rt, 4);

  const dataStart = batOffset + batLength + 5 * MiB;
  const fileLength = p.fixed ? dataStart + p.size : dataStart;
  // A file node reads zeroes where nothing was written, so a dynamic image without ZERO blocks writes no BAT.
  if (p.fixed || p.zeroBlocks) {
    const bat = Buffer.alloc(batLength);
    const state = p.zeroBlocks ? PAYLOAD_ZERO : p.fixed ? PAYLOAD_FULLY_PRESENT : PAYLOAD_NOT_PRESENT;
    const g = { blockSize: p.blockSize, chunkRatio } as VhdxGeometry;
    for (let off = 0; off < p.size; off += p.blockSize) {
      const e = state === PAYLOAD_FULLY_PRESENT ? BigInt(roundUp(dataStart + off, MiB)) | 6n : BigInt(state);
      bat.writeBigUInt64LE(e, 8 * batIndex(g, off));
    }
    writes.push([batOffset, bat]);
  }
  writes.push([REGION_TABLE_OFFSET, rt], [REGION_TABLE2_OFFSET, rt]);

  const md = Buffer.alloc(HEADER_BLOCK);
  md.write('metadata', 0, 'latin1');
  md.writeUInt16LE(5, 10);
  const items: [Buffer, number, number][] = [
    [FILE_PARAM_GUID, 8, META_REQUIRED], [VIRTUAL_SIZE_GUID, 8, META_REQUIRED | 2], [PAGE83_GUID, 16, META_REQUIRED | 2],
    [LOGICAL_SECTOR_GUID, 4, META_REQUIRED | 2], [PHYS_SECTOR_GUID, 4, META_REQUIRED | 2],
  ];
  let off = HEADER_BLOCK;
  for (const [i, [g, len, bits]] of items.entries()) {
    const at = 32 + 32 * i;
    g.copy(md, at); md.writeUInt32LE(off, at + 16); md.writeUInt32LE(len, at + 20); md.writeUInt32LE(bits, at + 24);
    off += len;
  }
  const values = Buffer.alloc(40);
  values.writeUInt32LE(p.blockSize, 0);
  values.writeUInt32LE(p.fixed ? PARAMS_LEAVE_BLOCKS_ALLOCATED : 0, 4);
  values.writeBigUInt64LE(BigInt(p.size), 8);
  newGuid().copy(values, 16);
  values.writeUInt32LE(512, 32);
  values.writeUInt32LE(512, 36);
  writes.push([metadataOffset, md], [metadataOffset + HEADER_BLOCK, values]);
  return { writes, fileLength };
}
