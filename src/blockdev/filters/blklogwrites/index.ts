/**
 * blklogwrites (QEMU's block/blklogwrites.c): a filter that passes every
 * request to its file and records each write, write-zeroes, discard and
 * flush in the dm-log-writes format (log-format.ts) on its log child, so
 * that the write sequence can be replayed. Requests are aligned to the log's
 * sector size (the node does read-modify-write). The superblock is written,
 * and the log flushed, on each flush and every log-super-update-interval
 * entries; log-append continues an existing log.
 *
 * QEMU's generic flush skips a node that has had no write since its last
 * flush (write_gen == flushed_gen), and so does this one: no FLUSH entry
 * then. FUA is QEMU's emulation (a write, then a flush of this node, which
 * does not count the write itself yet), done here so the log gets the
 * same entries.
 */
import { BlockError } from '../../../util/errors.ts';
import { obj, opt, req } from '../../../qapi/types.ts';
import { BlockdevRef } from '../../options.ts';
import { ReqFlag, type Extent } from '../../request.ts';
import type { BlockNode } from '../../node.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import {
  ENTRY_SIZE, LOG_DISCARD_FLAG, LOG_FLAG_MASK, LOG_FLUSH_FLAG, WRITE_LOG_MAGIC, WRITE_LOG_VERSION,
  decodeEntry, decodeSuper, encodeEntry, encodeSuper, entrySectors, sectorSizeValid,
} from './log-format.ts';

const SECTOR = 512;

const STRERROR: Partial<Record<BlockError['code'], string>> = {
  EIO: 'Input/output error', EINVAL: 'Invalid argument', EPERM: 'Operation not permitted', ENOSPC: 'No space left on device',
};

/** Where an existing log goes on (QEMU's log-append): its sector size, next free sector and entry count. */
async function appendPosition(log: BlockNode): Promise<{ sectorSize: number; cur: number; entries: number }> {
  let sb = { magic: WRITE_LOG_MAGIC, version: WRITE_LOG_VERSION, nrEntries: 0n, sectorSize: SECTOR };
  if (log.length() !== 0) {
    const head = Buffer.alloc(SECTOR);
    try {
      await log.read(0, head);
    } catch (e) {
      throw new BlockError('EIO', `Could not read log superblock: ${STRERROR[(e as BlockError).code] ?? 'Input/output error'}`);
    }
    sb = decodeSuper(head);
  }
  if (sb.magic !== WRITE_LOG_MAGIC) throw new BlockError('EINVAL', 'Invalid log superblock magic');
  if (sb.version !== WRITE_LOG_VERSION) throw new BlockError('EINVAL', `Unsupported log version ${sb.version}`);
  if (!sectorSizeValid(sb.sectorSize)) return { sectorSize: sb.sectorSize, cur: 1, entries: 0 };
  // Walk the entries to find the end (blk_log_writes_find_cur_log_sector).
  let cur = 1n;
  const entry = Buffer.alloc(ENTRY_SIZE);
  for (let i = 0n; i < sb.nrEntries; i++) {
    const at = Number(cur * BigInt(sb.sectorSize));
    try {
      entry.fill(0);
      // Past the end of the log reads as zeroes, as QEMU's file driver returns them.
      if (at < log.length()) await log.read(at, entry.subarray(0, Math.min(ENTRY_SIZE, log.length() - at)));
    } catch (e) {
      throw new BlockError('EIO', `Failed to read log entry ${i}: ${STRERROR[(e as BlockError).code] ?? 'Input/output error'}`);
    }
    const en = decodeEntry(entry);
    if (en.flags & ~BigInt(LOG_FLAG_MASK)) throw new BlockError('EINVAL', `Invalid flags 0x${en.flags.toString(16)} in log entry ${i}`);
    cur += entrySectors(en);
  }
  return { sectorSize: sb.sectorSize, cur: Number(cur), entries: Number(sb.nrEntries) };
}

