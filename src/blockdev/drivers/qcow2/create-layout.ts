/**
 * The initial metadata of a new qcow2 image, laid out exactly as
 * qemu-img / qemu-storage-daemon 7.2 lay it out (pure: no I/O).
 *
 * QEMU creates an image in steps, and the result depends on them: a header
 * cluster, a refcount table and one refcount block; then the L1 table is
 * allocated for the requested size; then preallocation allocates L2 tables
 * and data clusters through the ordinary cluster allocator, which may add
 * refcount blocks and grow (move) the refcount table. Rather than derive
 * closed formulas for every case, this module runs a small model of that
 * allocator on an in-memory sparse file and returns the bytes it wrote.
 *
 * Facts used (docs/interop/qcow2.txt, and observation of qemu-img 7.2):
 *  - header cluster at 0, refcount table at cluster 1 (one cluster), first
 *    refcount block at cluster 2, L1 table at cluster 3 written with exactly
 *    l1_size * 8 bytes; v3 header length 112;
 *  - extensions in the order: external data file name, backing format,
 *    feature name table (v3, clusters of 8 KiB and more only), end; the
 *    backing file name follows the end marker;
 *  - the allocator takes the first free cluster from a moving "free index";
 *    a refcount block is placed at the first free cluster and describes
 *    itself when it can; a full refcount table is replaced by a new one in a
 *    self-describing area after everything else (the old one is freed);
 *  - preallocation=metadata allocates, per L2 table, the table and then its
 *    data clusters, writes zeroes over the rest of a partial last
 *    (sub)cluster and extends the file to the end of the guest data;
 *  - preallocation=falloc/full (no external data file) reserves one
 *    contiguous data area after a refcount area sized for it, preallocates
 *    the file over it, and then places L2 tables in free clusters;
 *  - with extended L2 entries, preallocated clusters keep every subcluster
 *    unallocated (reads go to the backing file), as QEMU does.
 */
import { BlockError } from '../../../util/errors.ts';
import {
  Autoclear, Compat, DEFAULT_FEATURE_NAMES, ExtType, Incompat, Limit, featureTable, serializeHeader,
  type HeaderExtension, type Qcow2Header,
} from './header.ts';
import { getRefcountEntry, refcountMax, setRefcountEntry } from './refcount.ts';
import { makeEntry } from './l2.ts';

export type PreallocMode = 'off' | 'metadata' | 'falloc' | 'full';

export interface Qcow2LayoutOptions {
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  /** 3 (compat 1.1, default) or 2 (compat 0.10). */
  version?: 2 | 3;
  clusterSize?: number;
  refcountBits?: number;
  lazyRefcounts?: boolean;
  extendedL2?: boolean;
  compressionType?: 'zlib' | 'zstd';
  preallocation?: PreallocMode;
  backingFile?: string;
  backingFormat?: string;
  /** External data file: the name recorded in the image. Guest data then lives there, 1:1. */
  dataFile?: string;
  dataFileRaw?: boolean;
  /**
   * Encryption, set up last as qcow2_set_up_encryption does: the crypt
   * method, and for LUKS (2) the size of its header, which gets zeroed
   * clusters of its own (the caller writes the LUKS header into them).
   */
  encryption?: { method: 1 | 2; headerBytes?: number };
}

/** Bytes to write into the image file (non-overlapping, in offset order). */
export interface LayoutWrite { offset: number; data: Buffer }

export interface Qcow2Layout {
  writes: LayoutWrite[];
  /** Length of the image file when done (QEMU only ever grows it). */
  fileLength: number;
  /**
   * The part of the image file to preallocate (falloc/full without an
   * external data file; `from` may be past `to`). QEMU resizes the file to
   * `to` with preallocation, which fails if the file is longer.
   */
  filePrealloc?: { from: number; to: number; mode: 'falloc' | 'full' };
  /**
   * External data file: its new length and how to preallocate what is added;
   * `growOnly`: leave a longer file as it is (otherwise it is cut to `length`);
   * `zeroTail`: zeroes written first, past the end of the guest data up to
   * the end of its last (sub)cluster.
   */
  dataFile?: { length: number; mode: 'off' | 'falloc' | 'full'; growOnly: boolean; zeroTail?: { offset: number; length: number } };
  /** The final header (what the first cluster holds). */
  header: Qcow2Header;
  /** A failure QEMU reports after writing the image (the backing file could not be recorded). */
  error?: LayoutError;
}

