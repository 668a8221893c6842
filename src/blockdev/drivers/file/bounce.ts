/**
 * A small pool of page-aligned buffers for O_DIRECT I/O whose caller's memory
 * is not aligned. Buffers come in power-of-two sizes from 4 KiB to
 * BOUNCE_MAX; a few of each size are kept for reuse, so steady-state I/O
 * allocates nothing.
 */
import { allocAligned } from '../../../platform/native.ts';

/** Largest bounce buffer; larger requests are bounced in pieces of this size. */
export const BOUNCE_MAX = 1024 * 1024;
const MIN_SHIFT = 12;
const MAX_SHIFT = 20;
const KEEP_PER_SIZE = 4;
/** Page alignment satisfies every logical block size up to 4 KiB. */
const MEM_ALIGN = 4096;

export class BouncePool {
  private readonly free: Buffer[][] = [];

  /** A buffer of at least `size` (≤ BOUNCE_MAX) bytes, page-aligned. Contents are stale: the caller fills it. */
  take(size: number): Buffer {
    const shift = sizeShift(size);
    const list = this.free[shift];
    return list?.pop() ?? allocAligned(1 << shift, MEM_ALIGN);
  }

  give(buf: Buffer): void {
    const shift = Math.log2(buf.length);
    const list = (this.free[shift] ??= []);
    if (list.length < KEEP_PER_SIZE) list.push(buf);
  }

  /** Buffers currently kept for reuse (for tests). */
  get kept(): number {
    return this.free.reduce((n, l) => n + (l?.length ?? 0), 0);
  }
}

function sizeShift(size: number): number {
  let shift = MIN_SHIFT;
  while (shift < MAX_SHIFT && 1 << shift < size) shift++;
  return shift;
}