export const blklogwritesDriver: Driver = {
  name: 'blklogwrites',
  kind: 'filter',
  options: obj('BlockdevOptionsBlklogwrites', [
    req('file', BlockdevRef, 'block device'),
    req('log', BlockdevRef, 'block device used to log writes to @file'),
    opt('log-sector-size', 'uint32', 'sector size used in logging writes to @file, determines granularity of offsets and sizes of writes (default: 512)'),
    opt('log-append', 'bool', 'append to an existing log (default: false)'),
    opt('log-super-update-interval', 'uint64', 'interval of write requests after which the log super block is updated to disk (default: 4096)'),
  ]),
  strongOptions: ['log-append', 'log-sector-size'],
  // QEMU's filters without a refresh_filename hook have no filename of their own: json:{...}.
  exactFilename: () => undefined,
  // The file as a filter's child; the log as a node's own metadata (nobody else writes or resizes it).
  childPerm: (role, readOnly) => (role === 'log'
    ? { perm: { read: true, write: !readOnly, resize: !readOnly }, shared: { read: true, write: false, resize: false } }
    : { perm: { read: true, write: !readOnly, resize: !readOnly }, shared: { read: true, write: true, resize: true }, passThrough: true }),
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const log = await ctx.openChild('log', options.log as string | Record<string, unknown>);
    let sectorSize: number;
    let cur = 1;
    let entries = 0;
    if (options['log-append'] === true) {
      if (options['log-sector-size'] !== undefined) throw new BlockError('EINVAL', 'log-append and log-sector-size are mutually exclusive');
      ({ sectorSize, cur, entries } = await appendPosition(log));
    } else {
      sectorSize = (options['log-sector-size'] as number | undefined) ?? SECTOR;
    }
    if (!sectorSizeValid(sectorSize)) throw new BlockError('EINVAL', `Invalid log sector size ${sectorSize}`);
    const interval = (options['log-super-update-interval'] as number | undefined) ?? 4096;
    if (interval === 0) throw new BlockError('EINVAL', 'Invalid log superblock update interval 0');
    const bits = Math.log2(sectorSize);
    // QEMU's write_gen and flushed_gen of this node.
    let writeGen = 0;
    let flushedGen = 0;
    const unmap = ctx.options.discard === 'unmap';
    const noFlush = ctx.options.cache?.['no-flush'] === true;

    /** Writes [offset, +data.length) of the log, growing it first if it ends short of that. */
    async function logWrite(offset: number, data: Buffer | number): Promise<void> {
      const len = typeof data === 'number' ? data : data.length;
      if (offset + len > log.length()) await log.truncate(offset + len);
      if (typeof data === 'number') await log.writeZeroes(offset, len);
      else await log.write(offset, data);
    }

    /** One entry (blk_log_writes_co_do_log): its place is taken before any I/O, then header and data, then maybe the superblock. */
    async function record(offset: number, bytes: number, flags: number, data?: Buffer, zeroes = 0): Promise<void> {
      const at = cur * sectorSize;
      const dataLen = data ? data.length : 0;
      cur += 1 + Math.ceil(dataLen / sectorSize) + Math.ceil(zeroes / sectorSize);
      const n = ++entries;
      const header = encodeEntry(Math.floor(offset / 2 ** bits), Math.floor(bytes / 2 ** bits), flags, sectorSize);
      await logWrite(at, data ? Buffer.concat([header, data]) : header);
      if (zeroes) await logWrite(at + sectorSize, zeroes);
      if (flags & LOG_FLUSH_FLAG || n % interval === 0) {
        await logWrite(0, encodeSuper(n, sectorSize));
        await log.flush();
      }
    }

    /** The file's part, then the log's (blk_log_writes_co_log): a log error wins over the file's. */
    async function logged(fileOp: () => Promise<void>, entry: () => Promise<void>): Promise<void> {
      let fileError: unknown;
      try { await fileOp(); } catch (e) { fileError = e; }
      await entry();
      if (fileError !== undefined) throw fileError;
    }

    /** QEMU's bdrv_co_flush of this node: the FLUSH entry only if something was written since the last flush. */
    async function flushNode(): Promise<void> {
      const current = writeGen;
      if (!noFlush && flushedGen !== current) await logged(() => file.flush(), () => record(0, 0, LOG_FLUSH_FLAG));
      await log.flush();
      flushedGen = current;
    }

    const ops: DriverOps = {
      length: () => file.length(),
      read: (offset, buf) => file.read(offset, buf),
      async write(offset, buf, flags) {
        await logged(() => file.write(offset, buf), () => record(offset, buf.length, 0, buf));
        if (flags & ReqFlag.FUA) await flushNode().then(() => file.flush());
        writeGen++;
      },
      async writeZeroes(offset, length, flags) {
        // No zero flags pass (supported_zero_flags 0): a fast-only request is refused.
        if (flags & ReqFlag.NO_FALLBACK) throw new BlockError('ENOTSUP', 'blklogwrites cannot write zeroes without fallback');
        await logged(() => file.writeZeroes(offset, length), () => record(offset, length, 0, undefined, length));
        if (flags & ReqFlag.FUA) await flushNode().then(() => file.flush());
        writeGen++;
      },
      async discard(offset, length) {
        // Without discard=unmap QEMU drops a discard before any driver sees it.
        if (!unmap) return;
        await logged(() => file.discard(offset, length), () => record(offset, length, LOG_DISCARD_FLAG));
        writeGen++;
      },
      // The node flushes the file child after this (as QEMU's flush_children).
      flush: () => flushNode(),
      // QEMU's bdrv_close flushes the node first (its result ignored): a FLUSH entry if anything was written since the last.
      async close() {
        await flushNode().then(() => file.flush()).catch((e) => ctx.log.warn({ err: e }, 'blklogwrites: flush on close failed'));
      },
      // QEMU's blklogwrites has no block status: everything is data.
      async blockStatus(offset, length): Promise<Extent[]> {
        return [{ offset, length, data: true, zero: false, allocated: true, depth: 1 }];
      },
      limits: { alignment: sectorSize, canFua: true, canZero: true, canTrim: true },
    };
    return ops;
  },
};
