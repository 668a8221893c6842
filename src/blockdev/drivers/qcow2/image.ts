/**
 * One open qcow2 image: header, active L1 table, L2 and refcount caches, the
 * guest-to-host mapping, and the data paths (read, write, write-zeroes,
 * discard, truncate). The driver (index.ts) wires it to the block layer.
 */
import { BlockError } from '../../errors.ts';
import { RangeLock } from '../../range-lock.ts';
import { ReqFlag, type Extent } from '../../request.ts';
import type { BlockNode } from '../../node.ts';
import { MetaCache } from './cache.ts';
import { decompressCluster } from './compress.ts';
import { Autoclear, Compat, HeaderField, Incompat, type Qcow2Header } from './header.ts';
import {
  ALL_SUBCLUSTERS, clusterType, compressedDescriptor, entryOffset, isCopied,
  makeEntry, subclusterType, type ClusterType, type SubclusterType,
} from './l2.ts';
import { Mutex } from './mutex.ts';
import { Refcounts, hex } from './refcount.ts';
import type { Qcow2Snapshot } from './snapshots.ts';

export type OverlapName =
  | 'main-header' | 'active-l1' | 'active-l2' | 'refcount-table' | 'refcount-block'
  | 'snapshot-table' | 'inactive-l1' | 'inactive-l2' | 'bitmap-directory';

export interface ImageSettings {
  lazyRefcounts: boolean;
  passDiscard: { request: boolean; snapshot: boolean; other: boolean };
  overlap: Set<OverlapName>;
  l2CacheBytes: number;
  l2SliceSize: number;
  refcountCacheBytes: number;
}

/** How one stretch of guest address space is stored. */
export interface Run {
  kind: 'data' | 'zero' | 'unallocated' | 'compressed';
  length: number;
  /** data: host byte offset of the run's first byte. */
  host: number;
  /** compressed: the L2 entry. */
  hi: number;
  lo: number;
}

/** Decoded L2 entry of one guest cluster. */
export interface ClusterEntry {
  hi: number;
  lo: number;
  alloc: number;
  zero: number;
  type: ClusterType;
  host: number;
}

type FreeReason = 'request' | 'snapshot' | 'other';

const OVERLAP_TEXT: Record<OverlapName, string> = {
  'main-header': 'qcow2_header', 'active-l1': 'active L1 table', 'active-l2': 'active L2 table',
  'refcount-table': 'refcount table', 'refcount-block': 'refcount block', 'snapshot-table': 'snapshot table',
  'inactive-l1': 'inactive L1 table', 'inactive-l2': 'inactive L2 table', 'bitmap-directory': 'bitmap directory',
};

export class Qcow2Image {
  readonly cs: number;
  readonly clusterBits: number;
  readonly extL2: boolean;
  /** Bytes per L2 entry (8, or 16 with extended L2). */
  readonly l2EntryBytes: number;
  readonly l2Entries: number;
  readonly subcluster: number;
  readonly v3: boolean;
  size: number;
  l1: Buffer = Buffer.alloc(0);
  l1Size = 0;
  l1Offset = 0;
  readonly l2Set = new Set<number>();
  readonly l2Cache: MetaCache;
  readonly refcounts: Refcounts;
  readonly meta = new Mutex();
  private readonly growLock = new Mutex();
  private readonly used = new Map<BlockNode, number>();
  /** Whether anything was written (or zeroed, discarded, resized) since open. */
  private modified = false;
  private bitmapRestore?: { offset: number; buf: Buffer };
  readonly clusterLock = new RangeLock();
  readonly data: BlockNode;
  backing?: BlockNode;
  snapshots: Qcow2Snapshot[] = [];
  snapshotTableSize = 0;
  corrupt = false;
  corruptMessage?: string;
  dirty = false;
  private freeReason: FreeReason = 'other';
  private lastCompressed?: { key: string; buf: Buffer };
  private cleanTimer?: NodeJS.Timeout;

  constructor(
    readonly h: Qcow2Header,
    readonly file: BlockNode,
    dataFile: BlockNode | undefined,
    public readOnly: boolean,
    readonly settings: ImageSettings,
    private readonly log: (msg: string) => void,
  ) {
    this.cs = 2 ** h.clusterBits;
    this.clusterBits = h.clusterBits;
    this.extL2 = (h.incompatible & Incompat.EXTL2) !== 0n;
    this.v3 = h.version === 3;
    this.l2EntryBytes = this.extL2 ? 16 : 8;
    this.l2Entries = this.cs / this.l2EntryBytes;
    this.subcluster = this.extL2 ? this.cs / 32 : this.cs;
    this.size = h.size;
    this.data = dataFile ?? file;
    this.dirty = (h.incompatible & Incompat.DIRTY) !== 0n;
    const io = {
      read: (o: number, b: Buffer) => this.readMeta(o, b),
      write: (o: number, b: Buffer) => this.writeMeta(o, b),
      barrier: () => this.barrier(),
    };
    const slice = settings.l2SliceSize;
    this.l2Cache = new MetaCache('l2', slice, Math.max(2, Math.floor(settings.l2CacheBytes / slice)), io);
    const rcCache = new MetaCache('refcount', this.cs, Math.max(4, Math.floor(settings.refcountCacheBytes / this.cs)), io);
    this.refcounts = new Refcounts({
      clusterSize: this.cs,
      clusterBits: this.clusterBits,
      readMeta: (o, b) => this.readMeta(o, b),
      writeMeta: (o, b) => this.writeMeta(o, b),
      barrier: () => this.barrier(),
      fileLength: () => this.usedEnd(this.file),
      corrupt: (m) => this.signalCorruption(m),
      onFreed: (o, l) => this.onFreed(o, l),
      checkAllocation: (o, l) => this.checkOverlap(o, l, 'allocation'),
    }, h.refcountOrder, rcCache);
  }