export const DEFAULT_CLUSTER_SIZE = 65536;
/** QEMU keeps the feature name table out of the header of images with small clusters. */
const FEATURE_TABLE_MIN_CLUSTER = 8192;
const V3_HEADER_LENGTH = 112;
const INT_MAX = 0x7fffffff;

/** An error with QEMU's message for the step that failed (the caller adds nothing). */
export class LayoutError extends BlockError {}

/** errno texts as glibc prints them. */
const EFBIG_TEXT = 'File too large';
const ENOSPC_TEXT = 'No space left on device';
const EINVAL_TEXT = 'Invalid argument';
const EIO_TEXT = 'Input/output error';

/** Raised inside the allocator model; qcow2Layout() turns it into the message of the step. */
class ModelError extends Error {
  constructor(readonly code: 'EOVERFLOW' | 'ENOSPC' | 'EINVAL' | 'EIO', readonly text: string) { super(text); }
}
const efbig = () => new ModelError('EOVERFLOW', EFBIG_TEXT);

/** Number of L1 entries QEMU gives an image of `size` bytes. */
export function l1EntriesFor(size: number, clusterSize: number, extendedL2: boolean): number {
  const l2Entries = clusterSize / (extendedL2 ? 16 : 8);
  return Math.ceil(size / (clusterSize * l2Entries));
}

/** QEMU's qcow2_refcount_metadata_size(): refcount blocks needed to cover `clusters` plus themselves and their table. */
function refblocksNeeded(clusters: number, cs: number, bits: number, generous: boolean): number {
  const perTableCluster = cs / 8;
  const perBlock = (cs * 8) / bits;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / perBlock);
    table = Math.ceil(blocks / perTableCluster);
    n = clusters + blocks + table;
    if (n === last && generous) {
      clusters += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return blocks;
}

/** A sparse file being written: chunks in write order (later ones win where they overlap). */
class SparseFile {
  private readonly chunks: { offset: number; data: Buffer; seq: number }[] = [];
  private readonly byOffset = new Map<number, { offset: number; data: Buffer; seq: number }>();
  private seq = 0;
  length = 0;

  /** Records a write; the buffer is kept by reference, so later changes to it are "rewrites". */
  write(offset: number, data: Buffer): void {
    const old = this.byOffset.get(offset);
    const c = { offset, data, seq: this.seq++ };
    if (old && old.data.length === data.length) {
      old.data = data;
      old.seq = c.seq;
    } else {
      this.chunks.push(c);
      this.byOffset.set(offset, c);
    }
    this.length = Math.max(this.length, offset + data.length);
  }


  /** The file's written bytes as non-overlapping runs in offset order. */
  runs(): LayoutWrite[] {
    const sorted = [...this.chunks].sort((a, b) => a.offset - b.offset || a.seq - b.seq);
    const out: LayoutWrite[] = [];
    let i = 0;
    while (i < sorted.length) {
      // Gather a group of overlapping chunks.
      let end = sorted[i].offset + sorted[i].data.length;
      let j = i + 1;
      while (j < sorted.length && sorted[j].offset < end) { end = Math.max(end, sorted[j].offset + sorted[j].data.length); j++; }
      const group = sorted.slice(i, j);
      if (group.length === 1) {
        out.push({ offset: group[0].offset, data: group[0].data });
      } else {
        const start = group[0].offset;
        const buf = Buffer.alloc(end - start);
        for (const c of group.sort((a, b) => a.seq - b.seq)) c.data.copy(buf, c.offset - start);
        out.push({ offset: start, data: buf });
      }
      i = j;
    }
    return out;
  }
}

