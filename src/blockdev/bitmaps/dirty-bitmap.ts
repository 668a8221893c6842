/**
 * A named dirty bitmap of a node, in bytes: which granules of the node were
 * written while it was recording. QEMU's BdrvDirtyBitmap state (recording,
 * busy, persistent, inconsistent, read-only) and its checks with QEMU's
 * error texts live here; the bits live in a SparseBitmap of granules.
 */
import { BlockError } from '../../util/errors.ts';
import { SparseBitmap } from './sparse-bitmap.ts';

/** QEMU's limits: 512 B .. 2 GiB granularity (a power of two), names up to 1023 bytes. */
export const MIN_GRANULARITY = 512;
export const MAX_GRANULARITY = 2 ** 31;
export const MAX_NAME_SIZE = 1023;
/** A dirty area reported in one piece is at most this long (QEMU's INT32_MAX cap). */
const MAX_DIRTY_RUN = 0x7fffffff;
/** Runs handed out per runs() call. */
const MAX_RUNS = 2048;

export const isPowerOfTwo = (n: number) => Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;

export function checkGranularity(g: number): void {
  if (g < MIN_GRANULARITY || !isPowerOfTwo(g) || g > MAX_GRANULARITY) {
    throw new BlockError('EINVAL', 'Granularity must be power of 2 and at least 512');
  }
}

/** bdrv_dirty_bitmap_check's flags. */
export const Check = { BUSY: 1, RO: 2, INCONSISTENT: 4 } as const;
export const CHECK_DEFAULT = Check.BUSY | Check.RO | Check.INCONSISTENT;
export const CHECK_ALLOW_RO = Check.BUSY | Check.INCONSISTENT;

export interface Run { length: number; dirty: boolean }

export class DirtyBitmap {
  readonly bits: SparseBitmap;
  recording = true;
  persistent = false;
  /** Loaded from an image where it was left in use: its contents cannot be trusted. */
  inconsistent = false;
  /** Loaded from an image that is read-only now (QEMU's readonly bitmap): it may not change. */
  get readOnly(): boolean { return this.readOnlySource?.() ?? false; }
  /** Where the read-only state comes from (the image's store); none: never read-only. */
  readOnlySource?: () => boolean;
  /** Users that may hold it (an NBD export, a job): each says whether it still does. */
  readonly users = new Set<() => boolean>();

  constructor(readonly name: string, readonly granularity: number, private sizeBytes: number) {
    checkGranularity(granularity);
    this.bits = new SparseBitmap(Math.ceil(sizeBytes / granularity));
  }

  get size(): number { return this.sizeBytes; }
  get busy(): boolean {
    for (const holds of this.users) {
      if (holds()) return true;
      this.users.delete(holds);
    }
    return false;
  }

  /** Dirty bytes, counting whole granules as QEMU does. */
  count(): number { return this.bits.count() * this.granularity; }

  /** Marks [offset, offset+length) dirty (whole granules). */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const g0 = Math.floor(offset / this.granularity);
    const g1 = Math.ceil((offset + length) / this.granularity);
    this.bits.set(g0, g1);
  }

  /** Clears every granule that lies wholly or partly in [offset, offset+length). */
  reset(offset: number, length: number): void {
    this.bits.reset(Math.floor(offset / this.granularity), Math.ceil((offset + length) / this.granularity));
  }

  clear(): void { this.bits.clear(); }

  isDirty(offset: number): boolean { return this.bits.get(Math.floor(offset / this.granularity)); }

  resize(size: number): void {
    this.sizeBytes = size;
    this.bits.resize(Math.ceil(size / this.granularity));
  }

  /** ORs `src` into this bitmap; granularities may differ (a source granule dirties every granule it touches). */
  merge(src: DirtyBitmap): void {
    if (src.granularity === this.granularity) { this.bits.or(src.bits); return; }
    src.bits.forEachRun((s, e) => this.mark(s * src.granularity, Math.min(e * src.granularity, src.size) - s * src.granularity));
  }

  /** Dirty byte ranges [start, end) within [offset, offset+length), in order. */
  *extents(offset = 0, length = this.sizeBytes - offset): Generator<[number, number]> {
    const end = Math.min(offset + length, this.sizeBytes);
    const g = this.granularity;
    let pos = offset;
    while (pos < end) {
      const s = this.bits.nextSet(Math.floor(pos / g), Math.ceil(end / g));
      if (s < 0) return;
      const e = this.bits.nextClear(s, Math.ceil(end / g));
      const a = Math.max(pos, s * g);
      const b = Math.min(end, e * g);
      yield [a, b];
      pos = b;
    }
  }

  /** Runs covering a prefix of [offset, offset+length): what the NBD dirty-bitmap context reports. */
  runs(offset: number, length: number): Run[] {
    const out: Run[] = [];
    const end = Math.min(offset + length, this.sizeBytes);
    let pos = offset;
    for (const [a, b] of this.extents(offset, end - offset)) {
      if (a > pos) out.push({ length: a - pos, dirty: false });
      for (let p = a; p < b; p += MAX_DIRTY_RUN) out.push({ length: Math.min(MAX_DIRTY_RUN, b - p), dirty: true });
      pos = b;
      if (out.length >= MAX_RUNS) return out;
    }
    if (end > pos) out.push({ length: end - pos, dirty: false });
    return out;
  }

  /** bdrv_dirty_bitmap_check: refuses a use the bitmap's state forbids, with QEMU's words. */
  check(flags: number): void {
    if (flags & Check.BUSY && this.busy) {
      throw new BlockError('EBUSY', `Bitmap '${this.name}' is currently in use by another operation and cannot be used`);
    }
    if (flags & Check.RO && this.readOnly) {
      throw new BlockError('EPERM', `Bitmap '${this.name}' is readonly and cannot be modified`);
    }
    if (flags & Check.INCONSISTENT && this.inconsistent) {
      throw new BlockError('EINVAL', `Bitmap '${this.name}' is inconsistent and cannot be used`);
    }
  }

  /** BlockDirtyInfo as query-named-block-nodes shows it. */
  info(): Record<string, unknown> {
    const out: Record<string, unknown> = {
      name: this.name, count: this.count(), granularity: this.granularity,
      recording: this.recording, busy: this.busy, persistent: this.persistent,
    };
    if (this.inconsistent) out.inconsistent = true;
    return out;
  }
}
