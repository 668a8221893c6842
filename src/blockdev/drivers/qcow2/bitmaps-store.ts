/**
 * Persistent dirty bitmaps in a qcow2 image (docs/interop/qcow2.txt,
 * "Bitmaps extension"). Loaded at open; a bitmap found flagged in-use was
 * not stored after its last use (QEMU died with it loaded): it is loaded
 * inconsistent, as QEMU does, and kept on disk untouched until removed.
 *
 * Unlike QEMU, which flags its bitmaps in-use while the image is open and
 * writes them only on close (so a crash loses them all), blockd keeps them
 * valid on disk while it runs: on the first change they are stored (new
 * tables, data and directory, not in-use; then the header; then the old
 * clusters freed), and from then on every write that makes a granule newly
 * dirty first writes and flushes that bit (a write-ahead record in the
 * bitmap's own data cluster). Writes into already-dirty granules cost
 * nothing. Commands that change a bitmap (add, remove, clear, merge,
 * enable, disable) store them again before they return.
 *
 * The store marks the node's bitmaps for the qcow2 node's writes (it wraps
 * the driver's operations) so it sees each request before it reaches the
 * image, and knows its kind: a discard the node ignores (discard=ignore)
 * dirties nothing, as in QEMU.
 */
import { BlockError } from '../../../util/errors.ts';
import type { Logger } from 'pino';
import { DirtyBitmap } from '../../bitmaps/dirty-bitmap.ts';
import type { SparseBitmap } from '../../bitmaps/sparse-bitmap.ts';
import { NodeBitmaps, type BitmapStore } from '../../bitmaps/node-bitmaps.ts';
import { Autoclear, ExtType, Limit, parseHeader, serializeHeader } from './header.ts';
import type { Qcow2Image } from './image.ts';
import type { BitmapInfo } from './bitmaps.ts';

const IN_USE = 1;
const AUTO = 2;
const TYPE_DIRTY_TRACKING = 1;
const ENTRY_OFFSET_MASK = 0x00fffffffffffe00n;

/** One bitmap directory entry as found on disk. */
export interface DirEntry {
  tableOffset: number;
  tableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  name: string;
  extra: Buffer;
  /** The entry's bytes, for bitmaps kept as they are. */
  raw: Buffer;
}

export function parseDirectory(buf: Buffer, count: number): DirEntry[] {
  const out: DirEntry[] = [];
  let pos = 0;
  for (let i = 0; i < count; i++) {
    if (pos + 24 > buf.length) throw new BlockError('EINVAL', 'Bitmap directory is corrupted');
    const nameSize = buf.readUInt16BE(pos + 18);
    const extraSize = buf.readUInt32BE(pos + 20);
    const end = pos + 24 + extraSize + nameSize;
    if (end > buf.length) throw new BlockError('EINVAL', 'Bitmap directory is corrupted');
    out.push({
      tableOffset: Number(buf.readBigUInt64BE(pos)),
      tableSize: buf.readUInt32BE(pos + 8),
      flags: buf.readUInt32BE(pos + 12),
      type: buf[pos + 16]!,
      granularityBits: buf[pos + 17]!,
      extra: Buffer.from(buf.subarray(pos + 24, pos + 24 + extraSize)),
      name: buf.toString('utf8', pos + 24 + extraSize, end),
      raw: Buffer.from(buf.subarray(pos, Math.ceil(end / 8) * 8)),
    });
    pos = Math.ceil(end / 8) * 8;
  }
  return out;
}

/** QEMU's limits on a bitmap directory entry (block/qcow2-bitmap.c). */
const BME_MAX_TABLE_SIZE = 0x8000000;
const BME_MAX_PHYS_SIZE = 0x20000000;
const BME_RESERVED_FLAGS = 0xfffffffc;

/**
 * QEMU's check_dir_entry: a table that exists, is aligned and bounded,
 * granularity 2^9..2^31, no reserved flag, a dirty-tracking bitmap, and
 * (unless in use) a table big enough for the disk. An image with an entry
 * that fails it does not open (a huge table size would otherwise be read
 * cluster by cluster for minutes, or a huge table allocated).
 */
export function dirEntryValid(e: Omit<DirEntry, 'raw'>, clusterSize: number, diskSize: number): boolean {
  if (e.tableSize === 0 || e.tableOffset === 0 || e.tableOffset % clusterSize !== 0 || e.tableSize > BME_MAX_TABLE_SIZE
      || e.granularityBits > 31 || e.granularityBits < 9 || (e.flags & BME_RESERVED_FLAGS) !== 0
      || Buffer.byteLength(e.name) > 1023 || e.type !== 1) return false;
  const phys = e.tableSize * clusterSize;
  if (phys > BME_MAX_PHYS_SIZE) return false;
  return (e.flags & IN_USE) !== 0 || diskSize <= phys * 8 * 2 ** e.granularityBits;
}