/** The in-memory model of QEMU's cluster allocator on a new image. */
class ImageModel {
  readonly cs: number;
  readonly perBlock: number;
  readonly max: number;
  readonly file = new SparseFile();
  /** Refcount table entries (host offsets of refcount blocks, 0 = none) and where the table lives. */
  reftable: number[];
  reftableBuf: Buffer;
  reftableOffset: number;
  reftableClusters: number;
  readonly refblocks = new Map<number, Buffer>();
  /** QEMU's free_cluster_index. */
  free = 0;
  l1: number[] = [];
  l1Buf = Buffer.alloc(0);
  l1Offset = 0;
  readonly l2 = new Map<number, Buffer>();

  constructor(readonly h: Qcow2Header, readonly bits: number, readonly l2Entries: number,
    readonly extL2: boolean, readonly external: boolean) {
    this.cs = 2 ** h.clusterBits;
    this.perBlock = (this.cs * 8) / bits;
    this.max = refcountMax(bits);
    // What QEMU writes before it opens the new image: the header cluster, a
    // refcount table pointing at one (empty) refcount block.
    this.reftableOffset = this.cs;
    this.reftableClusters = 1;
    this.reftable = new Array(this.cs / 8).fill(0);
    this.reftable[0] = 2 * this.cs;
    this.reftableBuf = Buffer.alloc(this.cs);
    this.reftableBuf.writeBigUInt64BE(BigInt(2 * this.cs), 0);
    this.file.write(0, Buffer.alloc(this.cs));
    this.file.write(this.cs, this.reftableBuf);
    const block = Buffer.alloc(this.cs);
    this.refblocks.set(2 * this.cs, block);
    this.file.write(2 * this.cs, block);
  }

  refcount(c: number): number {
    const idx = Math.floor(c / this.perBlock);
    if (idx >= this.reftable.length) return 0;
    const off = this.reftable[idx];
    if (!off) return 0;
    return getRefcountEntry(this.refblocks.get(off)!, c % this.perBlock, this.bits);
  }

  private setReftableEntry(idx: number, off: number): void {
    this.reftable[idx] = off;
    this.reftableBuf.writeBigUInt64BE(BigInt(off), idx * 8);
  }

  /** alloc_clusters_noref: the first run of `n` free clusters from the free index (which moves past it). */
  allocNoref(n: number): number {
    for (let i = 0; i < n; i++) {
      const c = this.free++;
      if (this.refcount(c) !== 0) i = -1;
    }
    return this.free - n;
  }

  /** update_refcount: false means "a refcount block was added, search again" (QEMU's -EAGAIN). */
  updateRefcount(c0: number, n: number, addend: number): boolean {
    let oldIdx = -1;
    for (let c = c0; c < c0 + n; c++) {
      const idx = Math.floor(c / this.perBlock);
      if (idx !== oldIdx && !this.allocRefcountBlock(c)) {
        // The caller searches again, from the clusters it wanted (they may still be free) ...
        if (this.free > c0) this.free = c0;
        // ... once what this call did so far is undone.
        if (c > c0) this.updateRefcount(c0, c - c0, -addend);
        return false;
      }
      oldIdx = idx;
      const block = this.refblocks.get(this.reftable[idx])!;
      const v = getRefcountEntry(block, c % this.perBlock, this.bits) + addend;
      if (v < 0 || v > this.max) throw new ModelError('EINVAL', EINVAL_TEXT);
      if (v === 0 && c < this.free) this.free = c;
      setRefcountEntry(block, c % this.perBlock, this.bits, v);
    }
    return true;
  }

  /** alloc_refcount_block: true if the block covering `c` exists; otherwise adds it and returns false. */
  private allocRefcountBlock(c: number): boolean {
    const cs = this.cs;
    const idx = Math.floor(c / this.perBlock);
    if (idx < this.reftable.length && this.reftable[idx]) return true;
    const nb = this.allocNoref(1);
    if (nb === 0) throw new ModelError('EIO', EIO_TEXT);
    const block = Buffer.alloc(cs);
    if (Math.floor(nb / this.perBlock) === idx) {
      setRefcountEntry(block, nb % this.perBlock, this.bits, 1);
    } else if (!this.updateRefcount(nb, 1, 1)) {
      return false;
    }
    this.refblocks.set(nb * cs, block);
    this.file.write(nb * cs, block);
    if (idx < this.reftable.length) {
      this.setReftableEntry(idx, nb * cs);
      return false;
    }
    // The table is full: build a new one (and the blocks describing it) past everything in use.
    const blocksUsed = Math.ceil(Math.max(c + 1, nb + 1) / this.perBlock);
    if (blocksUsed > Limit.MAX_REFTABLE_BYTES / 8) throw efbig();
    this.refcountArea(blocksUsed * this.perBlock * cs, 0, false, idx, nb * cs);
    return false;
  }

