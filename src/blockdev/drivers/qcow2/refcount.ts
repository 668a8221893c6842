/**
 * Reference counts: the in-memory refcount table, refcount blocks through a
 * MetaCache, cluster allocation (first fit from a hint, new clusters at the
 * end), refcount block allocation and refcount table growth.
 *
 * Every method that changes refcounts must be called with the image's
 * metadata mutex held.
 */
import { BlockError } from '../../../util/errors.ts';
import { MetaCache } from './cache.ts';
import { entryOffset } from './l2.ts';
import { HeaderField } from './header.ts';
import type { BlkdebugEvent } from '../../debug-events.ts';

export interface RefcountHost {
  readonly clusterSize: number;
  readonly clusterBits: number;
  /** Reads metadata; bytes past the end of the file read as zeroes (as in QEMU). */
  readMeta(offset: number, buf: Buffer): Promise<void>;
  writeMeta(offset: number, buf: Buffer): Promise<void>;
  barrier(): Promise<void>;
  /** Current length of the image file in bytes. */
  fileLength(): number;
  /** Signals impossible metadata: marks the image corrupt and returns the error to throw. */
  corrupt(message: string): BlockError;
  /** Called when a cluster's refcount drops to zero (to pass the discard down). */
  onFreed?(offset: number, length: number): Promise<void>;
  /** Refuses allocations over known metadata (QEMU's overlap check). */
  checkAllocation?(offset: number, length: number): void;
  /** QEMU's BLKDBG_EVENT on the image file (cluster_alloc). */
  debugEvent?(event: BlkdebugEvent): void;
}

export function refcountMax(bits: number): number {
  return bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
}

