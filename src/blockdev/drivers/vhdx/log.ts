/**
 * The VHDX metadata log as QEMU's block/vhdx-log.c uses it: a circular
 * buffer of 4 KiB sectors holding entries (a 64-byte header, 32-byte
 * descriptors, data sectors), CRC-32C over each whole entry. On open the
 * log is searched for the newest valid sequence of entries, which is
 * replayed into the file; QEMU writes every BAT update as one entry and
 * replays it at once. The file is reached through `LogFile`; the entry
 * layout and QEMU's validity rules are here.
 */
import { BlockError } from '../../../util/errors.ts';
import { crc32cUpdate } from './crc32c.ts';
import { setChecksum } from './header.ts';

export const LOG_SECTOR = 4096;
const LOG_HDR_SIZE = 64;
const SIG_ENTRY = 0x65676f6c;
const SIG_DESC = 0x63736564;
const SIG_ZERO = 0x6f72657a;
const SIG_DATA = 0x61746164;

const invalid = () => new BlockError('EINVAL', 'Invalid argument');

/** What the log needs of the image file. */
export interface LogFile {
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  /** A write followed by a flush (QEMU's bdrv_pwrite_sync). */
  writeSync(offset: number, data: Buffer): Promise<void>;
  length(): number;
  truncate(length: number): Promise<void>;
}

/** Read and write positions in the circular buffer (QEMU's VHDXLogEntries). */
export interface LogRing { offset: number; length: number; read: number; write: number }

interface EntryHeader { entryLength: number; sequence: bigint; descriptorCount: number; logGuid: Buffer; flushedFileOffset: bigint; lastFileOffset: bigint; checksum: number }

function decodeEntryHeader(b: Buffer): EntryHeader & { signature: number } {
  return {
    signature: b.readUInt32LE(0), checksum: b.readUInt32LE(4), entryLength: b.readUInt32LE(8), sequence: b.readBigUInt64LE(16),
    descriptorCount: b.readUInt32LE(24), logGuid: b.subarray(32, 48), flushedFileOffset: b.readBigUInt64LE(48), lastFileOffset: b.readBigUInt64LE(56),
  };
}

const nextIdx = (idx: number, length: number) => (idx + LOG_SECTOR >= length ? 0 : idx + LOG_SECTOR);

/** QEMU's vhdx_compute_desc_sectors: the header shares the first sector with 126 descriptors. */
export const descSectors = (count: number) => Math.ceil((count + 2) / 128);

/** QEMU's vhdx_log_peek_hdr: the entry header at the read position, without moving it. */
async function peekHeader(f: LogFile, log: LogRing): Promise<EntryHeader & { signature: number }> {
  if (log.read % LOG_SECTOR) throw new BlockError('EINVAL', 'Bad address');
  let read = log.read;
  if (read + LOG_HDR_SIZE > log.length) read = 0;
  if (read === log.write) throw invalid();
  return decodeEntryHeader(await f.read(log.offset + read, LOG_HDR_SIZE));
}

/** QEMU's vhdx_log_read_sectors (not peeking): up to `n` sectors, fewer when the ring is empty. */
async function readSectors(f: LogFile, log: LogRing, n: number): Promise<Buffer[]> {
  const out: Buffer[] = [];
  while (n-- > 0 && log.read !== log.write) {
    out.push(await f.read(log.offset + log.read, LOG_SECTOR));
    log.read = nextIdx(log.read, log.length);
  }
  return out;
}

function headerValid(log: LogRing, h: EntryHeader & { signature: number }, logGuid: Buffer): boolean {
  return h.signature === SIG_ENTRY && h.entryLength <= log.length && h.entryLength % LOG_SECTOR === 0 && h.sequence !== 0n
    && h.logGuid.equals(logGuid) && h.descriptorCount * 32 <= h.entryLength;
}

interface Descriptor { signature: number; trailing: Buffer; leading: Buffer; zeroLength: bigint; fileOffset: bigint; sequence: bigint }

