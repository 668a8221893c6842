/**
 * One VMDK extent (QEMU's VmdkExtent): a flat extent (a byte range of its
 * file) or a sparse one (a grain directory of 32-bit sector numbers of
 * grain tables, whose entries are grain sector numbers: 0 unallocated, 1 a
 * zeroed grain where the header has the zeroed-grain flag). Lookup and
 * allocation as QEMU's get_cluster_offset: a new grain goes at the end of
 * the file, its parts outside the write are copied from the backing file or
 * zeroed, then the grain table entry is written, in the redundant table
 * too, and flushed. Compressed (streamOptimized) grains are a marker (LBA,
 * size) and a zlib stream; they are written only whole, appended.
 */
import { inflate, deflate } from 'node:zlib';
import { BlockError } from '../../../util/errors.ts';
import { readClipped, writeGrowing } from '../../child-io.ts';
import type { BlockNode } from '../../node.ts';
import { SECTOR, type SparseGeometry } from './header.ts';

export const GTE_ZEROED = 1;
const MAX_EXTENT_SECTORS = 2 ** 32;
const L2_CACHE_SIZE = 16;
/** QEMU's BDRV_MAX_LENGTH (INT64_MAX aligned down to its largest alignment). */
const MAX_LENGTH = (1n << 63n) - (1n << 30n);

export type Lookup =
  | { kind: 'ok'; clusterOffset: number; meta?: L2Meta; fresh?: boolean }
  | { kind: 'unalloc' | 'zeroed' | 'error'; meta?: L2Meta };

export interface L2Meta { l1Index: number; l2Index: number; l2Offset: number; table: Buffer }

/** What allocation needs from the disk: the backing node (COW source), checked for a matching CID. */
export interface CowSource {
  /** The backing node and whether its CID matches; undefined when there is none. */
  backing(): Promise<{ node: BlockNode; valid: boolean } | undefined>;
}

const zlibRun = (fn: typeof inflate, input: Buffer, opts: object): Promise<Buffer | undefined> =>
  new Promise((resolve) => fn(input, opts, (err, out) => resolve(err ? undefined : out)));

export class VmdkExtent {
  /** First disk sector of the extent. */
  start = 0;
  flatStart = 0;
  l1: Uint32Array = new Uint32Array(0);
  l1Backup?: Uint32Array;
  nextClusterSector: number;
  readonly clusterSectors: number;
  private readonly l2Cache = new Map<number, Buffer>();

  /** type: the extent line's (QEMU shows "" for a monolithic image's own extent). */
  constructor(readonly file: BlockNode, public type: string, readonly flat: boolean, readonly sectors: number,
    readonly g?: SparseGeometry) {
    this.clusterSectors = flat ? sectors : Number(g!.clusterSectors);
    const nb = Math.ceil(file.length() / SECTOR);
    this.nextClusterSector = this.clusterSectors > 0 ? Math.ceil(nb / this.clusterSectors) * this.clusterSectors : nb;
  }

  get end(): number { return this.start + this.sectors; }
  get compressed(): boolean { return this.g?.compressed ?? false; }
  get clusterBytes(): number { return this.clusterSectors * SECTOR; }
  /** Offset of a disk byte within its cluster (QEMU's vmdk_find_offset_in_cluster). */
  inCluster(offset: number): number { return (offset - this.start * SECTOR) % this.clusterBytes; }

  /** QEMU's vmdk_init_tables: the grain directory and its redundant copy (offsets and size checked by the caller). */
  async loadTables(): Promise<void> {
    const g = this.g!;
    const read = async (offset: bigint, what: string): Promise<Uint32Array> => {
      const raw = Buffer.alloc(g.l1Size * 4);
      // QEMU's request checks: a negative offset or one past BDRV_MAX_LENGTH fails; past the end of the file reads zeroes.
      if (offset < 0n || offset + BigInt(raw.length) > MAX_LENGTH) {
        throw new BlockError('EIO', `Could not read ${what} from extent '${fileName(this.file)}': Input/output error`);
      }
      if (offset < BigInt(this.file.length())) await readClipped(this.file, Number(offset), raw);
      const t = new Uint32Array(g.l1Size);
      for (let i = 0; i < g.l1Size; i++) t[i] = raw.readUInt32LE(i * 4);
      return t;
    };
    this.l1 = await read(g.l1Offset, 'l1 table');
    if (g.l1BackupOffset !== 0n) this.l1Backup = await read(g.l1BackupOffset, 'l1 backup table');
  }

  /** QEMU's get_cluster_offset without allocation. `offset` is a disk byte offset inside the extent. */
  async lookup(offset: number): Promise<Lookup> {
    if (this.flat) return { kind: 'ok', clusterOffset: this.flatStart };
    const g = this.g!;
    const rel = offset - this.start * SECTOR;
    const l1EntrySectors = g.l2Size * this.clusterSectors;
    const l1Index = Math.floor(Math.floor(rel / SECTOR) / l1EntrySectors);
    if (l1Index >= g.l1Size) return { kind: 'error' };
    const l2Offset = this.l1[l1Index];
    if (!l2Offset) return { kind: 'unalloc' };
    const table = await this.l2Table(l2Offset);
    if (!table) return { kind: 'error' };
    const l2Index = Math.floor(Math.floor(rel / SECTOR) / this.clusterSectors) % g.l2Size;
    const meta = { l1Index, l2Index, l2Offset, table };
    const sector = table.readUInt32LE(l2Index * 4);
    if (g.hasZeroGrain && sector === GTE_ZEROED) return { kind: 'zeroed', meta };
    if (!sector) return { kind: 'unalloc', meta };
    return { kind: 'ok', clusterOffset: sector * SECTOR, meta };
  }