/** Reads entry `i` of a refcount block of `bits`-wide entries. */
export function getRefcountEntry(buf: Buffer, i: number, bits: number): number {
  switch (bits) {
    case 8: return buf[i];
    case 16: return buf.readUInt16BE(i * 2);
    case 32: return buf.readUInt32BE(i * 4);
    case 64: {
      const v = buf.readBigUInt64BE(i * 8);
      return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
    }
    default: {
      const bit = i * bits;
      return (buf[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
    }
  }
}

export function setRefcountEntry(buf: Buffer, i: number, bits: number, v: number): void {
  switch (bits) {
    case 8: buf[i] = v; return;
    case 16: buf.writeUInt16BE(v, i * 2); return;
    case 32: buf.writeUInt32BE(v, i * 4); return;
    case 64: buf.writeBigUInt64BE(BigInt(v), i * 8); return;
    default: {
      const bit = i * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      buf[bit >> 3] = (buf[bit >> 3] & ~mask) | ((v << (bit & 7)) & mask);
    }
  }
}

export class Refcounts {
  /** Refcount block offsets by table index (0: none). */
  table: number[] = [];
  tableOffset = 0;
  tableClusters = 0;
  readonly bits: number;
  /** Refcount entries per block. */
  readonly perBlock: number;
  readonly max: number;
  /** First cluster index that may be free. */
  freeHint = 0;
  /** One past the highest cluster index ever allocated (allocations may not have reached the file yet). */
  highWater = 0;
  /** Offsets of refcount blocks, for overlap checks. */
  readonly blockSet = new Set<number>();

  constructor(private readonly host: RefcountHost, order: number, readonly cache: MetaCache) {
    this.bits = 2 ** order;
    this.perBlock = (host.clusterSize * 8) / this.bits;
    this.max = refcountMax(this.bits);
  }

  async load(tableOffset: number, tableClusters: number): Promise<void> {
    const cs = this.host.clusterSize;
    const buf = Buffer.alloc(tableClusters * cs);
    await this.host.readMeta(tableOffset, buf);
    this.tableOffset = tableOffset;
    this.tableClusters = tableClusters;
    this.table = [];
    for (let i = 0; i < buf.length; i += 8) {
      const hi = buf.readUInt32BE(i);
      const lo = buf.readUInt32BE(i + 4);
      const off = hi > 0x001fffff ? Infinity : hi * 0x100000000 + ((lo & ~0x1ff) >>> 0);
      this.table.push(off);
      if (off) this.blockSet.add(off);
    }
    this.highWater = Math.ceil(this.host.fileLength() / cs);
  }

  private blockOffset(index: number): number {
    const off = this.table[index] ?? 0;
    if (off === 0) return 0;
    if (!Number.isFinite(off) || off % this.host.clusterSize !== 0) {
      throw this.host.corrupt(`Refblock offset ${hex(off)} unaligned (reftable index: ${hex(index)})`);
    }
    return off;
  }

  /** Refcount of a cluster (by index). Clusters not covered by a block have refcount 0. */
  async get(cluster: number): Promise<number> {
    const idx = Math.floor(cluster / this.perBlock);
    if (idx >= this.table.length) return 0;
    const off = this.blockOffset(idx);
    if (!off) return 0;
    const e = await this.cache.get(off);
    try { return getRefcountEntry(e.buf, cluster % this.perBlock, this.bits); } finally { this.cache.release(e); }
  }

  /** Adds `delta` to the refcounts of `n` clusters from `cluster`; blocks must exist for increments. */
  async update(cluster: number, n: number, delta: number): Promise<void> {
    for (let c = cluster; c < cluster + n; c++) {
      if (delta > 0) await this.ensureBlock(c);
      const idx = Math.floor(c / this.perBlock);
      const off = idx < this.table.length ? this.blockOffset(idx) : 0;
      if (!off) throw this.host.corrupt(`Cannot decrease refcount of unallocated cluster ${hex(c * this.host.clusterSize)}`);
      const e = await this.cache.get(off);
      let freed = false;
      try {
        const old = getRefcountEntry(e.buf, c % this.perBlock, this.bits);
        const v = old + delta;
        if (v < 0) throw this.host.corrupt(`Refcount underflow at cluster offset ${hex(c * this.host.clusterSize)}`);
        if (v > this.max) throw new BlockError('EINVAL', 'Refcount overflow');
        setRefcountEntry(e.buf, c % this.perBlock, this.bits, v);
        this.cache.markDirty(e);
        if (v === 0) { freed = true; if (c < this.freeHint) this.freeHint = c; }
      } finally {
        this.cache.release(e);
      }
      if (freed) await this.host.onFreed?.(c * this.host.clusterSize, this.host.clusterSize);
    }
  }

  /** Allocates `n` contiguous clusters (refcount 1 each); returns the host offset. */
  async alloc(n: number): Promise<number> {
    this.host.debugEvent?.('cluster_alloc');
    const cs = this.host.clusterSize;
    let start = this.freeHint;
    for (let attempts = 0; ; attempts++) {
      if (attempts > 1000) throw this.host.corrupt('Cluster allocation does not converge');
      start = await this.findFree(start, n);
      for (let c = start; c < start + n; c++) await this.ensureBlock(c);
      // Allocating refcount blocks may have taken clusters from the run: check again.
      let busy = -1;
      for (let c = start; c < start + n; c++) if (await this.get(c) !== 0) { busy = c; break; }
      if (busy >= 0) { start = busy + 1; continue; }
      if (start === 0) throw this.host.corrupt('Preventing invalid allocation of cluster at offset 0');
      this.host.checkAllocation?.(start * cs, n * cs);
      await this.update(start, n, 1);
      if (start === this.freeHint) this.freeHint = start + n;
      this.highWater = Math.max(this.highWater, start + n);
      return start * cs;
    }
  }

  /** First cluster index ≥ from that starts a run of n free clusters. */
  private async findFree(from: number, n: number): Promise<number> {
    let run = 0;
    let c = from;
    const limit = Math.max(this.highWater, Math.ceil(this.host.fileLength() / this.host.clusterSize));
    for (; run < n; c++) {
      // Past every allocation everything is free: skip the lookups.
      if (c >= limit) return c - run;
      if (await this.get(c) === 0) run++;
      else {
        run = 0;
        // Used clusters right at the hint move it on, so the next allocation does not
        // scan them again (without this every allocation rescanned the whole image).
        if (c === this.freeHint) this.freeHint = c + 1;
      }
    }
    return c - n;
  }

  private async ensureBlock(cluster: number, depth = 0): Promise<void> {
    if (depth > 64) throw this.host.corrupt('Refcount block allocation recursion (refcount loop)');
    const idx = Math.floor(cluster / this.perBlock);
    while (idx >= this.table.length) await this.growTable(idx);
    if (this.blockOffset(idx) === 0) await this.allocBlock(idx, depth);
  }

  /** Allocates the refcount block for table index `idx`, preferring a cluster it describes itself. */
  private async allocBlock(idx: number, depth: number): Promise<void> {
    const cs = this.host.clusterSize;
    for (;;) {
      const b = await this.findFree(this.freeHint, 1);
      const bIdx = Math.floor(b / this.perBlock);
      const block = Buffer.alloc(cs);
      if (bIdx === idx) {
        setRefcountEntry(block, b % this.perBlock, this.bits, 1);
      } else {
        await this.ensureBlock(b, depth + 1);
        if (this.table[idx]) return; // allocated meanwhile by the recursion
        if (await this.get(b) !== 0) continue;
        await this.update(b, 1, 1);
      }
      if (b === 0) throw this.host.corrupt('Preventing invalid allocation of refcount block at offset 0');
      this.host.checkAllocation?.(b * cs, cs);
      // The block reaches the disk before the table entry that points to it.
      await this.cache.flush();
      await this.host.writeMeta(b * cs, block);
      await this.host.barrier();
      const ent = Buffer.alloc(8);
      ent.writeBigUInt64BE(BigInt(b * cs));
      await this.host.writeMeta(this.tableOffset + idx * 8, ent);
      await this.host.barrier();
      this.table[idx] = b * cs;
      this.blockSet.add(b * cs);
      this.highWater = Math.max(this.highWater, b + 1);
      if (b === this.freeHint) this.freeHint = b + 1;
      return;
    }
  }

  /**
   * Grows the refcount table so that index `minIdx` exists. The new table and
   * the refcount blocks describing it go to an area at the end of the image,
   * which those new blocks cover themselves.
   */
  private async growTable(minIdx: number): Promise<void> {
    const cs = this.host.clusterSize;
    const perCluster = cs / 8;
    const oldLen = this.table.length;
    const a = Math.max(this.highWater, Math.ceil(this.host.fileLength() / cs));
    let nb = 0;
    let t = 0;
    let newIdx: number[] = [];
    let newLen = 0;
    for (let iter = 0; iter < 100; iter++) {
      const last = a + Math.max(1, nb + t) - 1;
      const first = Math.floor(a / this.perBlock);
      const lastIdx = Math.floor(last / this.perBlock);
      newIdx = [];
      for (let i = first; i <= lastIdx; i++) if (i >= oldLen || !this.table[i]) newIdx.push(i);
      newLen = Math.max(minIdx + 1, lastIdx + 1, Math.ceil(oldLen * 1.5));
      const newT = Math.ceil(newLen / perCluster);
      if (newIdx.length === nb && newT === t) break;
      nb = newIdx.length;
      t = newT;
    }
    newLen = t * perCluster;
    if (t * cs > 8 * 1024 * 1024) throw new BlockError('ENOSPC', 'Refcount table too large');
    const areaEnd = a + nb + t;
    const blockOff = new Map<number, number>();
    newIdx.forEach((i, k) => blockOff.set(i, (a + k) * cs));
    this.host.checkAllocation?.(a * cs, (nb + t) * cs);
    // New blocks: refcount 1 for each area cluster they describe.
    for (const [i, off] of blockOff) {
      const block = Buffer.alloc(cs);
      for (let c = Math.max(a, i * this.perBlock); c < Math.min(areaEnd, (i + 1) * this.perBlock); c++) {
        setRefcountEntry(block, c % this.perBlock, this.bits, 1);
      }
      await this.host.writeMeta(off, block);
    }
    const table = Buffer.alloc(t * cs);
    for (let i = 0; i < newLen; i++) {
      const off = blockOff.get(i) ?? (i < oldLen ? this.table[i] : 0);
      if (off) table.writeBigUInt64BE(BigInt(off), i * 8);
    }
    const tableOffset = (a + nb) * cs;
    await this.host.writeMeta(tableOffset, table);
    await this.host.barrier();
    const hdr = Buffer.alloc(12);
    hdr.writeBigUInt64BE(BigInt(tableOffset), 0);
    hdr.writeUInt32BE(t, 8);
    await this.host.writeMeta(HeaderField.REFTABLE_OFFSET, hdr);
    await this.host.barrier();
    const oldOffset = this.tableOffset;
    const oldClusters = this.tableClusters;
    const old = this.table;
    this.table = [];
    for (let i = 0; i < newLen; i++) this.table.push(blockOff.get(i) ?? (i < oldLen ? old[i] : 0));
    for (const off of blockOff.values()) this.blockSet.add(off);
    this.tableOffset = tableOffset;
    this.tableClusters = t;
    this.highWater = Math.max(this.highWater, areaEnd);
    // Area clusters described by blocks that already existed.
    for (let c = a; c < areaEnd; c++) {
      if (!blockOff.has(Math.floor(c / this.perBlock))) await this.update(c, 1, 1);
    }
    await this.update(oldOffset / cs, oldClusters, -1);
  }
}

/** C's %#" PRIx64 ", as QEMU's messages print offsets: no 0x prefix for zero. */
export function hex(n: number): string { return n === 0 ? '0' : '0x' + n.toString(16); }

/** Decodes a refcount table entry (bits 9-63; bits 56-63 must be zero for us to use it). */
export function reftableEntry(hi: number, lo: number): number {
  return hi > 0x00ffffff ? Infinity : entryOffset(hi, lo);
}