  /**
   * qcow2_refcount_area: a new refcount table and the refcount blocks for
   * [start, start + additional clusters), placed at `start` and describing
   * themselves. Returns the end of the new structures.
   */
  refcountArea(start: number, additional: number, exact: boolean, newIdx: number, newOff: number): number {
    const cs = this.cs;
    const total = refblocksNeeded(start / cs + additional, cs, this.bits, !exact);
    if (total > Limit.MAX_REFTABLE_BYTES) throw efbig();
    const areaIdx = Math.floor(start / cs / this.perBlock);
    let tableSize = exact ? total : total + Math.ceil(total / 2);
    tableSize = Math.ceil(tableSize / (cs / 8)) * (cs / 8);
    const tableClusters = (tableSize * 8) / cs;
    if (tableSize * 8 > Limit.MAX_REFTABLE_BYTES) throw efbig();
    const table = new Array<number>(tableSize).fill(0);
    for (let i = 0; i < Math.min(tableSize, this.reftable.length); i++) table[i] = this.reftable[i];
    if (newOff) table[newIdx] = newOff;
    let missing = 0;
    for (let i = areaIdx; i < total; i++) if (!table[i]) missing++;
    const tableOffset = start + missing * cs;
    const end = tableOffset + tableClusters * cs;
    let blockOffset = start;
    for (let i = areaIdx; i < total; i++) {
      let block: Buffer;
      if (table[i]) {
        block = this.refblocks.get(table[i])!;
      } else {
        block = Buffer.alloc(cs);
        this.refblocks.set(blockOffset, block);
        this.file.write(blockOffset, block);
        table[i] = blockOffset;
        blockOffset += cs;
      }
      const first = i * this.perBlock * cs;
      if (first < end) {
        const j0 = first < start ? (start - first) / cs : 0;
        const j1 = Math.min((end - first) / cs, this.perBlock);
        for (let j = j0; j < j1; j++) setRefcountEntry(block, j, this.bits, 1);
      }
    }
    const buf = Buffer.alloc(tableSize * 8);
    table.forEach((off, i) => { if (off) buf.writeBigUInt64BE(BigInt(off), i * 8); });
    this.file.write(tableOffset, buf);
    const oldOffset = this.reftableOffset;
    const oldClusters = this.reftableClusters;
    this.reftable = table;
    this.reftableBuf = buf;
    this.reftableOffset = tableOffset;
    this.reftableClusters = tableClusters;
    this.updateRefcount(oldOffset / cs, oldClusters, -1);
    return end;
  }

  /** qcow2_alloc_clusters: `n` clusters with refcount 1; returns the first cluster index. */
  allocClusters(n: number): number {
    for (;;) {
      const c = this.allocNoref(n);
      if (this.updateRefcount(c, n, 1)) return c;
    }
  }

  /** qcow2_alloc_clusters_at: as many of the `n` clusters from `c` as are free (in a row). */
  allocClustersAt(c: number, n: number): number {
    for (;;) {
      let i = 0;
      while (i < n && this.refcount(c + i) === 0) i++;
      if (this.updateRefcount(c, i, 1)) return i;
    }
  }

  /** qcow2_grow_l1_table with an exact size, on an image without an L1 table yet. */
  growL1(entries: number): void {
    if (entries === 0) return;
    if (entries > Math.floor(INT_MAX / 8) || entries > Limit.MAX_L1_BYTES / 8) throw efbig();
    const c = this.allocClusters(Math.ceil((entries * 8) / this.cs));
    this.l1 = new Array(entries).fill(0);
    this.l1Buf = Buffer.alloc(entries * 8);
    this.l1Offset = c * this.cs;
    this.file.write(this.l1Offset, this.l1Buf);
    this.h.l1Size = entries;
    this.h.l1TableOffset = this.l1Offset;
  }