/** QEMU's check_table_entry: no reserved bit; an offset is aligned and has no all-ones flag. */
export function tableEntryValid(v: bigint, clusterSize: number): boolean {
  if (v & 0xff000000000001fen) return false;
  const off = v & ENTRY_OFFSET_MASK;
  return off === 0n || ((v & 1n) === 0n && off % BigInt(clusterSize) === 0n);
}

export function serializeEntry(e: Omit<DirEntry, 'raw'>): Buffer {
  const name = Buffer.from(e.name);
  const len = Math.ceil((24 + e.extra.length + name.length) / 8) * 8;
  const b = Buffer.alloc(len);
  b.writeBigUInt64BE(BigInt(e.tableOffset), 0);
  b.writeUInt32BE(e.tableSize, 8);
  b.writeUInt32BE(e.flags >>> 0, 12);
  b[16] = e.type;
  b[17] = e.granularityBits;
  b.writeUInt16BE(name.length, 18);
  b.writeUInt32BE(e.extra.length, 20);
  e.extra.copy(b, 24);
  name.copy(b, 24 + e.extra.length);
  return b;
}

/** Number of bitmap table entries (data clusters) a bitmap needs. */
export function tableSize(size: number, granularity: number, clusterSize: number): number {
  return Math.ceil(Math.ceil(size / granularity) / (clusterSize * 8));
}

export class Qcow2BitmapStore implements BitmapStore {
  readonly bitmaps: DirtyBitmap[] = [];
  /** Entries of bitmaps loaded inconsistent: kept on disk as found. */
  private readonly kept = new Map<DirtyBitmap, DirEntry>();
  /** Everything the on-disk bitmaps occupy (freed once a new version is stored). */
  private onDisk: DirEntry[] = [];
  private dirty = false;
  /** What the registry hands out for this node (DriverOps.bitmapStore.nodeBitmaps). */
  readonly nodeBitmaps: NodeBitmaps = new NodeBitmaps(this, () => this.img.size);

  constructor(private readonly img: Qcow2Image, private readonly nodeName: string) {}

  /** Reads the bitmaps of the image (only while the extension is valid: autoclear bit set). */
  async load(): Promise<void> {
    const h = this.img.h;
    if (!h.bitmaps || !(h.autoclear & Autoclear.BITMAPS)) return;
    if (h.bitmaps.directorySize > 64 * 1024 * 1024) throw new BlockError('EINVAL', 'Bitmap directory is too large');
    const dir = Buffer.alloc(h.bitmaps.directorySize);
    await this.img.readMeta(h.bitmaps.directoryOffset, dir);
    this.onDisk = parseDirectory(dir, h.bitmaps.nbBitmaps);
    const cs = this.img.cs;
    for (const e of this.onDisk) {
      if (!dirEntryValid(e, cs, this.img.size)) throw new BlockError('EINVAL', `Bitmap '${e.name}' doesn't satisfy the constraints`);
    }
    for (const e of this.onDisk) {
      const bm = new DirtyBitmap(e.name, 2 ** e.granularityBits, this.img.size);
      bm.persistent = true;
      bm.recording = (e.flags & AUTO) !== 0;
      // Read-only while the image is (a reopen read-write makes them writable, as in QEMU).
      bm.readOnlySource = () => this.img.readOnly;
      if (e.flags & IN_USE) {
        bm.inconsistent = true;
        bm.recording = false;
        this.kept.set(bm, e);
      } else {
        const table = Buffer.alloc(e.tableSize * 8);
        await this.img.readMeta(e.tableOffset, table);
        for (let i = 0; i < e.tableSize; i++) {
          if (!tableEntryValid(table.readBigUInt64BE(i * 8), cs)) {
            throw new BlockError('EINVAL', `Could not read bitmap_table table from image for bitmap '${e.name}': Invalid argument`);
          }
        }
        const perCluster = cs * 8;
        for (let i = 0; i < e.tableSize; i++) {
          const v = table.readBigUInt64BE(i * 8);
          const off = Number(v & ENTRY_OFFSET_MASK);
          if (off) {
            const data = Buffer.alloc(cs);
            await this.img.readMeta(off, data);
            bm.bits.orBytes(i * perCluster, data);
          } else if (v & 1n) {
            bm.bits.set(i * perCluster, (i + 1) * perCluster);
          }
        }
      }
      // QEMU adds each loaded bitmap at the head of the node's list.
      this.bitmaps.unshift(bm);
    }
  }