/** QEMU's vhdx_log_read_desc: the header and descriptor sectors (read position moves), every descriptor checked. */
async function readDescriptors(f: LogFile, log: LogRing, logGuid: Buffer): Promise<{ h: EntryHeader; raw: Buffer; descs: Descriptor[] }> {
  const h = await peekHeader(f, log);
  if (!headerValid(log, h, logGuid)) throw invalid();
  const n = descSectors(h.descriptorCount);
  const sectors = await readSectors(f, log, n);
  if (sectors.length !== n) throw invalid();
  const raw = Buffer.concat(sectors);
  const descs: Descriptor[] = [];
  for (let i = 0; i < h.descriptorCount; i++) {
    const d = raw.subarray(LOG_HDR_SIZE + 32 * i, LOG_HDR_SIZE + 32 * (i + 1));
    const desc = { signature: d.readUInt32LE(0), trailing: d.subarray(4, 8), leading: d.subarray(8, 16), zeroLength: d.readBigUInt64LE(8), fileOffset: d.readBigUInt64LE(16), sequence: d.readBigUInt64LE(24) };
    const ok = desc.sequence === h.sequence && desc.fileOffset % 4096n === 0n
      && ((desc.signature === SIG_ZERO && desc.zeroLength % 4096n === 0n) || desc.signature === SIG_DESC);
    if (!ok) throw invalid();
    descs.push(desc);
  }
  return { h, raw, descs };
}

/** QEMU's vhdx_validate_log_entry: whether the entry at the read position is valid (and follows `seq`), its checksum included. */
async function validateEntry(f: LogFile, log: LogRing, seq: bigint, logGuid: Buffer): Promise<EntryHeader | undefined> {
  const h = await peekHeader(f, log);
  if (!headerValid(log, h, logGuid) || (seq > 0n && h.sequence !== seq + 1n)) {
    log.read = nextIdx(log.read, log.length);
    return undefined;
  }
  const total = h.entryLength / LOG_SECTOR;
  const n = descSectors(h.descriptorCount);
  const { raw } = await readDescriptors(f, log, logGuid);
  const zeroed = Buffer.from(raw);
  zeroed.writeUInt32LE(0, 4);
  let crc = crc32cUpdate(0xffffffff, zeroed);
  for (let i = n; i < total; i++) {
    const [s] = await readSectors(f, log, 1);
    if (!s) return undefined;
    crc = crc32cUpdate(crc, s);
  }
  return ((crc ^ 0xffffffff) >>> 0) === h.checksum ? h : undefined;
}

/** The active sequence of entries: where it starts and ends, how many, the last sequence number. */
export interface LogSequence { ring: LogRing; count: number; sequence: bigint }

/** QEMU's vhdx_log_search: every valid run of entries in the whole buffer; the one with the highest sequence number wins. */
export async function searchLog(f: LogFile, offset: number, length: number, logGuid: Buffer): Promise<LogSequence | undefined> {
  const cur: LogRing = { offset, length, read: 0, write: length };
  let best: LogSequence | undefined;
  for (;;) {
    let seq = 0n;
    const tail = cur.read;
    let h = await validateEntry(f, cur, seq, logGuid);
    if (h) {
      const run: LogSequence = { ring: { offset, length, read: tail, write: cur.read }, count: 1, sequence: h.sequence };
      for (;;) {
        h = await validateEntry(f, cur, seq, logGuid);
        if (!h) break;
        run.ring.write = cur.read;
        run.count++;
        seq = h.sequence;
      }
      if (!best || run.sequence > best.sequence) best = run;
    }
    if (cur.read < tail) break;
  }
  return best;
}

/**
 * QEMU's vhdx_log_flush (before the log is marked empty): each entry's
 * sectors written where they belong, the file grown as the entry says;
 * `logs.ring`'s read position ends past the last entry.
 */
