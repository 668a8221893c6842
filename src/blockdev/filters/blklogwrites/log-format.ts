/**
 * The dm-log-writes log (Linux's drivers/md/dm-log-writes.c, as QEMU's
 * block/blklogwrites.c writes it), pure: sector 0 holds the superblock
 * (magic, version, entry count, sector size; little-endian, packed, the
 * rest of the sector zero); from sector 1 on, each entry is one sector
 * with its header (target sector, sector count, flags, data_len 0) and
 * then, for a write, its data; a write-zeroes entry is followed by zeroed
 * sectors, a discard's or flush's by nothing.
 */

export const LOG_FLUSH_FLAG = 1;
export const LOG_FUA_FLAG = 2;
export const LOG_DISCARD_FLAG = 4;
export const LOG_MARK_FLAG = 8;
export const LOG_FLAG_MASK = LOG_FLUSH_FLAG | LOG_FUA_FLAG | LOG_DISCARD_FLAG | LOG_MARK_FLAG;

export const WRITE_LOG_VERSION = 1n;
export const WRITE_LOG_MAGIC = 0x6a736677736872n;

export const SUPER_SIZE = 28;
export const ENTRY_SIZE = 32;

export interface LogSuper { magic: bigint; version: bigint; nrEntries: bigint; sectorSize: number }

export interface LogEntry { sector: bigint; nrSectors: bigint; flags: bigint }

/** QEMU's blk_log_writes_sector_size_valid. */
export function sectorSizeValid(size: number): boolean {
  return Number.isInteger(size) && size > 0 && (size & (size - 1)) === 0 && size >= SUPER_SIZE && size >= ENTRY_SIZE && size < 2 ** 24;
}

/** The superblock sector for `nrEntries` entries of `sectorSize`-byte sectors. */
export function encodeSuper(nrEntries: number, sectorSize: number): Buffer {
  const b = Buffer.alloc(sectorSize);
  b.writeBigUInt64LE(WRITE_LOG_MAGIC, 0);
  b.writeBigUInt64LE(WRITE_LOG_VERSION, 8);
  b.writeBigUInt64LE(BigInt(nrEntries), 16);
  b.writeUInt32LE(sectorSize, 24);
  return b;
}

export function decodeSuper(b: Buffer): LogSuper {
  return { magic: b.readBigUInt64LE(0), version: b.readBigUInt64LE(8), nrEntries: b.readBigUInt64LE(16), sectorSize: b.readUInt32LE(24) };
}

/** An entry's header sector (data_len is always 0, as QEMU writes it). */
export function encodeEntry(sector: number, nrSectors: number, flags: number, sectorSize: number): Buffer {
  const b = Buffer.alloc(sectorSize);
  b.writeBigUInt64LE(BigInt(sector), 0);
  b.writeBigUInt64LE(BigInt(nrSectors), 8);
  b.writeBigUInt64LE(BigInt(flags), 16);
  return b;
}

export function decodeEntry(b: Buffer): LogEntry {
  return { sector: b.readBigUInt64LE(0), nrSectors: b.readBigUInt64LE(8), flags: b.readBigUInt64LE(16) };
}

/** How many log sectors an entry takes: its header, and its data unless it is a discard (blk_log_writes_find_cur_log_sector). */
export function entrySectors(e: LogEntry): bigint {
  return 1n + (e.flags & BigInt(LOG_DISCARD_FLAG) ? 0n : e.nrSectors);
}
