/**
 * One open qcow2 image, first half: header, active L1 table, L2 and refcount
 * caches, metadata I/O, corruption and overlap checks, the guest-to-host
 * mapping, reads and block status. image.ts adds the write paths.
 */
import { BlockError } from '../../../util/errors.ts';
import { RangeLock } from '../../range-lock.ts';
import { ReqFlag, type Extent } from '../../request.ts';
import type { BlockNode } from '../../node.ts';
import type { BlkdebugEvent } from '../../debug-events.ts';
import { MetaCache } from './cache.ts';
import { decompressCluster } from './compress.ts';
import { HeaderField, Incompat, type Qcow2Header } from './header.ts';
import {
  clusterType, compressedDescriptor, entryOffset, subclusterType, type ClusterType, type SubclusterType,
} from './l2.ts';
import { Mutex } from './mutex.ts';
import { cryptData, type Qcow2Crypto } from './encryption.ts';
import { cryptBuffers } from '../../copy-buffers.ts';
import { Refcounts, hex } from './refcount.ts';
import type { Qcow2Snapshot } from './snapshots.ts';

export type OverlapName =
  | 'main-header' | 'active-l1' | 'active-l2' | 'refcount-table' | 'refcount-block'
  | 'snapshot-table' | 'inactive-l1' | 'inactive-l2' | 'bitmap-directory';

export interface ImageSettings {
  lazyRefcounts: boolean;
  /** discard=unmap: discard requests take effect (QEMU ignores them otherwise; write-zeroes may still unmap). */
  unmap: boolean;
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

export type FreeReason = 'request' | 'snapshot' | 'other';

const OVERLAP_TEXT: Record<OverlapName, string> = {
  'main-header': 'qcow2_header', 'active-l1': 'active L1 table', 'active-l2': 'active L2 table',
  'refcount-table': 'refcount table', 'refcount-block': 'refcount block', 'snapshot-table': 'snapshot table',
  'inactive-l1': 'inactive L1 table', 'inactive-l2': 'inactive L2 table', 'bitmap-directory': 'bitmap directory',
};

/** An L2 entry's place: its table, index in it, the cached slice holding it and its byte position there. */
interface EntryPlace { table: number; l2i: number; sliceOff: number; pos: number }

function unallocatedEntry(): ClusterEntry {
  return { hi: 0, lo: 0, alloc: 0, zero: 0, type: 'unallocated', host: 0 };
}

/** State, metadata I/O, mapping and reads of an open image; Qcow2Image adds the write paths. */
export abstract class Qcow2Base {
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
  protected readonly growLock = new Mutex();
  protected readonly used = new Map<BlockNode, number>();
  /** Whether anything was written (or zeroed, discarded, resized) since open. */
  protected modified = false;
  protected bitmapRestore?: { offset: number; buf: Buffer };
  readonly clusterLock = new RangeLock();
  readonly data: BlockNode;
  backing?: BlockNode;
  /** Set for encrypted images (encryption.ts): data clusters pass through its cipher. */
  crypto?: Qcow2Crypto;
  snapshots: Qcow2Snapshot[] = [];
  snapshotTableSize = 0;
  corrupt = false;
  corruptMessage?: string;
  dirty = false;
  protected freeReason: FreeReason = 'other';
  protected lastCompressed?: { key: string; buf: Buffer };
  protected cleanTimer?: NodeJS.Timeout;

