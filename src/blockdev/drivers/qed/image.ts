/**
 * An open QED image: cluster lookup, reads, writes and block status as
 * QEMU's block/qed.c, qed-cluster.c and qed-table.c do them.
 *
 * - A lookup stops at the L2 table's end and returns a run of clusters of
 *   one kind: allocated and contiguous in the file, zero, or unallocated
 *   (no L2 entry, or no L2 table).
 * - Write requests run one at a time (QEMU lets one allocating request run
 *   at once and each allocates as it goes, so the file's layout depends on
 *   that order). An allocating write takes whole clusters at the end of the
 *   file (QEMU's file_size, never the file's real end), fills the rest of
 *   them from the backing file or with zeroes, then records them in the L2
 *   table; a missing L2 table is allocated after the data, written whole
 *   and flushed, then linked from the L1 table. Table updates write whole
 *   512-byte sectors of the table.
 * - Without a backing file the first allocating write sets QED_F_NEED_CHECK
 *   in the header; QEMU clears it from a timer on its virtual clock, which
 *   qemu-storage-daemon never advances, so in qsd (and blockd) it is cleared
 *   when the node is drained with that timer armed, or closed.
 */
import { BlockError } from '../../../util/errors.ts';
import { Mutex } from '../qcow2/mutex.ts';
import { readClipped, writeGrowing } from '../../child-io.ts';
import type { BlockNode } from '../../node.ts';
import type { Extent } from '../../request.ts';
import {
  F_NEED_CHECK, UNALLOCATED, ZERO_CLUSTER, bytesToClusters, encodeHeader, geometry, isClusterOffsetValid, isTableOffsetValid,
  type QedGeometry, type QedHeader,
} from './header.ts';

export type Kind = 'found' | 'zero' | 'l2' | 'l1';
interface Lookup { kind: Kind; offset: number; len: number; l2?: { offset: number; table: Buffer } }

/** QEMU's L2 cache holds this many tables. */
const L2_CACHE_SIZE = 50;
const SECTOR = 512;