  /** get_cluster_table: the L2 table for a guest cluster, allocated (and hooked into L1) if missing. */
  l2Table(guestCluster: number): Buffer {
    const l1i = Math.floor(guestCluster / this.l2Entries);
    let t = this.l2.get(l1i);
    if (t) return t;
    const c = this.allocClusters(1);
    t = Buffer.alloc(this.cs);
    this.l2.set(l1i, t);
    this.file.write(c * this.cs, t);
    this.l1[l1i] = c * this.cs;
    const e = makeEntry(c * this.cs, true);
    this.l1Buf.writeUInt32BE(e.hi, l1i * 8);
    this.l1Buf.writeUInt32BE(e.lo, l1i * 8 + 4);
    return t;
  }

  /** Points `n` guest clusters from `g` at host clusters from `host` (preallocated: COPIED, no subcluster bits). */
  link(g: number, host: number, n: number): void {
    for (let i = 0; i < n; i++) {
      const t = this.l2Table(g + i);
      const pos = ((g + i) % this.l2Entries) * (this.extL2 ? 16 : 8);
      const e = makeEntry((host + i) * this.cs, true);
      t.writeUInt32BE(e.hi, pos);
      t.writeUInt32BE(e.lo, pos + 4);
    }
  }

  /**
   * preallocate_co: guest clusters in order, one L2 table's worth at a time
   * (the table first, then its clusters). Returns where the guest data ends
   * on the host (a data file offset when the data is external).
   */
  preallocate(size: number): number {
    const cs = this.cs;
    const clusters = Math.ceil(size / cs);
    const chunk = Math.floor(INT_MAX / cs);
    let g = 0;
    let end = 0;
    while (g < clusters) {
      const limit = Math.min(clusters, g + chunk);
      // One qcow2_alloc_host_offset() call: contiguous runs until the host side cannot continue.
      let hint = -1;
      while (g < limit) {
        this.l2Table(g);
        const n = Math.min(limit - g, this.l2Entries - (g % this.l2Entries));
        let got: number;
        let host: number;
        if (this.external) {
          host = g;
          got = n;
        } else if (hint < 0) {
          host = this.allocClusters(n);
          got = n;
        } else {
          host = hint;
          got = this.allocClustersAt(hint, n);
          if (got === 0) break;
        }
        this.link(g, host, got);
        g += got;
        hint = host + got;
        // The last cluster may hold only part of a cluster of guest data.
        end = hint * cs - (g === clusters ? clusters * cs - size : 0);
      }
    }
    return end;
  }

  /** qcow2_get_last_cluster: the last cluster in use. */
  lastCluster(): number {
    for (let c = Math.ceil(this.file.length / this.cs) - 1; c >= 0; c--) if (this.refcount(c) > 0) return c;
    return -1;
  }
}

/** The header QEMU writes for these options (before the L1 table exists). */
function initialHeader(o: Required<Pick<Qcow2LayoutOptions, 'version' | 'clusterSize' | 'refcountBits'>> & Qcow2LayoutOptions): Qcow2Header {
  let incompatible = 0n;
  let compatible = 0n;
  let autoclear = 0n;
  if (o.lazyRefcounts) compatible |= Compat.LAZY_REFCOUNTS;
  if (o.dataFile !== undefined) incompatible |= Incompat.DATA_FILE;
  if (o.dataFileRaw) autoclear |= Autoclear.DATA_FILE_RAW;
  if (o.compressionType === 'zstd') incompatible |= Incompat.COMPRESSION;
  if (o.extendedL2) incompatible |= Incompat.EXTL2;
  return {
    version: o.version,
    backingFileOffset: 0, backingFileSize: 0,
    clusterBits: Math.log2(o.clusterSize),
    size: 0, cryptMethod: 0, l1Size: 0, l1TableOffset: 0,
    refcountTableOffset: o.clusterSize, refcountTableClusters: 1,
    nbSnapshots: 0, snapshotsOffset: 0,
    incompatible, compatible, autoclear,
    refcountOrder: Math.log2(o.refcountBits),
    headerLength: o.version === 3 ? V3_HEADER_LENGTH : 72,
    compressionType: o.compressionType === 'zstd' ? 1 : 0,
    extraFields: Buffer.alloc(o.version === 3 ? V3_HEADER_LENGTH - 105 : 0),
    extensions: [], featureNames: [],
  };
}

