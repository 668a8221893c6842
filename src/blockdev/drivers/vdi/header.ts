/**
 * The VDI header (VirtualBox's format as QEMU's block/vdi.c reads and
 * writes it): one 512-byte little-endian sector, parsed and checked here
 * with QEMU's messages, and laid out for a new image. Pure: no I/O.
 */
import { BlockError } from '../../../util/errors.ts';

export const VDI_SIGNATURE = 0xbeda107f;
export const VDI_VERSION_1_1 = 0x00010001;
export const VDI_TYPE_DYNAMIC = 1;
export const VDI_TYPE_STATIC = 2;
export const VDI_UNALLOCATED = 0xffffffff;
const VDI_DISCARDED = 0xfffffffe;
export const SECTOR = 512;
export const HEADER_SIZE = 512;
/** QEMU's DEFAULT_CLUSTER_SIZE, the only block size it opens or makes. */
export const VDI_BLOCK_SIZE = 1024 * 1024;
const VDI_TEXT = '<<< QEMU VM Virtual Disk Image >>>\n';
/** QEMU's VDI_BLOCKS_IN_IMAGE_MAX and VDI_DISK_SIZE_MAX. */
export const VDI_BLOCKS_IN_IMAGE_MAX = Math.floor((2 ** 31 - SECTOR) / 4);
export const VDI_DISK_SIZE_MAX = VDI_BLOCKS_IN_IMAGE_MAX * VDI_BLOCK_SIZE;

/** Field offsets of the header (QEMU's VdiHeader, packed). */
const F = {
  signature: 64, version: 68, headerSize: 72, imageType: 76, imageFlags: 80,
  offsetBmap: 340, offsetData: 344, sectorSize: 360, diskSize: 368, blockSize: 376,
  blocksInImage: 384, blocksAllocated: 388, uuidImage: 392, uuidLastSnap: 408, uuidLink: 424, uuidParent: 440,
} as const;

export interface VdiHeader {
  imageType: number;
  offsetBmap: number;
  offsetData: number;
  /** Rounded up to whole sectors, as QEMU accepts VBoxManage's odd sizes. */
  diskSize: number;
  blockSize: number;
  blocksInImage: number;
  blocksAllocated: number;
  /** The sector as read, rewritten with blocksAllocated when blocks are allocated. */
  raw: Buffer;
}

export const isAllocated = (entry: number): boolean => entry < VDI_DISCARDED;

/** QEMU's vdi_probe: a whole header with VDI's signature. */
export function probeVdi(head: Buffer): number {
  return head.length >= HEADER_SIZE && head.readUInt32LE(F.signature) === VDI_SIGNATURE ? 100 : 0;
}

const hex = (n: number | bigint, width = 0) => n.toString(16).padStart(width, '0');
const unsupported = (what: string) => new BlockError('ENOTSUP', `unsupported VDI image (${what})`);
const isNull = (b: Buffer, at: number) => b.subarray(at, at + 16).every((x) => x === 0);

