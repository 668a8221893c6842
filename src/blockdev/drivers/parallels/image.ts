/**
 * An open Parallels image: the BAT in memory, reads, allocating writes and
 * block status as QEMU's block/parallels.c does them.
 *
 * - A lookup (QEMU's block_status) returns a run of sectors that is either
 *   unallocated or contiguous in the file, across clusters.
 * - An allocating write takes the run's clusters at data_end. When they do
 *   not fit in the file, the file first grows by them plus prealloc-size
 *   (128 MiB, QEMU's default: the option is not in the QAPI schema), zeroed
 *   (mode falloc: write-zeroes on the file). BAT changes stay in memory and
 *   reach the file in 16 KiB blocks at flush (QEMU's flush_to_os).
 * - Read-write: the header's inuse mark is set at open and cleared at close,
 *   when the file is also cut back to data_end.
 *
 * The BAT is kept as QEMU's header buffer for its part inside the file,
 * and as a map for entries past that (which read as zero in QEMU), so a
 * hostile bat_entries cannot make blockd allocate gigabytes.
 */
import { Mutex } from '../qcow2/mutex.ts';
import { readClipped, writeGrowing } from '../../child-io.ts';
import type { BlockNode } from '../../node.ts';
import type { Extent } from '../../request.ts';
import { BAT_DIRTY_BLOCK, HEADER_SIZE, INUSE_MAGIC, MEM_ALIGN, batEntryOff, type ParallelsHeader } from './header.ts';

const SECTOR = 512;
/** QEMU's default prealloc-size (128M), in sectors. */
const PREALLOC_SECTORS = (128 * 1024 * 1024) / SECTOR;

export class ParallelsImage {
  private readonly lock = new Mutex();
  private readonly extra = new Map<number, number>();
  private readonly dirty = new Set<number>();
  dataEnd: number;
  readonly preallocSectors: number;

  /** `head`: the first bytes of QEMU's header buffer (header and BAT), at most h.headerSize. */
  constructor(readonly file: BlockNode, readonly h: ParallelsHeader, readonly head: Buffer) {
    this.dataEnd = h.dataEnd;
    // QEMU's data_end: past the last cluster the BAT points at.
    const inHead = Math.min(h.batSize, Math.floor((head.length - HEADER_SIZE) / 4));
    for (let i = 0; i < inHead; i++) {
      const off = this.bat2sect(i);
      if (off >= this.dataEnd) this.dataEnd = off + h.tracks;
    }
    this.preallocSectors = Math.max(h.tracks, PREALLOC_SECTORS);
  }

  bat(i: number): number {
    const at = batEntryOff(i);
    return at + 4 <= this.head.length ? this.head.readUInt32LE(at) : this.extra.get(i) ?? 0;
  }

  private setBat(i: number, v: number): void {
    const at = batEntryOff(i);
    if (at + 4 <= this.head.length) this.head.writeUInt32LE(v >>> 0, at);
    else this.extra.set(i, v >>> 0);
    this.dirty.add(Math.floor(at / BAT_DIRTY_BLOCK));
  }

  private bat2sect(i: number): number { return this.bat(i) * this.h.offMultiplier; }

  /** QEMU's seek_to_sector: the file sector of a guest sector, or -1. */
  private seek(sector: number): number {
    const index = Math.floor(sector / this.h.tracks);
    if (index >= this.h.batSize || this.bat(index) === 0) return -1;
    return this.bat2sect(index) + (sector % this.h.tracks);
  }

  /** QEMU's block_status: [file sector or -1, sectors] of the run at `sector`. */
  private run(sector: number, nb: number): [number, number] {
    let start = -2;
    let prevEnd = -2;
    let pnum = 0;
    while (nb > 0 || start === -2) {
      const off = this.seek(sector);
      if (start === -2) { start = off; prevEnd = off; } else if (off !== prevEnd) break;
      const toEnd = Math.min(nb, this.h.tracks - (sector % this.h.tracks));
      nb -= toEnd;
      sector += toEnd;
      pnum += toEnd;
      if (off > 0) prevEnd += toEnd;
    }
    return [start, pnum];
  }