/** Bytes an extension takes in the header (with its padding). */
const extBytes = (len: number) => 8 + Math.ceil(len / 8) * 8;

/** Sets the header extensions QEMU writes; throws ENOSPC when they do not fit in the first cluster. */
function setExtensions(h: Qcow2Header, o: Qcow2LayoutOptions, withBacking: boolean): void {
  const cs = 2 ** h.clusterBits;
  const exts: HeaderExtension[] = [];
  let used = h.headerLength;
  if (o.dataFile !== undefined) {
    exts.push({ type: ExtType.DATA_FILE, data: Buffer.from(o.dataFile) });
    h.dataFile = o.dataFile;
  }
  if (withBacking && o.backingFormat !== undefined) {
    exts.push({ type: ExtType.BACKING_FORMAT, data: Buffer.from(o.backingFormat) });
    h.backingFormat = o.backingFormat;
  }
  if (h.crypto) {
    const b = Buffer.alloc(16);
    b.writeBigUInt64BE(BigInt(h.crypto.offset), 0);
    b.writeBigUInt64BE(BigInt(h.crypto.length), 8);
    exts.push({ type: ExtType.CRYPTO, data: b });
  }
  if (h.version === 3 && cs >= FEATURE_TABLE_MIN_CLUSTER) {
    exts.push({ type: ExtType.FEATURE_TABLE, data: featureTable(DEFAULT_FEATURE_NAMES) });
    h.featureNames = DEFAULT_FEATURE_NAMES;
  }
  for (const e of exts) used += extBytes(e.data.length);
  used += 8;
  if (withBacking && o.backingFile !== undefined) {
    used += Buffer.byteLength(o.backingFile);
    h.backingFile = o.backingFile;
  }
  if (used > cs) throw new ModelError('ENOSPC', ENOSPC_TEXT);
  h.extensions = exts;
}

/** Fills in defaults the way qcow2_co_create does (the caller has validated the options). */
export function layoutDefaults(o: Qcow2LayoutOptions): Required<Pick<Qcow2LayoutOptions, 'version' | 'clusterSize' | 'refcountBits' | 'preallocation'>> & Qcow2LayoutOptions {
  const preallocation = o.dataFileRaw && (o.preallocation ?? 'off') === 'off' ? 'metadata' : o.preallocation ?? 'off';
  return { ...o, version: o.version ?? 3, clusterSize: o.clusterSize ?? DEFAULT_CLUSTER_SIZE, refcountBits: o.refcountBits ?? 16, preallocation };
}

/**
 * The complete metadata of a new image. Throws LayoutError with QEMU's
 * message when the image cannot be made (an L1 or refcount table past
 * QEMU's limits, header extensions that do not fit). A backing file that
 * cannot be recorded is reported in `error` instead: QEMU records it last,
 * so the image is still written (without it) before the error is reported.
 */