  constructor(
    readonly h: Qcow2Header,
    readonly file: BlockNode,
    dataFile: BlockNode | undefined,
    public readOnly: boolean,
    readonly settings: ImageSettings,
    protected readonly log: (msg: string) => void,
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
    // QEMU's qcow2 cache raises l2_load / refblock_load as it reads a table in and l2_update /
    // refblock_update_part as it writes one back (blkdebug listens on the file).
    const cacheIo = (load: BlkdebugEvent, update: BlkdebugEvent, own: OverlapName) => ({
      read: (o: number, b: Buffer) => { file.debugEvent(load); return this.readMeta(o, b); },
      // A table written back is checked against the other metadata first (an L1 entry pointing at a
      // refcount block makes one cluster two tables: QEMU refuses the write and marks the image corrupt).
      write: (o: number, b: Buffer) => { this.checkOverlap(o, b.length, 'write', own, true); file.debugEvent(update); return this.writeMeta(o, b); },
      barrier: io.barrier,
    });
    this.l2Cache = new MetaCache('l2', slice, Math.max(2, Math.floor(settings.l2CacheBytes / slice)), cacheIo('l2_load', 'l2_update', 'active-l2'));
    const rcCache = new MetaCache('refcount', this.cs, Math.max(4, Math.floor(settings.refcountCacheBytes / this.cs)), cacheIo('refblock_load', 'refblock_update_part', 'refcount-block'));
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
      debugEvent: (e) => file.debugEvent(e),
    }, h.refcountOrder, rcCache);
  }

  /** Called when a cluster's refcount drops to zero. */
  protected abstract onFreed(offset: number, length: number): Promise<void>;

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
  protected writeTo(node: BlockNode, offset: number, buf: Buffer, minEnd = 0): Promise<void> {
    const end = Math.max(offset + buf.length, minEnd);
    if (end > this.usedEnd(node)) this.used.set(node, end);
    // Most writes land inside the file: no extra promise (and no closure) for them.
    if (end > node.length()) return this.growTo(node, end).then(() => (buf.length ? node.write(offset, buf) : undefined));
    return buf.length ? node.write(offset, buf) : Promise.resolve();
  }

  /** As writeTo, for write-zeroes. */
  protected zeroTo(node: BlockNode, offset: number, length: number, flags: number): Promise<void> {
    const end = offset + length;
    if (end > this.usedEnd(node)) this.used.set(node, end);
    if (end > node.length()) return this.growTo(node, end).then(() => node.writeZeroes(offset, length, flags));
    return node.writeZeroes(offset, length, flags);
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
  protected async growTo(node: BlockNode, end: number): Promise<void> {
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
  protected async trimFiles(): Promise<void> {
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
    if (this.cleanTimer) clearInterval(this.cleanTimer);
    this.cleanTimer = undefined;
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

  protected checkWritable(): void {
    this.modified = true;
    if (this.corrupt) throw new BlockError('EIO', `qcow2: Image is corrupt; cannot be written (${this.corruptMessage})`);
    if (this.readOnly) throw new BlockError('EPERM', 'qcow2: image is read-only');
  }

  /**
   * QEMU's overlap check: refuses data writes, metadata write-backs and allocations that would land on
   * metadata. `ignore`: the kind being written (a cached L2 table or refcount block written back), as
   * QEMU's qcow2_cache_entry_flush passes its own type.
   */
  checkOverlap(offset: number, length: number, what: 'write' | 'allocation', ignore?: OverlapName, metadata = false): void {
    if (this.hasDataFile && what === 'write' && !metadata) return;
    const all = this.settings.overlap;
    const ov = { has: (k: OverlapName) => k !== ignore && all.has(k) };
    const cs = this.cs;
    const end = offset + length;
    let found: OverlapName | undefined;
    if (ov.has('main-header') && overlaps(offset, end, 0, cs)) found = 'main-header';
    else if (ov.has('active-l1') && this.l1Size && overlaps(offset, end, this.l1Offset, this.l1Size * 8)) found = 'active-l1';
    else if (ov.has('refcount-table') && overlaps(offset, end, this.refcounts.tableOffset, this.refcounts.tableClusters * cs)) found = 'refcount-table';
    else if (ov.has('snapshot-table') && this.snapshotTableSize && overlaps(offset, end, this.h.snapshotsOffset, this.snapshotTableSize)) found = 'snapshot-table';
    else if (ov.has('bitmap-directory') && this.h.bitmaps && overlaps(offset, end, this.h.bitmaps.directoryOffset, this.h.bitmaps.directorySize)) found = 'bitmap-directory';
    else if (ov.has('inactive-l1') && this.snapshots.length) {
      for (const sn of this.snapshots) if (sn.l1Size && overlaps(offset, end, sn.l1TableOffset, sn.l1Size * 8)) found = 'inactive-l1';
    }
    if (!found) {
      const l2 = ov.has('active-l2');
      const rb = ov.has('refcount-block');
      for (let c = Math.floor(offset / cs) * cs; c < end; c += cs) {
        if (l2 && this.l2Set.has(c)) { found = 'active-l2'; break; }
        if (rb && this.refcounts.blockSet.has(c)) { found = 'refcount-block'; break; }
      }
    }
    if (found) {
      throw this.signalCorruption(what === 'write'
        ? `Preventing invalid write on metadata (overlaps with ${OVERLAP_TEXT[found]})`
        : `Preventing invalid allocation at offset ${hex(offset)} (overlaps with ${OVERLAP_TEXT[found]})`);
    }
  }

  // ---- mapping ----

  protected l1Entry(i: number): { hi: number; lo: number } {
    return { hi: this.l1.readUInt32BE(i * 8), lo: this.l1.readUInt32BE(i * 8 + 4) };
  }

  /** Offset of the L2 table for L1 index i (0 if none); validates it. */
  protected l2TableOffset(i: number): number {
    if (i >= this.l1Size) return 0;
    const off = entryOffset(this.l1.readUInt32BE(i * 8), this.l1.readUInt32BE(i * 8 + 4));
    if (off === 0) return 0;
    if (off % this.cs !== 0) {
      throw this.signalCorruption(`L2 table offset ${hex(off)} unaligned (L1 index: ${hex(i)})`);
    }
    return off;
  }

  /**
   * The L2 entry of guest cluster `c` when no I/O is needed (no L2 table, or its
   * slice is cached), else undefined: the write path's lookups cost no promise.
   */
  cachedEntry(c: number): ClusterEntry | undefined {
    const at = this.entryPlace(c);
    if (!at) return unallocatedEntry();
    const e = this.l2Cache.peek(at.sliceOff);
    return e && this.entryIn(e.buf, at);
  }

  /** Reads the L2 entry of guest cluster `c`. */
  async entry(c: number): Promise<ClusterEntry> {
    return this.cachedEntry(c) ?? this.loadEntry(c);
  }

  /** Reads the L2 entry of guest cluster `c` through the cache (loading its slice if needed). */
  protected async loadEntry(c: number): Promise<ClusterEntry> {
    const at = this.entryPlace(c);
    if (!at) return unallocatedEntry();
    const e = await this.l2Cache.get(at.sliceOff);
    try {
      return this.entryIn(e.buf, at);
    } finally {
      this.l2Cache.release(e);
    }
  }

  /** Where guest cluster `c`'s L2 entry lies: undefined when it has no L2 table. */
  private entryPlace(c: number): EntryPlace | undefined {
    const l2i = c % this.l2Entries;
    const table = this.l2TableOffset(Math.floor(c / this.l2Entries));
    if (table === 0) return undefined;
    const slice = this.settings.l2SliceSize;
    const byteIdx = l2i * this.l2EntryBytes;
    return { table, l2i, sliceOff: table + Math.floor(byteIdx / slice) * slice, pos: byteIdx % slice };
  }

  /** The entry at `at` in its cached slice `buf`. */
  private entryIn(buf: Buffer, at: EntryPlace): ClusterEntry {
    const p = at.pos;
    const alloc = this.extL2 ? buf.readUInt32BE(p + 12) : 0;
    const zero = this.extL2 ? buf.readUInt32BE(p + 8) : 0;
    return this.decode(buf.readUInt32BE(p), buf.readUInt32BE(p + 4), alloc, zero, at.table, at.l2i);
  }

  protected decode(hi: number, lo: number, alloc: number, zero: number, table: number, l2i: number): ClusterEntry {
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
  protected subStatus(e: ClusterEntry, sc: number): SubclusterType {
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
        case 'data': await this.readData(r.host, sub, offset + pos); break;
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

  /** Reads guest data (at `guest`) from the host; bytes past the end of the data file read as zeroes (then decrypted, as in QEMU). */
  protected async readData(host: number, buf: Buffer, guest: number): Promise<void> {
    const n = Math.max(0, Math.min(buf.length, this.data.length() - host));
    // QEMU's qcow2 raises read_aio on its file (not a data file) before a data read (blkdebug).
    this.file.debugEvent('read_aio');
    if (n > 0) await this.data.read(host, buf.subarray(0, n));
    if (n < buf.length) buf.fill(0, n);
    if (this.crypto) await cryptData(this.crypto, buf, host, guest, false);
  }

  /**
   * Writes guest data (at `guest`) to the host. An encrypted image's data is
   * encrypted in place when the buffer is the driver's own (`owned`: a
   * copy-on-write buffer), else in a pooled bounce buffer: the caller's buffer
   * is never changed.
   */
  protected writeData(host: number, buf: Buffer, guest: number, minEnd = 0, owned = false): Promise<void> {
    // QEMU's qcow2 raises write_aio on its file (not a data file) before a data write (blkdebug).
    this.file.debugEvent('write_aio');
    const c = this.crypto;
    if (!c) return this.writeTo(this.data, host, buf, minEnd);
    if (owned) return this.encryptAndWrite(c, buf, buf, host, guest, minEnd);
    const enc = cryptBuffers.get(buf.length);
    return this.encryptAndWrite(c, buf, enc, host, guest, minEnd).finally(() => cryptBuffers.put(enc));
  }

  private async encryptAndWrite(c: Qcow2Crypto, buf: Buffer, out: Buffer, host: number, guest: number, minEnd: number): Promise<void> {
    await cryptData(c, buf, host, guest, true, out === buf ? undefined : out);
    await this.writeTo(this.data, host, out, minEnd);
  }

  async readBacking(offset: number, buf: Buffer): Promise<void> {
    const b = this.backing;
    const n = b ? Math.max(0, Math.min(buf.length, b.length() - offset)) : 0;
    if (b) this.file.debugEvent('read_backing_aio');
    if (n > 0) await b!.read(offset, buf.subarray(0, n));
    if (n < buf.length) buf.fill(0, n);
  }

  protected async compressedCluster(hi: number, lo: number): Promise<Buffer> {
    const key = `${hi}:${lo}`;
    if (this.lastCompressed?.key === key) return this.lastCompressed.buf;
    const d = compressedDescriptor(hi, lo, this.clusterBits);
    // A descriptor can claim at most a little over two clusters of input.
    const len = Math.min(d.length, 2 * this.cs + 512);
    const input = Buffer.alloc(len);
    this.file.debugEvent('read_compressed');
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
      } else if (r.kind === 'data' && !this.crypto && await this.metadataPreallocated()) {
        out.push(...await this.dataStatus(pos, r.length, r.host));
      } else {
        out.push({ offset: pos, length: r.length, data: r.kind !== 'zero', zero: r.kind === 'zero', allocated: true, depth: 1 });
      }
      pos += r.length;
      if (flags & ReqFlag.REQ_ONE) break;
    }
    return out;
  }

  private metadataPreallocation?: boolean;

  /**
   * QEMU's qcow2_detect_metadata_preallocation, asked once (at the first
   * block status): the image looks preallocated with metadata when clearly
   * more of its file's clusters are in use (refcount > 0) than its file has
   * allocated on disk. Only then does block status ask the data file (QEMU's
   * BDRV_BLOCK_RECURSE); a falloc/full image's clusters stay plain data.
   */
  private async metadataPreallocated(): Promise<boolean> {
    if (this.metadataPreallocation !== undefined) return this.metadataPreallocation;
    const actual = (this.file.ops.info?.() as { 'actual-size'?: unknown } | undefined)?.['actual-size'];
    let found = false;
    if (typeof actual === 'number') {
      const cs = this.cs;
      const real = Math.floor(actual / cs);
      const threshold = Math.max(Math.floor(real * 10 / 9), real + 2);
      const end = Math.ceil(this.file.length() / cs);
      let count = 0;
      for (let i = 0; i < end && count < threshold; i++) if (await this.refcounts.get(i) > 0) count++;
      found = count >= threshold;
    }
    this.metadataPreallocation = found;
    return found;
  }

  /**
   * A run of data clusters at `host`: data, reading as zeroes where the data
   * file has holes or ends (QEMU's bdrv_co_block_status asks the file below
   * a metadata-preallocated image, so its never-written clusters report zero).
   */
  protected async dataStatus(offset: number, length: number, host: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const push = (o: number, l: number, zero: boolean) => {
      const last = out[out.length - 1];
      if (last && last.zero === zero && last.offset + last.length === o) last.length += l;
      else out.push({ offset: o, length: l, data: true, zero, allocated: true, depth: 1 });
    };
    const inFile = Math.max(0, Math.min(length, this.data.length() - host));
    for (let pos = 0; pos < inFile;) {
      const ext = await this.data.blockStatus(host + pos, inFile - pos);
      if (ext.length === 0) { push(offset + pos, inFile - pos, false); break; }
      for (const e of ext) {
        const l = Math.min(e.length, inFile - pos);
        push(offset + pos, l, e.zero);
        pos += l;
      }
    }
    if (inFile < length) push(offset + inFile, length - inFile, true);
    return out;
  }

  protected async backingStatus(offset: number, length: number, flags: number): Promise<Extent[]> {
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
}

/** Whether [offset, end) and [start, start + len) share a byte. */
function overlaps(offset: number, end: number, start: number, len: number): boolean {
  return start < end && offset < start + len;
}