  get hasDataFile(): boolean { return this.data !== this.file; }

  // ---- metadata I/O ----

  /** Reads metadata from the image file; what lies past its end reads as zeroes (as in QEMU). */
  async readMeta(offset: number, buf: Buffer): Promise<void> {
    const len = this.file.length();
    const n = Math.max(0, Math.min(buf.length, len - offset));
    if (n > 0) await this.file.read(offset, buf.subarray(0, n));
    buf.fill(0, n);
  }

  async writeMeta(offset: number, buf: Buffer): Promise<void> {
    await this.writeTo(this.file, offset, buf);
  }

  /**
   * Writes to a child, growing it first when the write ends past its end (the
   * block layer refuses out-of-range requests). Growth is serialised so that
   * two allocations never shrink each other's file size.
   */
  private async writeTo(node: BlockNode, offset: number, buf: Buffer, minEnd = 0): Promise<void> {
    const end = Math.max(offset + buf.length, minEnd);
    if (end > this.usedEnd(node)) this.used.set(node, end);
    await this.growTo(node, end);
    if (buf.length) await node.write(offset, buf);
  }

  /** End of everything ever written to a child (past it the file is holes or absent). */
  usedEnd(node: BlockNode): number {
    let v = this.used.get(node);
    if (v === undefined) { v = node.length(); this.used.set(node, v); }
    return v;
  }

  /**
   * Extends a child ahead of need, in steps: a truncate per allocation would
   * serialise behind in-flight writes. close() trims the excess.
   */
  private async growTo(node: BlockNode, end: number): Promise<void> {
    if (end <= node.length()) return;
    await this.growLock.run(async () => {
      const len = node.length();
      if (end <= len) return;
      const step = Math.min(64 * 1024 * 1024, Math.max(1024 * 1024, Math.floor(len / 8)));
      const target = Math.ceil(Math.max(end, len + step) / this.cs) * this.cs;
      await node.truncate(target);
    });
  }

  /** Gives back the space growTo() took ahead of need. */
  private async trimFiles(): Promise<void> {
    for (const node of new Set([this.file, this.data])) {
      const used = this.usedEnd(node);
      if (node.length() > used && !node.readOnly) await node.truncate(used).catch(() => undefined);
    }
  }

  async barrier(): Promise<void> {
    if (this.readOnly) return;
    await this.file.flush();
  }

  async load(): Promise<void> {
    const h = this.h;
    this.l1Size = h.l1Size;
    this.l1Offset = h.l1TableOffset;
    this.l1 = Buffer.alloc(h.l1Size * 8);
    await this.readMeta(h.l1TableOffset, this.l1);
    for (let i = 0; i < this.l1Size; i++) {
      const off = entryOffset(this.l1.readUInt32BE(i * 8), this.l1.readUInt32BE(i * 8 + 4));
      if (off) this.l2Set.add(off);
    }
    await this.refcounts.load(h.refcountTableOffset, h.refcountTableClusters);
    this.l2Cache.dependsOn = undefined;
  }

  startCleanTimer(seconds: number): void {
    if (seconds <= 0) return;
    this.cleanTimer = setInterval(() => { this.l2Cache.clean(); this.refcounts.cache.clean(); }, seconds * 1000);
    this.cleanTimer.unref();
  }

  // ---- corruption ----

  /** QEMU's qcow2_signal_corruption: mark the image corrupt, stop writing, return the error. */
  signalCorruption(message: string): BlockError {
    if (!this.corrupt) {
      this.corrupt = true;
      this.corruptMessage = message;
      this.log(`qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`);
      if (!this.readOnly && this.v3) {
        const bits = Buffer.alloc(8);
        bits.writeBigUInt64BE(this.h.incompatible | Incompat.CORRUPT);
        this.h.incompatible |= Incompat.CORRUPT;
        // Best effort: the image is already known to be bad.
        this.file.write(HeaderField.INCOMPAT, bits).then(() => this.file.flush()).catch(() => undefined);
      }
    }
    return new BlockError('EIO', `qcow2: ${message}`);
  }

  private checkWritable(): void {
    this.modified = true;
    if (this.corrupt) throw new BlockError('EIO', `qcow2: Image is corrupt; cannot be written (${this.corruptMessage})`);
    if (this.readOnly) throw new BlockError('EPERM', 'qcow2: image is read-only');
  }