/** Parses and checks the header sector (QEMU's vdi_open checks, in its order, with its texts). */
export function parseVdiHeader(sector: Buffer): VdiHeader {
  const b = Buffer.from(sector.subarray(0, HEADER_SIZE));
  const size64 = b.readBigUInt64LE(F.diskSize);
  if (size64 > BigInt(VDI_DISK_SIZE_MAX)) {
    throw new BlockError('ENOTSUP', `Unsupported VDI image size (size is 0x${hex(size64)}, max supported is 0x${hex(VDI_DISK_SIZE_MAX)})`);
  }
  const diskSize = Math.ceil(Number(size64) / SECTOR) * SECTOR;
  const signature = b.readUInt32LE(F.signature);
  const version = b.readUInt32LE(F.version);
  const offsetBmap = b.readUInt32LE(F.offsetBmap);
  const offsetData = b.readUInt32LE(F.offsetData);
  const sectorSize = b.readUInt32LE(F.sectorSize);
  const blockSize = b.readUInt32LE(F.blockSize);
  const blocksInImage = b.readUInt32LE(F.blocksInImage);
  if (signature !== VDI_SIGNATURE) throw new BlockError('EINVAL', `Image not in VDI format (bad signature ${hex(signature, 8)})`);
  if (version !== VDI_VERSION_1_1) throw unsupported(`version ${version >>> 16}.${version & 0xffff}`);
  if (offsetBmap % SECTOR !== 0) throw unsupported(`unaligned block map offset 0x${hex(offsetBmap)}`);
  if (offsetData % SECTOR !== 0) throw unsupported(`unaligned data offset 0x${hex(offsetData)}`);
  if (sectorSize !== SECTOR) throw unsupported(`sector size ${sectorSize} is not ${SECTOR}`);
  if (blockSize !== VDI_BLOCK_SIZE) throw unsupported(`block size ${blockSize} is not ${VDI_BLOCK_SIZE}`);
  if (diskSize > blocksInImage * blockSize) throw unsupported(`disk size ${diskSize}, image bitmap has room for ${blocksInImage * blockSize}`);
  if (!isNull(b, F.uuidLink)) throw unsupported('non-NULL link UUID');
  if (!isNull(b, F.uuidParent)) throw unsupported('non-NULL parent UUID');
  if (blocksInImage > VDI_BLOCKS_IN_IMAGE_MAX) throw unsupported(`too many blocks ${blocksInImage}, max is ${VDI_BLOCKS_IN_IMAGE_MAX}`);
  return {
    imageType: b.readUInt32LE(F.imageType), offsetBmap, offsetData, diskSize, blockSize, blocksInImage,
    blocksAllocated: b.readUInt32LE(F.blocksAllocated), raw: b,
  };
}

/** The header sector with the current count of allocated blocks. */
export function headerSector(h: VdiHeader): Buffer {
  h.raw.writeUInt32LE(h.blocksAllocated >>> 0, F.blocksAllocated);
  return h.raw;
}

/** A random UUID in VDI's on-disk byte order (QEMU's qemu_uuid_bswap of a version-4 UUID). */
function uuid(): Buffer {
  const u = Buffer.alloc(16);
  for (let i = 0; i < 16; i++) u[i] = Math.floor(Math.random() * 256);
  u[6] = (u[6] & 0x0f) | 0x40;
  u[8] = (u[8] & 0x3f) | 0x80;
  // Big-endian time_low, time_mid, time_hi as little-endian fields.
  u.subarray(0, 4).reverse(); u.subarray(4, 6).reverse(); u.subarray(6, 8).reverse();
  return u;
}

export interface VdiLayout {
  /** Header sector and block map, to be written at offset 0. */
  head: Buffer;
  /** Length the file must have (static images: every block). */
  fileLength: number;
}

/** A new image of `size` bytes (QEMU's vdi_co_do_create): dynamic, or static with every block mapped in order. */
export function vdiLayout(size: number, isStatic: boolean): VdiLayout {
  const blocks = Math.ceil(size / VDI_BLOCK_SIZE);
  const bmapSize = Math.ceil((blocks * 4) / SECTOR) * SECTOR;
  const head = Buffer.alloc(HEADER_SIZE + bmapSize);
  head.write(VDI_TEXT, 0, 'latin1');
  head.writeUInt32LE(VDI_SIGNATURE, F.signature);
  head.writeUInt32LE(VDI_VERSION_1_1, F.version);
  head.writeUInt32LE(0x180, F.headerSize);
  head.writeUInt32LE(isStatic ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC, F.imageType);
  head.writeUInt32LE(HEADER_SIZE, F.offsetBmap);
  head.writeUInt32LE(HEADER_SIZE + bmapSize, F.offsetData);
  head.writeUInt32LE(SECTOR, F.sectorSize);
  head.writeBigUInt64LE(BigInt(size), F.diskSize);
  head.writeUInt32LE(VDI_BLOCK_SIZE, F.blockSize);
  head.writeUInt32LE(blocks, F.blocksInImage);
  head.writeUInt32LE(isStatic ? blocks : 0, F.blocksAllocated);
  uuid().copy(head, F.uuidImage);
  uuid().copy(head, F.uuidLastSnap);
  for (let i = 0; i < blocks; i++) head.writeUInt32LE(isStatic ? i : VDI_UNALLOCATED, HEADER_SIZE + i * 4);
  return { head, fileLength: isStatic ? HEADER_SIZE + bmapSize + blocks * VDI_BLOCK_SIZE : head.length };
}