  async read(offset: number, buf: Buffer): Promise<void> {
    let sector = offset / SECTOR;
    for (let done = 0; done < buf.length;) {
      const [pos, n] = this.run(sector, (buf.length - done) / SECTOR);
      const part = buf.subarray(done, done + n * SECTOR);
      if (pos < 0) part.fill(0);
      else await readClipped(this.file, pos * SECTOR, part);
      done += part.length;
      sector += n;
    }
  }

  async write(offset: number, buf: Buffer): Promise<void> {
    let sector = offset / SECTOR;
    for (let done = 0; done < buf.length;) {
      const [pos, n] = await this.lock.run(() => this.allocate(sector, (buf.length - done) / SECTOR));
      const part = buf.subarray(done, done + n * SECTOR);
      await writeGrowing(this.file, pos * SECTOR, part);
      done += part.length;
      sector += n;
    }
  }

  /** QEMU's allocate_clusters (no backing file: the parallels driver takes none). */
  private async allocate(sector: number, nb: number): Promise<[number, number]> {
    const [pos, pnum] = this.run(sector, nb);
    if (pos > 0) return [pos, pnum];
    const { tracks } = this.h;
    const idx = Math.floor(sector / tracks);
    const toAllocate = Math.ceil((sector + pnum) / tracks) - idx;
    let space = toAllocate * tracks;
    if (this.dataEnd + space > Math.floor(this.file.length() / SECTOR)) {
      space += this.preallocSectors;
      const start = this.dataEnd * SECTOR;
      const end = (this.dataEnd + space) * SECTOR;
      if (end > this.file.length()) await this.file.truncate(end);
      await this.file.writeZeroes(start, end - start);
    }
    for (let i = 0; i < toAllocate; i++) {
      this.setBat(idx + i, Math.floor(this.dataEnd / this.h.offMultiplier));
      this.dataEnd += tracks;
    }
    return [this.bat2sect(idx) + (sector % tracks), pnum];
  }

  /** The header buffer's bytes [off, off+len) (entries past the kept part from the map). */
  private headerBytes(off: number, len: number): Buffer {
    const b = Buffer.alloc(len);
    this.head.copy(b, 0, off, Math.min(this.head.length, off + len));
    for (const [i, v] of this.extra) {
      const at = batEntryOff(i) - off;
      if (at >= 0 && at + 4 <= len) b.writeUInt32LE(v, at);
    }
    return b;
  }

  /** QEMU's parallels_co_flush_to_os: the dirty 16 KiB blocks of header and BAT. */
  async flushBat(): Promise<void> {
    await this.lock.run(async () => {
      for (const blk of [...this.dirty].sort((a, b) => a - b)) {
        const off = blk * BAT_DIRTY_BLOCK;
        const len = Math.min(BAT_DIRTY_BLOCK, this.h.headerSize - off);
        if (len > 0) await writeGrowing(this.file, off, this.headerBytes(off, len));
      }
      this.dirty.clear();
    });
  }

  async flush(): Promise<void> {
    await this.flushBat();
    await this.file.flush();
  }

  /** QEMU's parallels_update_header: the first page of the header buffer, synced. */
  async updateHeader(inuse: boolean): Promise<void> {
    this.head.writeUInt32LE(inuse ? INUSE_MAGIC : 0, 44);
    await writeGrowing(this.file, 0, this.headerBytes(0, Math.min(MEM_ALIGN, this.h.headerSize)));
    await this.file.flush();
  }

  /** parallels_close of a read-write node: flushed, not in use, the file cut back to data_end (errors ignored). */
  async close(): Promise<void> {
    await this.flush().catch(() => undefined);
    await this.updateHeader(false).catch(() => undefined);
    await this.file.truncate(this.dataEnd * SECTOR).catch(() => undefined);
  }

  /**
   * parallels_co_block_status: allocated runs are data (without
   * BDRV_BLOCK_RECURSE the block layer does not ask the file whether they
   * read as zeroes), the rest unallocated.
   */
  blockStatus(offset: number, length: number): Extent[] {
    const [pos, n] = this.run(offset / SECTOR, length / SECTOR);
    const len = n * SECTOR;
    if (pos < 0) return [{ offset, length: len, data: false, zero: true, allocated: false, depth: 0 }];
    return [{ offset, length: len, data: true, zero: false, allocated: true, depth: 1 }];
  }
}