/** A 64-bit table entry as a number (past 2^53 it is no valid offset; MAX_SAFE_INTEGER fails every check). */
export function entryAt(table: Buffer, i: number): number {
  const v = table.readBigUInt64LE(i * 8);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

export class QedImage {
  readonly g: QedGeometry;
  private readonly l2Cache = new Map<number, Buffer>();
  private readonly writes = new Mutex();
  /** QEMU's need-check timer is armed (an allocating write finished with the flag set). */
  private cleanPending = false;
  private cleaning: Promise<void> | undefined;

  constructor(readonly file: BlockNode, readonly h: QedHeader, public fileSize: number, readonly l1: Buffer,
    private readonly backing: () => BlockNode | undefined) {
    this.g = geometry(h);
  }

  get dirty(): boolean { return (this.h.features & F_NEED_CHECK) !== 0n; }

  /** Rewrites the 64-byte header in place (QEMU's qed_write_header / qed_write_header_sync). */
  writeHeader(): Promise<void> {
    return this.file.write(0, encodeHeader(this.h));
  }

  async loadL2(offset: number): Promise<Buffer> {
    const hit = this.l2Cache.get(offset);
    if (hit) {
      this.l2Cache.delete(offset);
      this.l2Cache.set(offset, hit);
      return hit;
    }
    const t = Buffer.alloc(this.g.tableBytes);
    await readClipped(this.file, offset, t);
    this.cache(offset, t);
    return t;
  }

  private cache(offset: number, t: Buffer): void {
    this.l2Cache.set(offset, t);
    if (this.l2Cache.size > L2_CACHE_SIZE) this.l2Cache.delete(this.l2Cache.keys().next().value!);
  }

  /** QEMU's qed_find_cluster: the run of one kind starting at `pos`, at most `len` bytes and within one L2 table. */
  async find(pos: number, len: number): Promise<Lookup> {
    const { cs, l2Span, nelems } = this.g;
    len = Math.min(len, (Math.floor(pos / l2Span) + 1) * l2Span - pos);
    const l2off = entryAt(this.l1, Math.floor(pos / l2Span));
    if (l2off === UNALLOCATED) return { kind: 'l1', offset: 0, len };
    if (!isTableOffsetValid(this.g, this.fileSize, l2off)) throw new BlockError('EINVAL', 'Invalid argument');
    const table = await this.loadL2(l2off);
    const index = Math.floor(pos / cs) % nelems;
    const inCluster = pos % cs;
    const end = Math.min(index + bytesToClusters(cs, inCluster + len), nelems);
    const first = entryAt(table, index);
    let last = first;
    let i = index + 1;
    for (; i < end; i++) {
      const e = entryAt(table, i);
      if (last === UNALLOCATED || last === ZERO_CLUSTER) { if (e !== last) break; }
      else if (e !== last + cs) break;
      else last = e;
    }
    let kind: Kind;
    if (first === UNALLOCATED) kind = 'l2';
    else if (first === ZERO_CLUSTER) kind = 'zero';
    else if (isClusterOffsetValid(this.g, this.fileSize, first)) kind = 'found';
    else throw new BlockError('EINVAL', 'Invalid argument');
    return { kind, offset: first, len: Math.min(len, (i - index) * cs - inCluster), l2: { offset: l2off, table } };
  }

  /** Backing file data (zeroes past its end, or without one), as qed_read_backing_file. */
  private async readBacking(pos: number, part: Buffer): Promise<void> {
    const b = this.backing();
    const n = b ? Math.max(0, Math.min(part.length, b.length() - pos)) : 0;
    if (n > 0) await b!.read(pos, part.subarray(0, n));
    part.fill(0, n);
  }

  async read(offset: number, buf: Buffer): Promise<void> {
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const f = await this.find(pos, buf.length - done);
      const part = buf.subarray(done, done + f.len);
      if (f.kind === 'zero') part.fill(0);
      else if (f.kind === 'found') await readClipped(this.file, f.offset + (pos % this.g.cs), part);
      else await this.readBacking(pos, part);
      done += f.len;
    }
  }

  /** A write request (`buf` undefined: a cluster-aligned zero write, QEMU's QED_AIOCB_ZERO). */
  write(offset: number, length: number, buf: Buffer | undefined): Promise<void> {
    return this.writes.run(async () => {
      let allocated = false;
      for (let done = 0; done < length;) {
        const pos = offset + done;
        const f = await this.find(pos, length - done);
        const part = buf?.subarray(done, done + f.len);
        if (f.kind === 'found') {
          await writeGrowing(this.file, f.offset + (pos % this.g.cs), part ?? Buffer.alloc(f.len));
        } else if (!(part === undefined && f.kind === 'zero')) {
          if (!allocated) this.cleanPending = false;
          allocated = true;
          await this.allocate(pos, f, part);
        }
        done += f.len;
      }
      if (allocated && this.dirty) this.cleanPending = true;
    });
  }

  /** QEMU's qed_aio_write_alloc for one run: new clusters (or zero clusters), then the L2 (and L1) update. */
  private async allocate(pos: number, f: Lookup, part: Buffer | undefined): Promise<void> {
    const { cs } = this.g;
    const inCluster = pos % cs;
    const n = bytesToClusters(cs, inCluster + f.len);
    let cluster = ZERO_CLUSTER;
    if (part) {
      cluster = this.fileSize;
      this.fileSize += n * cs;
    }
    if (!this.backing() && !this.dirty) {
      this.h.features |= F_NEED_CHECK;
      await this.writeHeader();
    }
    if (part) {
      const start = pos - inCluster;
      if (inCluster > 0) await this.copyFromBacking(start, inCluster, cluster);
      const after = pos + part.length;
      const tail = Math.ceil(after / cs) * cs - after;
      if (tail > 0) await this.copyFromBacking(after, tail, cluster + inCluster + part.length);
      await writeGrowing(this.file, cluster + inCluster, part);
      // With a backing file the new data is flushed before the L2 table points at it.
      if (this.backing()) await this.file.flush();
    }
    await this.updateL2(pos, f, n, cluster);
  }

  private async copyFromBacking(pos: number, len: number, at: number): Promise<void> {
    const b = Buffer.alloc(len);
    await this.readBacking(pos, b);
    await writeGrowing(this.file, at, b);
  }

  private async updateL2(pos: number, f: Lookup, n: number, cluster: number): Promise<void> {
    const { cs, nelems, tableBytes, l2Span } = this.g;
    const index = Math.floor(pos / cs) % nelems;
    const fill = (t: Buffer) => {
      // QEMU's qed_update_l2_table (kept inside the table).
      for (let i = index, c = cluster; i < Math.min(index + n, nelems); i++) {
        t.writeBigUInt64LE(BigInt(c), i * 8);
        if (c !== UNALLOCATED && c !== ZERO_CLUSTER) c += cs;
      }
    };
    if (f.kind === 'l1') {
      const offset = this.fileSize;
      this.fileSize += tableBytes;
      const t = Buffer.alloc(tableBytes);
      fill(t);
      await writeGrowing(this.file, offset, t);
      await this.file.flush();
      const l1i = Math.floor(pos / l2Span);
      this.l1.writeBigUInt64LE(BigInt(offset), l1i * 8);
      await this.writeTable(this.h.l1TableOffset, this.l1, l1i, 1);
      this.cache(offset, t);
    } else {
      fill(f.l2!.table);
      await this.writeTable(f.l2!.offset, f.l2!.table, index, n);
    }
  }

  /** QEMU's qed_write_table: the whole sectors of the table that hold entries [index, index+n). */
  async writeTable(offset: number, table: Buffer, index: number, n: number): Promise<void> {
    const per = SECTOR / 8;
    const start = Math.floor(index / per) * per;
    const end = Math.min(Math.ceil((index + n) / per) * per, table.length / 8);
    await writeGrowing(this.file, offset + start * 8, table.subarray(start * 8, end * 8));
  }

  /**
   * QEMU's bdrv_qed_co_block_status: allocated clusters are data, zero
   * clusters zero; unallocated runs are the backing file's, or zero.
   */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const f = await this.find(offset, length);
    if (f.kind === 'zero') return [{ offset, length: f.len, data: false, zero: true, allocated: true, depth: 1 }];
    // Without BDRV_BLOCK_RECURSE the block layer does not ask the file whether allocated clusters read as zeroes.
    if (f.kind === 'found') return [{ offset, length: f.len, data: true, zero: false, allocated: true, depth: 1 }];
    const b = this.backing();
    if (b && offset < b.length()) {
      const [x] = await b.blockStatus(offset, Math.min(f.len, b.length() - offset));
      return [{ offset, length: x.length, data: x.data, zero: x.zero, allocated: false, depth: x.depth ? x.depth + 1 : 0 }];
    }
    return [{ offset, length: f.len, data: false, zero: true, allocated: false, depth: 0 }];
  }

  /**
   * QEMU's qed_need_check_timer_entry: with no write running, flush, clear
   * the flag, write the header (a failed write, e.g. on a read-only file,
   * is ignored and the flag stays cleared in memory), flush.
   */
  clean(): Promise<void> {
    return this.writes.run(async () => {
      if (!this.cleanPending) return;
      this.cleanPending = false;
      try { await this.file.flush(); } catch { return; }
      this.h.features &= ~F_NEED_CHECK;
      if (!this.file.readOnly) await this.writeHeader().catch(() => undefined);
      await this.file.flush().catch(() => undefined);
    });
  }

  /**
   * An image opened with the flag still set arms the timer
   * (bdrv_qed_attach_aio_context); qsd's blockdev-add drains the new node
   * right after, which fires it.
   */
  async armedAtOpen(): Promise<void> {
    if (!this.dirty) return;
    this.cleanPending = true;
    await this.clean();
  }

  /** bdrv_qed_co_drain_begin: an armed timer fires at once. */
  drainBegin(): void {
    if (this.cleanPending && !this.cleaning) {
      this.cleaning = this.clean().catch(() => undefined).finally(() => { this.cleaning = undefined; });
    }
  }

  /** bdrv_qed_close: flush, and a clean shutdown clears the flag. */
  async close(): Promise<void> {
    await this.cleaning;
    this.cleanPending = false;
    await this.writes.run(async () => {
      if (this.file.readOnly) return;
      await this.file.flush();
      if (this.dirty) {
        this.h.features &= ~F_NEED_CHECK;
        await this.writeHeader();
      }
    });
  }

  /** bdrv_qed_co_truncate (preallocation off): grow only, to a valid size; the header records it. */
  async truncate(size: number, valid: boolean): Promise<void> {
    if (!valid) throw new BlockError('EINVAL', 'Invalid image size specified');
    if (size < this.h.imageSize) throw new BlockError('ENOTSUP', 'Shrinking images is currently not supported');
    const old = this.h.imageSize;
    this.h.imageSize = size;
    try {
      await this.writeHeader();
    } catch (e) {
      this.h.imageSize = old;
      throw new BlockError((e as BlockError).code ?? 'EIO', `Failed to update the image size: ${(e as Error).message}`);
    }
  }
}