export function qcow2Layout(opts: Qcow2LayoutOptions): Qcow2Layout {
  const o = layoutDefaults(opts);
  const cs = o.clusterSize;
  const h = initialHeader(o);
  const extL2 = o.extendedL2 === true;
  const l2Entries = cs / (extL2 ? 16 : 8);
  const external = o.dataFile !== undefined;
  const m = new ImageModel(h, o.refcountBits, l2Entries, extL2, external);
  const step = <T>(fail: (e: ModelError) => string, fn: () => T): T => {
    try {
      return fn();
    } catch (e) {
      if (e instanceof ModelError) throw new LayoutError(e.code, fail(e));
      throw e;
    }
  };

  // The header, refcount table and first refcount block take clusters 0-2.
  m.allocClusters(3);
  step((e) => `Could not write qcow2 header: ${e.text}`, () => setExtensions(h, o, false));

  // blk_truncate(size): the L1 table, then preallocation.
  const resize = (what: string) => (e: ModelError) => `Could not resize image: ${what}: ${e.text}`;
  step(resize('Failed to grow the L1 table'), () => m.growL1(l1EntriesFor(o.size, cs, extL2)));
  h.size = o.size;
  let fileLength = 0;
  let filePrealloc: Qcow2Layout['filePrealloc'];
  let dataFile: Qcow2Layout['dataFile'];
  const mode = o.preallocation;
  if (mode === 'off') {
    if (external) dataFile = { length: o.size, mode: 'off', growOnly: false };
  } else if (mode === 'metadata' || external) {
    const end = step(resize('Allocating clusters failed'), () => m.preallocate(o.size));
    // The rest of the last (sub)cluster is written with zeroes (QEMU's copy-on-write of its tail).
    const sub = extL2 ? cs / 32 : cs;
    const tailEnd = Math.ceil(end / sub) * sub;
    const zeroTail = tailEnd > end ? { offset: end, length: tailEnd - end } : undefined;
    if (external) {
      dataFile = { length: end, mode: mode === 'metadata' ? 'off' : mode, growOnly: true, zeroTail };
    } else {
      if (zeroTail) m.file.write(zeroTail.offset, Buffer.alloc(zeroTail.length));
      fileLength = end;
    }
  } else {
    // falloc / full: one data area after a refcount area that covers it and the L2 tables.
    const dataClusters = Math.ceil(o.size / cs);
    const l2Tables = Math.ceil(dataClusters / l2Entries) + 1;
    const start = step(resize('Failed to resize refcount structures'),
      () => m.refcountArea((m.lastCluster() + 1) * cs, dataClusters + l2Tables, true, 0, 0));
    step(resize('Failed to allocate data clusters'), () => {
      if (m.allocClustersAt(start / cs, dataClusters) !== dataClusters) throw new ModelError('EIO', EIO_TEXT);
    });
    fileLength = start + dataClusters * cs;
    // The file is extended (and preallocated) before the L2 tables are written: they may land past it.
    filePrealloc = { from: m.file.length, to: fileLength, mode };
    step(resize('Mapping clusters failed'), () => m.link(0, start / cs, dataClusters));
  }

  // The backing file (and its format) is recorded next.
  let error: LayoutError | undefined;
  let withBacking = false;
  if (o.backingFile !== undefined) {
    try {
      if (Buffer.byteLength(o.backingFile) > Limit.MAX_BACKING_NAME) throw new ModelError('EINVAL', EINVAL_TEXT);
      const backed: Qcow2Header = { ...h, extensions: [...h.extensions] };
      setExtensions(backed, o, true);
      Object.assign(h, backed);
      withBacking = true;
    } catch (e) {
      if (!(e instanceof ModelError)) throw e;
      error = new LayoutError(e.code, `Could not assign backing file '${o.backingFile}' with format '${o.backingFormat ?? '(null)'}': ${e.text}`);
    }
  }
  // Then encryption (qcow2_crypto_hdr_init_func: the LUKS header's clusters, zero-filled).
  if (o.encryption && !error) {
    h.cryptMethod = o.encryption.method;
    const bytes = o.encryption.headerBytes;
    if (bytes) {
      const n = Math.ceil(bytes / cs);
      const at = step((e) => `Cannot allocate cluster for LUKS header size ${bytes}: ${e.text}`, () => m.allocClusters(n)) * cs;
      m.file.write(at, Buffer.alloc(n * cs));
      h.crypto = { offset: at, length: bytes };
      step((e) => `Could not write encryption header: ${e.text}`, () => setExtensions(h, o, withBacking));
    }
  }
  h.refcountTableOffset = m.reftableOffset;
  h.refcountTableClusters = m.reftableClusters;
  m.file.write(0, serializeHeader(h));
  return { writes: m.file.runs(), fileLength: Math.max(fileLength, m.file.length), filePrealloc, dataFile, header: h, error };
}