export async function replayLog(f: LogFile, logs: LogSequence, logGuid: Buffer): Promise<void> {
  const ring = logs.ring;
  for (let k = 0; k < logs.count; k++) {
    const peek = await peekHeader(f, ring);
    const fileLength = f.length();
    if (peek.flushedFileOffset > BigInt(fileLength)) throw invalid();
    const { h, descs } = await readDescriptors(f, ring, logGuid);
    for (const d of descs) {
      if (d.signature === SIG_DESC) {
        const [data] = await readSectors(f, ring, 1);
        if (!data) throw invalid();
        const seq = (BigInt(data.readUInt32LE(4)) << 32n) | BigInt(data.readUInt32LE(4092));
        if (seq !== d.sequence) throw invalid();
        const sector = Buffer.concat([d.leading, data.subarray(8, 4092), d.trailing]);
        await f.writeSync(checkedOffset(d.fileOffset), sector);
      } else {
        // QEMU writes the zeroes one 4 KiB sector at a time; the same bytes in larger pieces. A run past what a file
        // can hold is an I/O error (QEMU would write until the file system is full).
        let at = checkedOffset(d.fileOffset);
        if (d.zeroLength > BigInt(Number.MAX_SAFE_INTEGER - at)) throw new BlockError('EIO', 'Input/output error');
        for (let left = Number(d.zeroLength); left > 0;) {
          const n = Math.min(left, 1024 * 1024);
          await f.writeSync(at, Buffer.alloc(n));
          at += n; left -= n;
        }
      }
    }
    if (BigInt(fileLength) < h.lastFileOffset && h.lastFileOffset % 1048576n !== 0n) {
      const size = ((h.lastFileOffset + 1048575n) / 1048576n) * 1048576n;
      if (size > 2n ** 63n - 1n) throw invalid();
      await f.truncate(checkedOffset(size));
    }
  }
}

function checkedOffset(o: bigint): number {
  if (o > BigInt(Number.MAX_SAFE_INTEGER) - 2n ** 32n) throw new BlockError('EIO', 'Input/output error');
  return Number(o);
}

export interface NewEntry { sequence: bigint; tail: number; logGuid: Buffer; fileLength: number; fileOffset: number; sector: Buffer }

/** QEMU's vhdx_log_write for one whole 4 KiB sector of new file content: header, one data descriptor, one data sector. */
export function encodeEntry(e: NewEntry): Buffer {
  const b = Buffer.alloc(2 * LOG_SECTOR);
  b.writeUInt32LE(SIG_ENTRY, 0);
  b.writeUInt32LE(2 * LOG_SECTOR, 8);
  b.writeUInt32LE(e.tail, 12);
  b.writeBigUInt64LE(e.sequence, 16);
  b.writeUInt32LE(1, 24);
  e.logGuid.copy(b, 32);
  b.writeBigUInt64LE(BigInt(e.fileLength), 48);
  b.writeBigUInt64LE(BigInt(e.fileLength), 56);
  const d = LOG_HDR_SIZE;
  b.writeUInt32LE(SIG_DESC, d);
  e.sector.copy(b, d + 4, 4092, 4096);
  e.sector.copy(b, d + 8, 0, 8);
  b.writeBigUInt64LE(BigInt(e.fileOffset), d + 16);
  b.writeBigUInt64LE(e.sequence, d + 24);
  const s = LOG_SECTOR;
  b.writeUInt32LE(SIG_DATA, s);
  b.writeUInt32LE(Number(e.sequence >> 32n), s + 4);
  e.sector.copy(b, s + 8, 8, 4092);
  b.writeUInt32LE(Number(e.sequence & 0xffffffffn), s + 4092);
  setChecksum(b, 4);
  return b;
}

/** QEMU's vhdx_log_write_sectors: the sectors at the write position; false if the ring filled up first. */
export async function writeRing(f: LogFile, log: LogRing, data: Buffer): Promise<boolean> {
  for (let i = 0; i < data.length; i += LOG_SECTOR) {
    const at = log.offset + log.write;
    const next = nextIdx(log.write, log.length);
    if (next === log.read) return false;
    await f.write(at, data.subarray(i, i + LOG_SECTOR));
    log.write = next;
  }
  return true;
}