  /** QEMU's overlap check: refuses data writes and allocations that would land on metadata. */
  checkOverlap(offset: number, length: number, what: 'write' | 'allocation'): void {
    if (this.hasDataFile && what === 'write') return;
    const ov = this.settings.overlap;
    const cs = this.cs;
    const end = offset + length;
    const hit = (start: number, len: number) => start < end && offset < start + len;
    let found: OverlapName | undefined;
    if (ov.has('main-header') && hit(0, cs)) found = 'main-header';
    else if (ov.has('active-l1') && this.l1Size && hit(this.l1Offset, this.l1Size * 8)) found = 'active-l1';
    else if (ov.has('refcount-table') && hit(this.refcounts.tableOffset, this.refcounts.tableClusters * cs)) found = 'refcount-table';
    else if (ov.has('snapshot-table') && this.snapshotTableSize && hit(this.h.snapshotsOffset, this.snapshotTableSize)) found = 'snapshot-table';
    else if (ov.has('bitmap-directory') && this.h.bitmaps && hit(this.h.bitmaps.directoryOffset, this.h.bitmaps.directorySize)) found = 'bitmap-directory';
    else if (ov.has('inactive-l1') && this.snapshots.some((s) => s.l1Size && hit(s.l1TableOffset, s.l1Size * 8))) found = 'inactive-l1';
    else {
      for (let c = Math.floor(offset / cs) * cs; c < end; c += cs) {
        if (ov.has('active-l2') && this.l2Set.has(c)) { found = 'active-l2'; break; }
        if (ov.has('refcount-block') && this.refcounts.blockSet.has(c)) { found = 'refcount-block'; break; }
      }
    }
    if (found) {
      throw this.signalCorruption(what === 'write'
        ? `Preventing invalid write on metadata (overlaps with ${OVERLAP_TEXT[found]})`
        : `Preventing invalid allocation at offset ${hex(offset)} (overlaps with ${OVERLAP_TEXT[found]})`);
    }
  }

  // ---- mapping ----

  private l1Entry(i: number): { hi: number; lo: number } {
    return { hi: this.l1.readUInt32BE(i * 8), lo: this.l1.readUInt32BE(i * 8 + 4) };
  }

  /** Offset of the L2 table for L1 index i (0 if none); validates it. */
  private l2TableOffset(i: number): number {
    if (i >= this.l1Size) return 0;
    const { hi, lo } = this.l1Entry(i);
    const off = entryOffset(hi, lo);
    if (off === 0) return 0;
    if (off % this.cs !== 0) {
      throw this.signalCorruption(`L2 table offset ${hex(off)} unaligned (L1 index: ${hex(i)})`);
    }
    return off;
  }

  /** Reads the L2 entry of guest cluster `c`. */
  async entry(c: number): Promise<ClusterEntry> {
    const l1i = Math.floor(c / this.l2Entries);
    const l2i = c % this.l2Entries;
    const table = this.l2TableOffset(l1i);
    if (table === 0) return { hi: 0, lo: 0, alloc: 0, zero: 0, type: 'unallocated', host: 0 };
    const slice = this.settings.l2SliceSize;
    const byteIdx = l2i * this.l2EntryBytes;
    const sliceOff = table + Math.floor(byteIdx / slice) * slice;
    const e = await this.l2Cache.get(sliceOff);
    try {
      const p = byteIdx % slice;
      const hi = e.buf.readUInt32BE(p);
      const lo = e.buf.readUInt32BE(p + 4);
      const alloc = this.extL2 ? e.buf.readUInt32BE(p + 12) : 0;
      const zero = this.extL2 ? e.buf.readUInt32BE(p + 8) : 0;
      return this.decode(hi, lo, alloc, zero, table, l2i);
    } finally {
      this.l2Cache.release(e);
    }
  }

  private decode(hi: number, lo: number, alloc: number, zero: number, table: number, l2i: number): ClusterEntry {
    const type = clusterType(hi, lo, this.v3, this.extL2, this.hasDataFile);
    const host = type === 'compressed' ? 0 : entryOffset(hi, lo);
    if ((type === 'normal' || type === 'zero-alloc') && host % this.cs !== 0) {
      throw this.signalCorruption(`Cluster allocation offset ${hex(host)} unaligned (L2 offset: ${hex(table)}, L2 index: ${hex(l2i)})`);
    }
    if (this.extL2 && type === 'compressed' && (alloc || zero)) {
      throw this.signalCorruption(`Invalid cluster entry found (L2 offset: ${hex(table)}, L2 index: ${hex(l2i)})`);
    }
    if (type === 'compressed' && this.hasDataFile) {
      throw this.signalCorruption(`Compressed cluster entry found in image with external data file (L2 offset: ${hex(table)}, L2 index: ${hex(l2i)})`);
    }
    return { hi, lo, alloc, zero, type, host };
  }

  /** Status of subcluster `sc` of a decoded entry (the whole cluster when there are no subclusters). */
  private subStatus(e: ClusterEntry, sc: number): SubclusterType {
    if (!this.extL2) {
      if (e.type === 'zero-plain' || e.type === 'zero-alloc') return 'zero';
      return e.type;
    }
    return subclusterType(e.type, e.alloc, e.zero, sc);
  }

  /** The first run of uniformly stored bytes at `offset`, at most `length` long. */
  async mapRun(offset: number, length: number): Promise<Run> {
    const cs = this.cs;
    const unit = this.subcluster;
    let pos = offset;
    const end = offset + length;
    let run: Run | undefined;
    while (pos < end) {
      const c = Math.floor(pos / cs);
      const l1i = Math.floor(c / this.l2Entries);
      if (this.l2TableOffset(l1i) === 0) {
        // A whole unallocated L2 table.
        const stop = Math.min(end, (l1i + 1) * this.l2Entries * cs);
        if (run && run.kind !== 'unallocated') break;
        run ??= { kind: 'unallocated', length: 0, host: 0, hi: 0, lo: 0 };
        run.length += stop - pos;
        pos = stop;
        continue;
      }
      const e = await this.entry(c);
      const cEnd = Math.min(end, (c + 1) * cs);
      while (pos < cEnd) {
        const sc = Math.floor((pos - c * cs) / unit);
        const st = this.subStatus(e, sc);
        if (st === 'invalid') {
          const l1 = this.l2TableOffset(l1i);
          throw this.signalCorruption(`Invalid cluster entry found (L2 offset: ${hex(l1)}, L2 index: ${hex(c % this.l2Entries)})`);
        }
        const stop = Math.min(cEnd, c * cs + (sc + 1) * unit);
        const kind: Run['kind'] = st === 'normal' ? 'data' : st;
        const host = kind === 'data' ? e.host + (pos - c * cs) : 0;
        if (run) {
          if (run.kind !== kind || kind === 'compressed' || (kind === 'data' && run.host + run.length !== host)) return run;
          run.length += stop - pos;
        } else {
          run = { kind, length: stop - pos, host, hi: e.hi, lo: e.lo };
          if (kind === 'compressed') {
            run.length = cEnd - pos;
            return run;
          }
        }
        pos = stop;
      }
    }
    return run!;
  }

