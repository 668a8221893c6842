/**
 * An open VHDX image's I/O (QEMU's vhdx_co_readv/vhdx_co_writev): payload
 * blocks through the BAT; a write to a block that is not present appends a
 * block at the next 1 MiB boundary of the file, writes the data, then puts
 * the new BAT entry through the log (one entry, written, flushed and
 * replayed at once, the headers' log GUID set and cleared around it), as
 * QEMU does. The first guest-visible write updates both headers with a new
 * data-write GUID. Layout and log formats: header.ts, log.ts.
 */
import { BlockError } from '../../../util/errors.ts';
import { readClipped, writeGrowing } from '../../child-io.ts';
import { Mutex } from '../qcow2/mutex.ts';
import type { BlockNode } from '../../node.ts';
import type { Extent } from '../../request.ts';
import {
  BAT_OFFSET_MASK, BAT_STATE_MASK, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_SIZE, HEADER_STRUCT_SIZE, MiB, PAYLOAD_FULLY_PRESENT,
  PAYLOAD_NOT_PRESENT, PAYLOAD_UNDEFINED, PAYLOAD_UNMAPPED, PAYLOAD_UNMAPPED_V095, PAYLOAD_ZERO, ZERO_GUID,
  batIndex, encodeHeader, newGuid, type VhdxGeometry, type VhdxHeader,
} from './header.ts';
import { LOG_SECTOR, encodeEntry, replayLog, writeRing, type LogFile, type LogRing } from './log.ts';

const ABSENT = new Set([PAYLOAD_NOT_PRESENT, PAYLOAD_UNDEFINED, PAYLOAD_ZERO, PAYLOAD_UNMAPPED, PAYLOAD_UNMAPPED_V095]);
const MAX_IO = 2 ** 63 - 2 ** 32;

/** The image file as the log and the header updates use it (QEMU's bdrv_pread/pwrite on bs->file). */
export function logFile(file: BlockNode): LogFile {
  return {
    async read(offset, length) {
      if (offset + length > MAX_IO) throw new BlockError('EIO', 'Input/output error');
      const b = Buffer.alloc(length);
      await readClipped(file, offset, b);
      return b;
    },
    write: (offset, data) => writeGrowing(file, offset, data),
    async writeSync(offset, data) { await writeGrowing(file, offset, data); await file.flush(); },
    length: () => file.length(),
    truncate: (n) => file.truncate(n),
  };
}

/** The two headers and the session's GUIDs: QEMU's header updates (the non-current one is rewritten and becomes current). */
export class HeaderPair {
  private readonly sessionGuid = newGuid();
  private firstVisibleWrite = true;
  constructor(private readonly io: LogFile, readonly headers: [VhdxHeader, VhdxHeader], public current: 0 | 1) {}

  get active(): VhdxHeader { return this.headers[this.current]; }

  /** QEMU's vhdx_update_header: the other header gets the next sequence number and is written; it becomes current. */
  private async updateOne(newDataGuid: boolean, logGuid?: Buffer): Promise<void> {
    const idx = this.current === 0 ? 1 : 0;
    const inactive = this.headers[idx];
    inactive.sequence = (this.headers[this.current].sequence + 1n) & 0xffffffffffffffffn;
    inactive.fileWriteGuid = this.sessionGuid;
    if (newDataGuid) inactive.dataWriteGuid = newGuid();
    if (logGuid) inactive.logGuid = logGuid;
    const at = idx === 0 ? HEADER1_OFFSET : HEADER2_OFFSET;
    const block = encodeHeader(inactive, await this.io.read(at, HEADER_SIZE));
    await this.io.writeSync(at, block.subarray(0, HEADER_STRUCT_SIZE));
    this.current = idx;
  }

  /** Both headers, as the specification asks (QEMU's vhdx_update_headers). */
  async update(newDataGuid: boolean, logGuid?: Buffer): Promise<void> {
    await this.updateOne(newDataGuid, logGuid);
    await this.updateOne(newDataGuid, logGuid);
  }

  /** QEMU's vhdx_user_visible_write: a new data-write GUID before the first change. */
  async userVisibleWrite(): Promise<void> {
    if (!this.firstVisibleWrite) return;
    this.firstVisibleWrite = false;
    await this.update(true);
  }
}

export class VhdxImage {
  private readonly lock = new Mutex();
  private readonly io: LogFile;
  /** The log's ring positions, the tail and next sequence number for new entries. */
  ring: LogRing;
  tail = 0;

  constructor(private readonly file: BlockNode, private readonly hp: HeaderPair, readonly g: VhdxGeometry,
    private readonly bat: BigUint64Array, private readonly batOffset: number, public sequence: bigint) {
    this.io = logFile(file);
    const h = hp.active;
    this.ring = { offset: Number(h.logOffset), length: h.logLength, read: 0, write: 0 };
  }