  private async l2Table(l2Offset: number): Promise<Buffer | undefined> {
    let t = this.l2Cache.get(l2Offset);
    if (t) return t;
    t = Buffer.alloc(this.g!.l2Size * 4);
    try {
      await readClipped(this.file, l2Offset * SECTOR, t);
    } catch {
      return undefined;
    }
    if (this.l2Cache.size >= L2_CACHE_SIZE) this.l2Cache.delete(this.l2Cache.keys().next().value!);
    this.l2Cache.set(l2Offset, t);
    return t;
  }

  /**
   * QEMU's get_cluster_offset with allocation for a grain found unallocated
   * or zeroed (`found`): a new grain at the end, [skipStart, skipEnd) left
   * for the caller's data, the rest from the backing file (not over a
   * zeroed grain) or zeroes. Returns the grain's byte offset, or undefined
   * (QEMU's VMDK_ERROR).
   */
  async allocate(offset: number, found: Lookup, skipStart: number, skipEnd: number, cow: CowSource): Promise<number | undefined> {
    if (this.nextClusterSector >= MAX_EXTENT_SECTORS) return undefined;
    const clusterSector = this.nextClusterSector;
    this.nextClusterSector += this.clusterSectors;
    const at = clusterSector * SECTOR;
    const cb = this.clusterBytes;
    const base = offset - (offset % cb);
    const b = await cow.backing();
    const fromBacking = b !== undefined && found.kind !== 'zeroed';
    if (b && !b.valid) return undefined;
    const whole = Buffer.alloc(cb);
    const fill = async (from: number, to: number) => {
      if (from >= to) return;
      if (fromBacking) {
        const part = whole.subarray(from, to);
        const n = Math.max(0, Math.min(part.length, b.node.length() - (base + from)));
        try {
          if (n > 0) await b.node.read(base + from, part.subarray(0, n));
        } catch {
          return false;
        }
      }
      await writeGrowing(this.file, at + from, whole.subarray(from, to));
      return true;
    };
    if (await fill(0, skipStart) === false) return undefined;
    if (await fill(skipEnd, cb) === false) return undefined;
    return at;
  }

  /** QEMU's vmdk_L2update: the grain table entry, then the redundant table's, flushed; the cached table follows. */
  async l2Update(meta: L2Meta, value: number): Promise<void> {
    const v = Buffer.alloc(4);
    v.writeUInt32LE(value >>> 0);
    await writeGrowing(this.file, meta.l2Offset * SECTOR + meta.l2Index * 4, v);
    if (this.l1Backup) await writeGrowing(this.file, this.l1Backup[meta.l1Index] * SECTOR + meta.l2Index * 4, v);
    await this.file.flush();
    v.copy(meta.table, meta.l2Index * 4);
  }

  /** QEMU's vmdk_read_extent. */
  async read(clusterOffset: number, inCluster: number, out: Buffer): Promise<void> {
    if (!this.compressed) {
      await readClipped(this.file, clusterOffset + inCluster, out);
      return;
    }
    const cb = this.clusterBytes;
    const buf = Buffer.alloc(cb * 2);
    await readClipped(this.file, clusterOffset, buf);
    let data = buf;
    let len = cb;
    if (this.g!.hasMarker) {
      len = buf.readUInt32LE(8);
      data = buf.subarray(12);
    }
    if (!len || len > buf.length) throw new BlockError('EINVAL', 'Invalid argument');
    const plain = await zlibRun(inflate, data.subarray(0, len), { maxOutputLength: cb });
    if (!plain || inCluster + out.length > plain.length) throw new BlockError('EINVAL', 'Invalid argument');
    plain.copy(out, 0, inCluster, inCluster + out.length);
  }

  /** QEMU's vmdk_write_extent: data in place, or a whole grain compressed behind its marker. */
  async write(clusterOffset: number, inCluster: number, data: Buffer, diskOffset: number): Promise<void> {
    let out = data;
    if (this.compressed) {
      const cb = this.clusterBytes;
      if (inCluster || data.length > cb || (data.length < cb && diskOffset + data.length !== this.end * SECTOR) || !this.g!.hasMarker) {
        throw new BlockError('EINVAL', 'Invalid argument');
      }
      const z = await zlibRun(deflate, data, {});
      if (!z || z.length === 0 || z.length > 2 * cb) throw new BlockError('EINVAL', 'Invalid argument');
      out = Buffer.alloc(12 + z.length);
      out.writeBigUInt64LE(BigInt(Math.floor(diskOffset / SECTOR)), 0);
      out.writeUInt32LE(z.length, 8);
      z.copy(out, 12);
    }
    const at = clusterOffset + inCluster;
    const endSector = Math.ceil((at + out.length) / SECTOR);
    try {
      await writeGrowing(this.file, at, out);
    } finally {
      this.nextClusterSector = this.compressed ? endSector : Math.max(this.nextClusterSector, endSector);
    }
  }
}

/** A node's filename as QEMU's bs->filename (its driver's, or the filename option). */
export function fileName(n: BlockNode): string {
  return n.ops.filename?.() ?? (n.options.filename as string | undefined) ?? '';
}