  // ---- reads ----

  async read(offset: number, buf: Buffer): Promise<void> {
    let pos = 0;
    while (pos < buf.length) {
      const r = await this.mapRun(offset + pos, buf.length - pos);
      const sub = buf.subarray(pos, pos + r.length);
      switch (r.kind) {
        case 'zero': sub.fill(0); break;
        case 'unallocated': await this.readBacking(offset + pos, sub); break;
        case 'data': await this.readData(r.host, sub); break;
        case 'compressed': {
          const c = await this.compressedCluster(r.hi, r.lo);
          const inCluster = (offset + pos) % this.cs;
          c.copy(sub, 0, inCluster, inCluster + sub.length);
          break;
        }
      }
      pos += r.length;
    }
  }

  /** Reads guest data from the host; bytes past the end of the data file read as zeroes. */
  private async readData(host: number, buf: Buffer): Promise<void> {
    const n = Math.max(0, Math.min(buf.length, this.data.length() - host));
    if (n > 0) await this.data.read(host, buf.subarray(0, n));
    if (n < buf.length) buf.fill(0, n);
  }

  async readBacking(offset: number, buf: Buffer): Promise<void> {
    const b = this.backing;
    const n = b ? Math.max(0, Math.min(buf.length, b.length() - offset)) : 0;
    if (n > 0) await b!.read(offset, buf.subarray(0, n));
    if (n < buf.length) buf.fill(0, n);
  }

  private async compressedCluster(hi: number, lo: number): Promise<Buffer> {
    const key = `${hi}:${lo}`;
    if (this.lastCompressed?.key === key) return this.lastCompressed.buf;
    const d = compressedDescriptor(hi, lo, this.clusterBits);
    // A descriptor can claim at most a little over two clusters of input.
    const len = Math.min(d.length, 2 * this.cs + 512);
    const input = Buffer.alloc(len);
    await this.readMeta(d.offset, input);
    const out = await decompressCluster(this.h.compressionType, input, this.cs);
    this.lastCompressed = { key, buf: out };
    return out;
  }

  // ---- block status ----