  get blockSize(): number { return this.g.blockSize; }

  private async each(offset: number, length: number, fn: (idx: number, inBlock: number, n: number, done: number) => Promise<void>): Promise<void> {
    for (let done = 0; done < length;) {
      const pos = offset + done;
      const inBlock = pos % this.g.blockSize;
      const n = Math.min(length - done, this.g.blockSize - inBlock);
      await fn(batIndex(this.g, pos), inBlock, n, done);
      done += n;
    }
  }

  /** Where a present block's byte lies: QEMU adds the in-block offset only to a non-zero block offset. */
  private where(idx: number, inBlock: number): number {
    const base = Number(this.bat[idx] & BAT_OFFSET_MASK);
    return base === 0 ? inBlock : base + inBlock;
  }

  private state(idx: number): number { return Number(this.bat[idx] & BAT_STATE_MASK); }

  read(offset: number, buf: Buffer): Promise<void> {
    return this.each(offset, buf.length, async (idx, inBlock, n, done) => {
      const part = buf.subarray(done, done + n);
      const st = this.state(idx);
      if (ABSENT.has(st)) part.fill(0);
      else if (st === PAYLOAD_FULLY_PRESENT) await readClipped(this.file, this.where(idx, inBlock), part);
      else throw new BlockError('EIO', 'Input/output error');
    });
  }

  async write(offset: number, buf: Buffer): Promise<void> {
    await this.lock.run(() => this.hp.userVisibleWrite());
    await this.each(offset, buf.length, async (idx, inBlock, n, done) => {
      const part = buf.subarray(done, done + n);
      if (this.state(idx) === PAYLOAD_FULLY_PRESENT) return this.writePresent(idx, inBlock, part);
      await this.lock.run(async () => {
        const st = this.state(idx);
        if (st === PAYLOAD_FULLY_PRESENT) return this.writePresent(idx, inBlock, part);
        if (!ABSENT.has(st)) throw new BlockError('EIO', 'Input/output error');
        // QEMU's vhdx_allocate_block: the next 1 MiB boundary of the file, grown (with zeroes) to hold the block.
        const at = Math.ceil(this.file.length() / MiB) * MiB;
        await this.file.truncate(at + this.g.blockSize);
        const prior = this.bat[idx];
        this.bat[idx] = BigInt(at) | BigInt(PAYLOAD_FULLY_PRESENT);
        try {
          await this.writePresent(idx, inBlock, part);
        } catch (e) {
          this.bat[idx] = prior;
          throw e;
        }
        await this.logBatEntry(idx);
      });
    });
  }

  private async writePresent(idx: number, inBlock: number, part: Buffer): Promise<void> {
    const at = this.where(idx, inBlock);
    // QEMU's -EFAULT for a block in the header section (EINVAL on the wire).
    if (at < MiB) throw new BlockError('EINVAL', 'Bad address');
    await writeGrowing(this.file, at, part);
  }

  /** QEMU's vhdx_log_write_and_flush of one 8-byte BAT entry: the data made stable, the entry logged, flushed, replayed. */
  private async logBatEntry(idx: number): Promise<void> {
    const entryAt = this.batOffset + 8 * idx;
    await this.file.flush();
    const h = this.hp.active;
    if (8 > h.logLength) throw new BlockError('EINVAL', 'Invalid argument');
    if (!h.logGuid.equals(ZERO_GUID)) throw new BlockError('ENOTSUP', 'Operation not supported');
    await this.hp.update(false, newGuid());
    if (this.sequence === 0n) this.sequence = 1n;
    const sectorAt = entryAt - (entryAt % LOG_SECTOR);
    const sector = await this.io.read(sectorAt, LOG_SECTOR);
    const e = Buffer.alloc(8);
    e.writeBigUInt64LE(this.bat[idx]);
    e.copy(sector, entryAt % LOG_SECTOR);
    const logGuid = this.hp.active.logGuid;
    const entry = encodeEntry({ sequence: this.sequence, tail: this.tail, logGuid, fileLength: this.file.length(), fileOffset: sectorAt, sector });
    const start = { ...this.ring };
    if (!await writeRing(this.io, this.ring, entry)) throw new BlockError('EINVAL', 'Invalid argument');
    this.sequence++;
    this.tail = this.ring.write;
    await this.file.flush();
    const logs = { ring: { ...this.ring, read: start.read }, count: 1, sequence: 0n };
    await replayLog(this.io, logs, logGuid);
    await this.file.flush();
    await this.hp.update(false, ZERO_GUID);
    this.ring = logs.ring;
  }

  /** QEMU's vhdx has no block-status: everything is data, allocated here. */
  blockStatus(offset: number, length: number): Extent[] {
    return [{ offset, length, data: true, zero: false, allocated: true, depth: 1 }];
  }
}