  /**
   * The bitmap directory as it is on disk now (query-named-block-nodes'
   * format-specific "bitmaps", which QEMU reads from the image): before the
   * first store of a read-write open the driver has flagged them in-use.
   */
  directoryInfo(): BitmapInfo[] {
    const img = this.img;
    const flaggedAtOpen = !this.storedSinceOpen && !img.readOnly && !img.pendingActivation;
    return this.onDisk.map((e) => {
      const flags: string[] = [];
      if (e.flags & IN_USE || flaggedAtOpen) flags.push('in-use');
      if (e.flags & AUTO) flags.push('auto');
      return { name: e.name, granularity: 2 ** e.granularityBits, flags };
    });
  }

  private storedSinceOpen = false;

  checkCanStore(name: string, granularity: number): void {
    const fail = (why: string) => new BlockError('EINVAL', `Can't make bitmap '${name}' persistent in '${this.nodeName}': ${why}`);
    if (this.img.h.version < 3) throw fail('Cannot store dirty bitmaps in qcow2 v2 files');
    if (this.bitmaps.filter((b) => b.persistent).length >= Limit.MAX_BITMAPS) throw fail('Maximum number of persistent bitmaps is already reached');
    void granularity;
  }

  async added(): Promise<void> { this.dirty = true; await this.storeNow(); }
  async removed(bm: DirtyBitmap): Promise<void> { this.kept.delete(bm); this.dirty = true; await this.storeNow(); }
  async changed(): Promise<void> { this.dirty = true; await this.storeNow(); }

  /** Whether close() has anything to write. */
  get needsStore(): boolean { return this.dirty || this.bitmaps.some((b) => b.persistent) || this.onDisk.length > 0; }

  /** Whether the image can be written now (not read-only, not corrupt, activated). */
  private get writable(): boolean {
    const img = this.img;
    return !img.readOnly && !img.corrupt && !img.pendingActivation;
  }

  /** Serialises on-disk bitmap updates (write-ahead records and whole stores). */
  private chain: Promise<unknown> = Promise.resolve();
  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Runs a write, write-zeroes or discard of [offset, offset+length) after its write-ahead (beforeWrite). */
  guarded(offset: number, length: number, run: () => Promise<void>): Promise<void> {
    const ahead = this.beforeWrite(offset, length);
    return ahead ? ahead.then(run) : run();
  }

