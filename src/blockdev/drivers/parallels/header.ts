/**
 * The Parallels header (QEMU's block/parallels.c and parallels.h,
 * docs/interop/parallels.txt): a 64-byte little-endian header, then the
 * BAT (one 32-bit entry per cluster: its offset in the file in clusters, or
 * in sectors for the old "WithoutFreeSpace" magic; 0 = unallocated). Parsed
 * and checked here with QEMU's messages in parallels_open's order, laid out
 * for a new image as parallels_co_create does. Pure: no I/O.
 *
 * QEMU mixes units in two places and blockd follows it: a data_off of 0
 * becomes the BAT's end in *bytes* (rounded to a sector) used as sectors,
 * and data_end (sectors) is compared with header_size (bytes).
 */
import { BlockError } from '../../../util/errors.ts';

export const HEADER_SIZE = 64;
const MAGIC = 'WithoutFreeSpace';
const MAGIC2 = 'WithouFreSpacExt';
const VERSION = 2;
export const INUSE_MAGIC = 0x746f6e59;
const HEADS = 16;
const SEC_IN_CYL = 32;
export const DEFAULT_CLUSTER_SIZE = 1024 * 1024;
const MAX_IMAGE_FACTOR = 2n ** 32n;
/** QEMU's bdrv_opt_mem_align of a file node (the host page size) and its BAT dirty-block size (4 pages). */
export const MEM_ALIGN = 4096;
export const BAT_DIRTY_BLOCK = 4 * 4096;

export interface ParallelsHeader {
  /** Guest sectors (masked to 32 bits for the old magic). */
  totalSectors: bigint;
  /** BAT entries are in units of this many sectors (1 for the old magic, else tracks). */
  offMultiplier: number;
  /** Sectors per cluster. */
  tracks: number;
  batSize: number;
  inuse: number;
  /** First free sector (QEMU's data_end before the BAT is scanned). */
  dataEnd: number;
  /** Bytes of header and BAT QEMU keeps in memory and writes back. */
  headerSize: number;
  extOff: bigint;
}

export const batEntryOff = (i: number) => HEADER_SIZE + 4 * i;
const roundUp = (n: number, a: number) => Math.ceil(n / a) * a;

function magicOf(b: Buffer): string { return b.toString('latin1', 0, 16); }

/** QEMU's parallels_probe: either magic, version 2. */
export function probeParallels(head: Buffer): number {
  if (head.length < HEADER_SIZE) return 0;
  const m = magicOf(head);
  return (m === MAGIC || m === MAGIC2) && head.readUInt32LE(16) === VERSION ? 100 : 0;
}

/** Parses and checks the 64-byte header (parallels_open up to reading the BAT). */
export function parseParallelsHeader(b: Buffer): ParallelsHeader {
  let totalSectors = b.readBigUInt64LE(36);
  if (b.readUInt32LE(16) !== VERSION) throw new BlockError('EINVAL', 'Image not in Parallels format');
  const m = magicOf(b);
  const tracks = b.readUInt32LE(28);
  let offMultiplier: number;
  if (m === MAGIC) {
    offMultiplier = 1;
    totalSectors &= 0xffffffffn;
  } else if (m === MAGIC2) {
    offMultiplier = tracks;
  } else {
    throw new BlockError('EINVAL', 'Image not in Parallels format');
  }
  if (tracks === 0) throw new BlockError('EINVAL', 'Invalid image: Zero sectors per track');
  if (tracks > Math.floor(0x7fffffff / 513)) throw new BlockError('EINVAL', 'Invalid image: Too big cluster');
  const batSize = b.readUInt32LE(32);
  if (batSize > Math.floor(0x7fffffff / 4)) throw new BlockError('EINVAL', 'Catalog too large');
  const size = batEntryOff(batSize);
  let headerSize = roundUp(size, MEM_ALIGN);
  let dataEnd = b.readUInt32LE(48);
  if (dataEnd === 0) dataEnd = roundUp(size, 512);
  if (dataEnd < headerSize) headerSize = size;
  return { totalSectors, offMultiplier, tracks, batSize, inuse: b.readUInt32LE(44), dataEnd, headerSize, extOff: b.readBigUInt64LE(56) };
}

/** parallels_co_create's checks, with its texts. */
export function checkCreateOptions(size: number, clusterSize: number): void {
  if (BigInt(clusterSize) >= (2n ** 63n - 1n) / MAX_IMAGE_FACTOR) throw new BlockError('EINVAL', 'Cluster size is too large');
  if (BigInt(size) >= MAX_IMAGE_FACTOR * BigInt(clusterSize)) throw new BlockError('EINVAL', 'Image size is too large for this cluster size');
  if (size % 512 !== 0) throw new BlockError('EINVAL', 'Image size must be a multiple of 512 bytes');
  if (clusterSize % 512 !== 0) throw new BlockError('EINVAL', 'Cluster size must be a multiple of 512 bytes');
}

/**
 * A new image (parallels_co_create): the header sector, then zeroes up to
 * the data area, which starts at the first cluster boundary after the BAT.
 * `dataOffset` is where the file ends.
 */
export function parallelsLayout(size: number, clusterSize: number): { head: Buffer; dataOffset: number } {
  const batEntries = Math.ceil(size / clusterSize);
  // bat_entry_off() is 32-bit in QEMU: a BAT of 2^30 entries or more wraps around (and the image has no room for it).
  const batSectors = ((Math.ceil((batEntryOff(batEntries) >>> 0) / clusterSize) * clusterSize) / 512) >>> 0;
  const head = Buffer.alloc(512);
  head.write(MAGIC2, 0, 'latin1');
  head.writeUInt32LE(VERSION, 16);
  head.writeUInt32LE(HEADS, 20);
  head.writeUInt32LE(Math.floor(size / 512 / HEADS / SEC_IN_CYL) >>> 0, 24);
  head.writeUInt32LE((clusterSize / 512) >>> 0, 28);
  head.writeUInt32LE(batEntries >>> 0, 32);
  head.writeBigUInt64LE(BigInt(Math.ceil(size / 512)), 36);
  head.writeUInt32LE(batSectors >>> 0, 48);
  return { head, dataOffset: batSectors * 512 };
}