  async blockStatus(offset: number, length: number, flags: number): Promise<Extent[]> {
    const out: Extent[] = [];
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const r = await this.mapRun(pos, end - pos);
      if (r.kind === 'unallocated') {
        out.push(...await this.backingStatus(pos, r.length, flags));
      } else {
        out.push({ offset: pos, length: r.length, data: r.kind !== 'zero', zero: r.kind === 'zero', allocated: true, depth: 1 });
      }
      pos += r.length;
      if (flags & ReqFlag.REQ_ONE) break;
    }
    return out;
  }

  private async backingStatus(offset: number, length: number, flags: number): Promise<Extent[]> {
    const b = this.backing;
    const blen = b ? b.length() : 0;
    const out: Extent[] = [];
    if (b && offset < blen) {
      const n = Math.min(length, blen - offset);
      let pos = offset;
      while (pos < offset + n) {
        const ext = await b.blockStatus(pos, offset + n - pos, flags);
        for (const e of ext) {
          out.push({ offset: e.offset, length: e.length, data: e.data, zero: e.zero, allocated: false, depth: e.depth ? e.depth + 1 : 0 });
          pos = e.offset + e.length;
        }
        if (flags & ReqFlag.REQ_ONE) return out;
      }
    }
    const from = Math.max(offset, Math.min(offset + length, blen));
    if (from < offset + length) out.push({ offset: from, length: offset + length - from, data: false, zero: true, allocated: false, depth: 0 });
    return out;
  }

  // ---- writes ----

  private clusterSpan(offset: number, length: number): [number, number] {
    const cs = this.cs;
    return [Math.floor(offset / cs) * cs, Math.ceil((offset + length) / cs) * cs];
  }

  async write(offset: number, buf: Buffer): Promise<void> {
    this.checkWritable();
    const [a, b] = this.clusterSpan(offset, buf.length);
    const release = await this.clusterLock.acquire(a, b);
    try {
      let pos = 0;
      while (pos < buf.length) pos += await this.writeStep(offset + pos, buf.subarray(pos));
    } finally {
      release();
    }
  }

  /** Writes a prefix of `buf` at guest `offset`; returns how many bytes it wrote. */
  private async writeStep(offset: number, buf: Buffer): Promise<number> {
    const cs = this.cs;
    const c0 = Math.floor(offset / cs);
    const e0 = await this.entry(c0);
    const end = offset + buf.length;
    if (this.inPlace(e0, offset, Math.min(end, (c0 + 1) * cs))) {
      // Extend over following clusters that are in place and contiguous on the host.
      let n = 1;
      while ((c0 + n) * cs < end && n < 4096) {
        const e = await this.entry(c0 + n);
        if (e.host !== e0.host + n * cs || !this.inPlace(e, (c0 + n) * cs, Math.min(end, (c0 + n + 1) * cs))) break;
        n++;
      }
      const len = Math.min(end, (c0 + n) * cs) - offset;
      const host = e0.host + (offset - c0 * cs);
      if (!this.hasDataFile && e0.host >= this.usedEnd(this.file)) {
        // Never allocated by anyone who wrote the file: writing would grow it without bound.
        throw this.signalCorruption(`Data cluster offset ${hex(e0.host)} beyond the end of the image file`);
      }
      this.checkOverlap(host, len, 'write');
      await this.writeTo(this.data, host, buf.subarray(0, len));
      return len;
    }
    if (this.extL2 && e0.type === 'normal' && isCopied(e0.hi)) {
      return this.fillSubclusters(c0, e0, offset, buf);
    }
    // Allocate a run of clusters (within one L2 table) none of which can be written in place.
    let n = 1;
    const tableEnd = (Math.floor(c0 / this.l2Entries) + 1) * this.l2Entries;
    while ((c0 + n) * cs < end && c0 + n < tableEnd && n < 4096) {
      const e = await this.entry(c0 + n);
      if (e.type === 'normal' && isCopied(e.hi)) break;
      n++;
    }
    return this.allocateAndWrite(c0, n, offset, buf);
  }

  /** A cluster whose touched part can be overwritten where it is. */
  private inPlace(e: ClusterEntry, from: number, to: number): boolean {
    if (e.type !== 'normal' || !isCopied(e.hi)) return false;
    if (!this.extL2) return true;
    const base = Math.floor(from / this.cs) * this.cs;
    const s0 = Math.floor((from - base) / this.subcluster);
    const s1 = Math.ceil((to - base) / this.subcluster);
    for (let s = s0; s < s1; s++) if (!((e.alloc >>> s) & 1)) return false;
    return true;
  }

  /** Copy-on-write content of guest [offset, offset+len) as the guest sees it now (zeroes past the end). */
  private async readGuest(offset: number, buf: Buffer): Promise<void> {
    const n = Math.max(0, Math.min(buf.length, this.size - offset));
    if (n > 0) await this.read(offset, buf.subarray(0, n));
    buf.fill(0, n);
  }

  private async markDirtyForLazy(): Promise<void> {
    if (!this.settings.lazyRefcounts || this.dirty) return;
    await this.refcounts.cache.flush();
    await this.setIncompat(this.h.incompatible | Incompat.DIRTY);
    this.dirty = true;
  }

  async setIncompat(bits: bigint): Promise<void> {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(bits);
    await this.file.write(HeaderField.INCOMPAT, b);
    await this.file.flush();
    this.h.incompatible = bits;
  }

  private async allocateAndWrite(c0: number, n: number, offset: number, buf: Buffer): Promise<number> {
    const cs = this.cs;
    const runStart = c0 * cs;
    const runEnd = (c0 + n) * cs;
    const end = Math.min(offset + buf.length, runEnd);
    const olds: ClusterEntry[] = [];
    for (let i = 0; i < n; i++) olds.push(await this.entry(c0 + i));
    // With subclusters, an unallocated cluster only needs the touched subclusters written.
    const gHead = this.extL2 && olds[0].type === 'unallocated' ? this.subcluster : cs;
    const gTail = this.extL2 && olds[n - 1].type === 'unallocated' ? this.subcluster : cs;
    const wStart = Math.floor((offset - runStart) / gHead) * gHead + runStart;
    const wEnd = Math.min(runEnd, Math.ceil((end - runStart) / gTail) * gTail + runStart);
    const data = Buffer.alloc(wEnd - wStart);
    if (offset > wStart) await this.readGuest(wStart, data.subarray(0, offset - wStart));
    buf.copy(data, offset - wStart, 0, end - offset);
    if (wEnd > end) await this.readGuest(end, data.subarray(end - wStart));

    await this.markDirtyForLazy();
    let host: number;
    let fresh = false;
    if (this.hasDataFile) {
      host = runStart;
    } else {
      host = await this.meta.run(async () => {
        const h = await this.refcounts.alloc(n);
        // Clusters past the end of the file have never held anything: they read as zeroes.
        fresh = h >= this.usedEnd(this.data);
        return h;
      });
    }
    try {
      let at = host + (wStart - runStart);
      this.checkOverlap(at, data.length, 'write');
      let out = data;
      if (fresh) {
        // Zero copy-on-write regions need not be written into never-used clusters (QEMU
        // writes zeroes efficiently there too); the file is still extended over them.
        const head = offset - wStart;
        const tail = wEnd - end;
        let from = 0;
        let to = data.length;
        if (head && isZero(data.subarray(0, head))) from = head;
        if (tail && isZero(data.subarray(data.length - tail))) to = data.length - tail;
        out = data.subarray(from, to);
        at += from;
      }
      await this.writeTo(this.data, at, out, fresh ? host + n * cs : 0);
    } catch (e) {
      if (!this.hasDataFile) await this.meta.run(() => this.free(host, n, 'other')).catch(() => undefined);
      throw e;
    }
    await this.meta.run(async () => {
      if (!this.settings.lazyRefcounts && !this.hasDataFile) await this.l2Cache.setDependency(this.refcounts.cache);
      this.l2Cache.needsBarrier = true;
      for (let i = 0; i < n; i++) {
        const cStart = runStart + i * cs;
        let alloc = ALL_SUBCLUSTERS;
        let zero = 0;
        if (this.extL2 && olds[i].type === 'unallocated') {
          const s0 = Math.max(0, Math.floor((wStart - cStart) / this.subcluster));
          const s1 = Math.min(32, Math.ceil((wEnd - cStart) / this.subcluster));
          alloc = rangeMask(s0, s1);
          zero = olds[i].zero & ~alloc;
        }
        const ent = makeEntry(host + i * cs, true);
        await this.setEntry(c0 + i, ent.hi, ent.lo, alloc, zero);
      }
      for (const old of olds) await this.freeEntry(old, 'other');
    });
    return end - offset;
  }

  /** Extended L2: writes into unallocated or zero subclusters of an allocated cluster. */
  private async fillSubclusters(c: number, e: ClusterEntry, offset: number, buf: Buffer): Promise<number> {
    const cs = this.cs;
    const sc = this.subcluster;
    const cStart = c * cs;
    const end = Math.min(offset + buf.length, cStart + cs);
    const wStart = Math.floor((offset - cStart) / sc) * sc + cStart;
    const wEnd = Math.ceil((end - cStart) / sc) * sc + cStart;
    const data = Buffer.alloc(wEnd - wStart);
    if (offset > wStart) await this.readGuest(wStart, data.subarray(0, offset - wStart));
    buf.copy(data, offset - wStart, 0, end - offset);
    if (wEnd > end) await this.readGuest(end, data.subarray(end - wStart));
    const at = e.host + (wStart - cStart);
    this.checkOverlap(at, data.length, 'write');
    await this.writeTo(this.data, at, data);
    await this.meta.run(async () => {
      this.l2Cache.needsBarrier = true;
      const mask = rangeMask((wStart - cStart) / sc, (wEnd - cStart) / sc);
      await this.setEntry(c, e.hi, e.lo, e.alloc | mask, e.zero & ~mask);
    });
    return end - offset;
  }

  /** Sets the L2 entry of guest cluster `c`, allocating the L2 table if needed. Meta lock held. */
  private async setEntry(c: number, hi: number, lo: number, alloc: number, zero: number): Promise<void> {
    const l1i = Math.floor(c / this.l2Entries);
    const l2i = c % this.l2Entries;
    let table = this.l2TableOffset(l1i);
    if (table === 0 || !isCopied(this.l1Entry(l1i).hi)) table = await this.allocL2(l1i, table);
    const slice = this.settings.l2SliceSize;
    const byteIdx = l2i * this.l2EntryBytes;
    const e = await this.l2Cache.get(table + Math.floor(byteIdx / slice) * slice);
    try {
      const p = byteIdx % slice;
      e.buf.writeUInt32BE(hi >>> 0, p);
      e.buf.writeUInt32BE(lo >>> 0, p + 4);
      if (this.extL2) {
        e.buf.writeUInt32BE(zero >>> 0, p + 8);
        e.buf.writeUInt32BE(alloc >>> 0, p + 12);
      }
      this.l2Cache.markDirty(e);
    } finally {
      this.l2Cache.release(e);
    }
  }

  /** Allocates an L2 table for L1 index `l1i` (copying a shared one), then points the L1 entry at it. */
  private async allocL2(l1i: number, old: number): Promise<number> {
    if (l1i >= this.l1Size) await this.growL1(l1i + 1);
    const cs = this.cs;
    const off = await this.refcounts.alloc(1);
    const table = Buffer.alloc(cs);
    if (old) {
      // Copy-on-write of a shared table: its cached changes first.
      await this.l2Cache.flush();
      await this.readMeta(old, table);
    }
    this.l2Set.add(off);
    this.l2Cache.forget(off, cs);
    // The new table and its refcount reach the disk before the L1 entry points to it.
    await this.refcounts.cache.flush();
    await this.writeMeta(off, table);
    await this.barrier();
    const ent = makeEntry(off, true);
    const b = Buffer.alloc(8);
    b.writeUInt32BE(ent.hi, 0);
    b.writeUInt32BE(ent.lo, 4);
    await this.writeMeta(this.l1Offset + l1i * 8, b);
    b.copy(this.l1, l1i * 8);
    await this.barrier();
    if (old) {
      this.l2Set.delete(old);
      await this.free(old, 1, 'other');
    }
    return off;
  }

  /** Grows the active L1 table to at least `min` entries (moving it to newly allocated clusters). */
  async growL1(min: number): Promise<void> {
    const cs = this.cs;
    if (min * 8 > 32 * 1024 * 1024) throw new BlockError('EINVAL', 'Active L1 table too large');
    let size = Math.max(min, Math.ceil(this.l1Size * 1.5));
    size = Math.min(Math.ceil((size * 8) / cs) * cs / 8, 4 * 1024 * 1024);
    const clusters = Math.ceil((size * 8) / cs);
    const off = await this.refcounts.alloc(clusters);
    const table = Buffer.alloc(clusters * cs);
    this.l1.copy(table);
    await this.refcounts.cache.flush();
    await this.writeMeta(off, table);
    await this.barrier();
    const hdr = Buffer.alloc(12);
    hdr.writeUInt32BE(size, 0);
    hdr.writeBigUInt64BE(BigInt(off), 4);
    await this.writeMeta(HeaderField.L1_SIZE, hdr);
    await this.barrier();
    const oldOff = this.l1Offset;
    const oldClusters = Math.ceil((this.l1Size * 8) / cs);
    this.l1 = table.subarray(0, size * 8);
    this.l1Size = size;
    this.l1Offset = off;
    this.h.l1Size = size;
    this.h.l1TableOffset = off;
    if (oldClusters) await this.free(oldOff, oldClusters, 'other');
  }

  /** Drops the reference an old L2 entry held (meta lock held). */
  private async freeEntry(e: ClusterEntry, reason: FreeReason): Promise<void> {
    if (this.hasDataFile) return;
    if (e.type === 'normal' || e.type === 'zero-alloc') {
      if (e.host) await this.free(e.host, 1, reason);
    } else if (e.type === 'compressed') {
      const d = compressedDescriptor(e.hi, e.lo, this.clusterBits);
      const first = Math.floor(d.offset / this.cs);
      const last = Math.floor((d.offset + d.length - 1) / this.cs);
      await this.free(first * this.cs, last - first + 1, reason);
    }
  }

  /** Decrements refcounts; anything that may still point at the clusters is written first. */
  async free(offset: number, n: number, reason: FreeReason): Promise<void> {
    await this.refcounts.cache.setDependency(this.l2Cache);
    this.freeReason = reason;
    await this.refcounts.update(offset / this.cs, n, -1);
  }

  private async onFreed(offset: number, length: number): Promise<void> {
    if (this.settings.passDiscard[this.freeReason]) {
      // The discard must not overtake the metadata update that stopped using the cluster.
      await this.l2Cache.flush();
      if (offset + length <= this.file.length()) await this.file.discard(offset, length).catch(() => undefined);
    }
  }

  // ---- write-zeroes and discard ----

  async writeZeroes(offset: number, length: number, flags: number): Promise<void> {
    this.checkWritable();
    const cs = this.cs;
    if (!this.v3) return this.zeroFallback(offset, length, flags);
    let start = Math.ceil(offset / cs) * cs;
    let end = Math.floor((offset + length) / cs) * cs;
    if (offset + length === this.size) end = Math.ceil(this.size / cs) * cs;
    if (end < start) { start = offset; end = offset; }
    if (start > offset) await this.zeroPartial(offset, Math.min(start, offset + length) - offset, flags);
    if (end > start) await this.zeroClusters(start / cs, (end - start) / cs, (flags & ReqFlag.MAY_UNMAP) !== 0, 'request');
    const tail = Math.max(end, start);
    if (offset + length > tail) await this.zeroPartial(tail, offset + length - tail, flags);
  }

  private async zeroPartial(offset: number, length: number, flags: number): Promise<void> {
    // Nothing to do when the range already reads as zeroes (QEMU's is_zero check).
    const st = await this.blockStatus(offset, length, 0);
    if (st.every((e) => e.zero)) return;
    await this.zeroFallback(offset, length, flags);
  }

  private async zeroFallback(offset: number, length: number, flags: number): Promise<void> {
    if (flags & ReqFlag.NO_FALLBACK) throw new BlockError('ENOTSUP', 'qcow2: cannot write zeroes without writing data');
    const chunk = Math.min(length, 1024 * 1024);
    const z = Buffer.alloc(chunk);
    for (let done = 0; done < length; done += chunk) {
      await this.write(offset + done, z.subarray(0, Math.min(chunk, length - done)));
    }
  }

  /** Turns whole clusters into zero clusters (v3), unmapping them when allowed. */
  private async zeroClusters(c0: number, n: number, mayUnmap: boolean, reason: FreeReason): Promise<void> {
    const cs = this.cs;
    const release = await this.clusterLock.acquire(c0 * cs, (c0 + n) * cs);
    try {
      await this.markDirtyForLazy();
      await this.zeroRawDataFile(c0, n);
      await this.meta.run(async () => {
        const freed: ClusterEntry[] = [];
        for (let c = c0; c < c0 + n; c++) {
          const old = await this.entry(c);
          const allocated = old.type !== 'unallocated' && old.type !== 'zero-plain';
          const unmap = allocated && (mayUnmap || old.type === 'compressed' || (old.type === 'normal' && !isCopied(old.hi)) || this.hasDataFile && mayUnmap);
          if (this.extL2) {
            if (old.type === 'unallocated' && old.zero === ALL_SUBCLUSTERS) continue;
            if (unmap || !allocated) await this.setEntry(c, 0, 0, 0, ALL_SUBCLUSTERS);
            else await this.setEntry(c, old.hi, old.lo, 0, ALL_SUBCLUSTERS);
          } else {
            if (old.type === 'zero-plain') continue;
            if (unmap || !allocated) await this.setEntry(c, 0, 1, 0, 0);
            else await this.setEntry(c, old.hi, (old.lo | 1) >>> 0, 0, 0);
          }
          if (unmap) freed.push(old);
        }
        for (const old of freed) await this.freeEntry(old, reason);
      });
    } finally {
      release();
    }
  }

  /** A raw external data file must stay a consistent image by itself: zero it there too. */
  private async zeroRawDataFile(c0: number, n: number): Promise<void> {
    if (!this.hasDataFile || !(this.h.autoclear & Autoclear.DATA_FILE_RAW)) return;
    const start = c0 * this.cs;
    const end = Math.min((c0 + n) * this.cs, this.data.length());
    if (end > start) await this.data.writeZeroes(start, end - start);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable();
    const cs = this.cs;
    const start = Math.ceil(offset / cs) * cs;
    let end = Math.floor((offset + length) / cs) * cs;
    if (offset + length === this.size) end = Math.ceil(this.size / cs) * cs;
    if (end <= start) return;
    await this.discardClusters(start / cs, (end - start) / cs, false, 'request');
  }

  /** QEMU's discard: v3 keeps the range reading as zeroes when that matters; `full` makes it unallocated. */
  async discardClusters(c0: number, n: number, full: boolean, reason: FreeReason): Promise<void> {
    const cs = this.cs;
    const release = await this.clusterLock.acquire(c0 * cs, (c0 + n) * cs);
    try {
      await this.markDirtyForLazy();
      await this.zeroRawDataFile(c0, n);
      await this.meta.run(async () => {
        const freed: ClusterEntry[] = [];
        for (let c = c0; c < c0 + n; c++) {
          if (this.l2TableOffset(Math.floor(c / this.l2Entries)) === 0) continue;
          const old = await this.entry(c);
          const allocated = old.type === 'normal' || old.type === 'compressed' || old.type === 'zero-alloc';
          let hi = 0, lo = 0, alloc = 0, zero = 0;
          if (!full && (this.backing || allocated)) {
            if (this.extL2) zero = ALL_SUBCLUSTERS;
            else if (this.v3) lo = 1;
          }
          if (old.hi === hi && old.lo === lo && old.alloc === alloc && old.zero === zero) continue;
          await this.setEntry(c, hi, lo, alloc, zero);
          if (allocated) freed.push(old);
        }
        for (const old of freed) await this.freeEntry(old, reason);
      });
    } finally {
      release();
    }
  }

  // ---- flush, truncate, close ----

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.meta.run(async () => {
      await this.l2Cache.flush();
      await this.refcounts.cache.flush();
    });
  }

  async truncate(size: number): Promise<void> {
    this.checkWritable();
    if (size % 512 !== 0) throw new BlockError('EINVAL', 'The new size must be a multiple of 512');
    const cs = this.cs;
    if (size < this.size) {
      if (this.snapshots.length) throw new BlockError('ENOTSUP', "Can't shrink an image with internal snapshots");
      if (this.h.bitmaps) throw new BlockError('ENOTSUP', "Can't resize an image which has bitmaps");
      const first = Math.ceil(size / cs);
      const last = Math.ceil(this.size / cs);
      if (last > first) await this.discardClusters(first, last - first, true, 'other');
    } else if (size > this.size) {
      const need = Math.ceil(size / (cs * this.l2Entries));
      if (need > 4 * 1024 * 1024) throw new BlockError('EINVAL', 'Image is too big');
      if (need > this.l1Size) await this.meta.run(() => this.growL1(need));
    }
    await this.flush();
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(size));
    await this.file.write(HeaderField.SIZE, b);
    await this.file.flush();
    this.size = size;
    this.h.size = size;
  }

  async close(): Promise<void> {
    if (this.cleanTimer) clearInterval(this.cleanTimer);
    if (this.readOnly || this.corrupt) return;
    await this.flush();
    if (this.bitmapRestore && !this.modified) await this.writeMeta(this.bitmapRestore.offset, this.bitmapRestore.buf);
    await this.trimFiles();
    await this.file.flush();
    if (this.dirty) {
      await this.setIncompat(this.h.incompatible & ~Incompat.DIRTY);
      this.dirty = false;
    }
  }

  /** Clears autoclear bits blockd does not maintain before the first write (qcow2 spec). */
  /**
   * Persistent bitmaps stay in the image, but blockd does not update them:
   * while it may write, every bitmap is flagged in-use (inconsistent), as
   * QEMU flags them while it has them loaded. If nothing was written by
   * close(), the original flags are put back.
   */
  async markBitmapsInUse(): Promise<void> {
    const b = this.h.bitmaps;
    if (!b || !(this.h.autoclear & Autoclear.BITMAPS) || b.directorySize > 64 * 1024 * 1024) return;
    const dir = Buffer.alloc(b.directorySize);
    await this.readMeta(b.directoryOffset, dir);
    const orig = Buffer.from(dir);
    let pos = 0;
    for (let i = 0; i < b.nbBitmaps && pos + 24 <= dir.length; i++) {
      dir.writeUInt32BE((dir.readUInt32BE(pos + 12) | 1) >>> 0, pos + 12);
      pos = Math.ceil((pos + 24 + dir.readUInt32BE(pos + 20) + dir.readUInt16BE(pos + 18)) / 8) * 8;
    }
    if (dir.equals(orig)) return;
    await this.writeMeta(b.directoryOffset, dir);
    await this.barrier();
    this.bitmapRestore = { offset: b.directoryOffset, buf: orig };
  }

  async clearUnknownAutoclear(): Promise<void> {
    const keep = this.h.autoclear & (Autoclear.DATA_FILE_RAW | Autoclear.BITMAPS);
    if (keep === this.h.autoclear) return;
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(keep);
    await this.file.write(HeaderField.AUTOCLEAR, b);
    await this.file.flush();
    this.h.autoclear = keep;
  }

  lazyRefcountsInHeader(): boolean { return (this.h.compatible & Compat.LAZY_REFCOUNTS) !== 0n; }
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += 4096) {
    const part = b.subarray(i, Math.min(b.length, i + 4096));
    if (!part.equals(ZERO_PAGE.subarray(0, part.length))) return false;
  }
  return true;
}
const ZERO_PAGE = Buffer.alloc(4096);

/** Bits s0..s1-1 set. */
function rangeMask(s0: number, s1: number): number {
  let m = 0;
  for (let s = s0; s < s1; s++) m |= 1 << s;
  return m >>> 0;
}