  /**
   * Write-ahead for a write, write-zeroes or discard about to change
   * [offset, offset+length): the bitmaps are marked in memory, and where that
   * made a granule of a stored (live) persistent bitmap newly dirty, the bit
   * reaches the disk (and is flushed) before the data write starts. So after a
   * crash the stored bitmap is still valid and covers every acknowledged
   * write. Writes into granules that are already dirty cost nothing: no
   * promise at all (undefined) when nothing has to reach the disk first.
   */
  beforeWrite(offset: number, length: number): Promise<void> | undefined {
    this.nodeBitmaps.observe(offset, length);
    if (this.bitmaps.length === 0) return undefined;
    if (!this.writable) return undefined;
    const pending: DirtyBitmap[] = [];
    for (const bm of this.bitmaps) {
      if (!bm.persistent || bm.inconsistent) continue;
      const live = this.live.get(bm);
      // Not stored since open (the driver flagged it in-use), or resized since: store it, recording or not.
      if (!live || live.table.length !== tableSize(bm.size, bm.granularity, this.img.cs) * 8) { pending.push(bm); continue; }
      if (!bm.recording || length <= 0) continue;
      const g0 = Math.floor(offset / bm.granularity);
      const g1 = Math.min(Math.ceil((offset + length) / bm.granularity), bm.bits.size);
      if (live.persisted.nextClear(g0, g1) < g1) pending.push(bm);
    }
    if (pending.length === 0) return undefined;
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ bms: pending, offset, length, resolve, reject });
      if (!this.draining) void this.drain();
    });
  }

  /** Write-ahead records waiting for the next batch. */
  private waiting: { bms: DirtyBitmap[]; offset: number; length: number; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private draining = false;

  /**
   * Group commit: each batch takes every record queued so far, writes them
   * and flushes once; records that arrive meanwhile go in the next batch.
   */
  private async drain(): Promise<void> {
    this.draining = true;
    while (this.waiting.length) {
      const batch = this.waiting.splice(0);
      try {
        await this.locked(async () => {
          if (!this.writable) return;
          // Not stored yet, or stored for another size (block_resize): store everything anew.
          const stale = (bm: DirtyBitmap) => !this.live.has(bm) || this.live.get(bm)!.table.length !== tableSize(bm.size, bm.granularity, this.img.cs) * 8;
          if (batch.some((r) => r.bms.some(stale))) {
            await this.storeLocked();
            return;
          }
          await this.img.meta.run(async () => {
            for (const r of batch) for (const bm of r.bms) await this.persistRange(bm, r.offset, r.length);
          });
          await this.img.barrier();
        });
        for (const r of batch) r.resolve();
      } catch (e) {
        for (const r of batch) r.reject(e);
      }
    }
    this.draining = false;
  }

  /** Writes the bits of `bm` covering [offset, offset+length) into its stored data clusters (meta lock held). */
  private async persistRange(bm: DirtyBitmap, offset: number, length: number): Promise<void> {
    const img = this.img;
    const live = this.live.get(bm);
    if (!live) return;
    const g0 = Math.floor(offset / bm.granularity);
    const g1 = Math.min(Math.ceil((offset + length) / bm.granularity), bm.bits.size);
    const pc = img.cs * 8;
    for (let i = Math.floor(g0 / pc); i * pc < g1; i++) {
      const base = i * pc;
      const a = Math.max(g0, base);
      const b = Math.min(g1, base + pc);
      const cur = Number(live.table.readBigUInt64BE(i * 8) & ENTRY_OFFSET_MASK);
      if (cur) {
        const b0 = Math.floor((a - base) / 8);
        const b1 = Math.ceil((b - base) / 8);
        // Whole bytes go out, neighbours' bits included: those already on disk stay set. (A bitmap
        // cleared in memory since its last store, as a backup's start does, keeps its stored bits
        // until the next store; otherwise a later write into such a granule, taken as already on
        // disk, would be missing there after a crash.)
        const bytes = bm.bits.toBytes(base + b0 * 8, (b1 - b0) * 8);
        const onDisk = live.persisted.toBytes(base + b0 * 8, (b1 - b0) * 8);
        for (let k = 0; k < bytes.length; k++) bytes[k] = bytes[k]! | onDisk[k]!;
        await img.writeMeta(cur + b0, bytes);
      } else {
        // A new data cluster: its refcount and contents reach the disk before the table points at it.
        const off = await img.refcounts.alloc(1);
        await img.writeMeta(off, bm.bits.toBytes(base, pc));
        await img.refcounts.cache.flush();
        await img.barrier();
        const entry = Buffer.alloc(8);
        entry.writeBigUInt64BE(BigInt(off));
        await img.writeMeta(live.tableOffset + i * 8, entry);
        entry.copy(live.table, i * 8);
      }
      live.persisted.set(a, b);
    }
  }

  /** Stores every bitmap now, when the image can be written (else on close). */
  private async storeNow(): Promise<void> {
    if (!this.writable) return;
    await this.locked(() => this.storeLocked());
  }

  /** Persistent bitmaps as stored: table location, table entries, bits known to be on disk. */
  private readonly live = new Map<DirtyBitmap, { tableOffset: number; table: Buffer; persisted: SparseBitmap }>();

  async store(): Promise<void> {
    await this.locked(() => this.storeLocked());
  }

  /**
   * Writes every persistent bitmap (oldest first, as they were added) and
   * points the header at the new directory; then frees what the old one used.
   * The stored bitmaps are not flagged in-use: the write-ahead in
   * beforeWrite() keeps them valid while the image is open.
   */
  private async storeLocked(): Promise<void> {
    const img = this.img;
    if (!this.writable || !this.needsStore) return;
    // Until the new copy is in place, a write that dirties a granule must queue a record (beforeWrite
    // finds no stored copy) rather than trust the old one: the new copy may be cloned before its bit.
    this.live.clear();
    const cs = img.cs;
    const entries: Buffer[] = [];
    const keptTables = new Set<number>();
    const live = new Map<DirtyBitmap, { tableOffset: number; table: Buffer; persisted: SparseBitmap }>();
    this.nodeBitmaps.syncSize();
    await img.meta.run(async () => {
      for (const bm of [...this.bitmaps].reverse()) {
        if (!bm.persistent) continue;
        const kept = this.kept.get(bm);
        if (kept) { entries.push(kept.raw); keptTables.add(kept.tableOffset); continue; }
        const n = tableSize(bm.size, bm.granularity, cs);
        if (n > 0x8000000) throw new BlockError('EINVAL', `Bitmap '${bm.name}' is too large to store`);
        const table = Buffer.alloc(n * 8);
        const perCluster = cs * 8;
        const persisted = bm.bits.clone();
        for (let i = 0; i < n; i++) {
          const from = i * perCluster;
          if (persisted.nextSet(from, from + perCluster) < 0) continue;
          const data = persisted.toBytes(from, perCluster);
          const off = await img.refcounts.alloc(1);
          await img.writeMeta(off, data);
          table.writeBigUInt64BE(BigInt(off), i * 8);
        }
        const tableOff = await img.refcounts.alloc(Math.max(1, Math.ceil(table.length / cs)));
        await img.writeMeta(tableOff, table);
        live.set(bm, { tableOffset: tableOff, table, persisted });
        entries.push(serializeEntry({
          tableOffset: tableOff, tableSize: n, flags: bm.recording ? AUTO : 0, type: TYPE_DIRTY_TRACKING,
          granularityBits: Math.log2(bm.granularity), name: bm.name, extra: Buffer.alloc(0),
        }));
      }
      let dirOff = 0;
      const dir = Buffer.concat(entries);
      if (entries.length) {
        dirOff = await img.refcounts.alloc(Math.ceil(dir.length / cs));
        await img.writeMeta(dirOff, dir);
      }
      await img.l2Cache.flush();
      await img.refcounts.cache.flush();
      await img.barrier();
      await this.writeExtension(entries.length, dir.length, dirOff);
      // The old version is unreachable now: free it.
      for (const e of this.onDisk) {
        if (keptTables.has(e.tableOffset)) continue;
        await this.freeTable(e);
      }
      if (this.oldDirectory) await img.free(this.oldDirectory.offset, Math.ceil(this.oldDirectory.size / cs), 'other');
      await img.l2Cache.flush();
      await img.refcounts.cache.flush();
      this.onDisk = parseDirectory(dir, entries.length);
      this.oldDirectory = undefined;
    });
    this.live.clear();
    for (const [bm, l] of live) this.live.set(bm, l);
    this.storedSinceOpen = true;
    // The directory the driver flagged in-use at open is gone: nothing to put back.
    (img as unknown as { bitmapRestore?: unknown }).bitmapRestore = undefined;
    this.dirty = false;
  }

  private oldDirectory?: { offset: number; size: number };

  private async freeTable(e: DirEntry): Promise<void> {
    const img = this.img;
    const cs = img.cs;
    if (!e.tableOffset) return;
    const table = Buffer.alloc(e.tableSize * 8);
    await img.readMeta(e.tableOffset, table);
    for (let i = 0; i < e.tableSize; i++) {
      const off = Number(table.readBigUInt64BE(i * 8) & ENTRY_OFFSET_MASK);
      if (off) await img.free(off, 1, 'other');
    }
    await img.free(e.tableOffset, Math.max(1, Math.ceil(table.length / cs)), 'other');
  }

  /** Rewrites the header with the bitmaps extension (or without it) and the autoclear bit to match. */
  private async writeExtension(count: number, dirSize: number, dirOff: number): Promise<void> {
    const img = this.img;
    const cur = Buffer.alloc(img.cs);
    await img.readMeta(0, cur);
    const h = parseHeader(cur);
    h.extensions = h.extensions.filter((e) => e.type !== ExtType.BITMAPS);
    if (count) {
      const ext = Buffer.alloc(24);
      ext.writeUInt32BE(count, 0);
      ext.writeBigUInt64BE(BigInt(dirSize), 8);
      ext.writeBigUInt64BE(BigInt(dirOff), 16);
      // QEMU's order: after the feature table.
      const ft = h.extensions.findIndex((e) => e.type === ExtType.FEATURE_TABLE);
      h.extensions.splice(ft < 0 ? h.extensions.length : ft + 1, 0, { type: ExtType.BITMAPS, data: ext });
      h.autoclear |= Autoclear.BITMAPS;
    } else {
      h.autoclear &= ~Autoclear.BITMAPS;
    }
    const prev = img.h.bitmaps;
    if (prev) this.oldDirectory = { offset: prev.directoryOffset, size: prev.directorySize };
    await img.writeMeta(0, serializeHeader(h));
    await img.barrier();
    img.h.bitmaps = count ? { nbBitmaps: count, directorySize: dirSize, directoryOffset: dirOff } : undefined;
    img.h.autoclear = h.autoclear;
    img.h.extensions = h.extensions;
  }
}

/** Loads the image's bitmaps (before the driver flags them in-use on disk). */
export async function loadBitmapStore(img: Qcow2Image, nodeName: string, readOnly: boolean): Promise<Qcow2BitmapStore> {
  const store = new Qcow2BitmapStore(img, nodeName);
  void readOnly;
  await store.load();
  return store;
}
