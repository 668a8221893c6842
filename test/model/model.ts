/**
 * The reference model of a block device: a plain Buffer that every guest
 * operation changes as the block layer must (writes copy, zeroes zero,
 * growing appends zeroes). Discard leaves each byte either as it was or zero
 * (QEMU drops unaligned heads and tails, qcow2 zeroes whole clusters): the
 * runner reads the range back, checks that, and adopts what it read.
 */
export class DiskModel {
  data: Buffer;

  constructor(size: number) {
    this.data = Buffer.alloc(size);
  }

  get size(): number { return this.data.length; }

  write(offset: number, buf: Buffer): void { buf.copy(this.data, offset); }

  zero(offset: number, length: number): void { this.data.fill(0, offset, offset + length); }

  grow(size: number): void {
    if (size <= this.data.length) return;
    const next = Buffer.alloc(size);
    this.data.copy(next);
    this.data = next;
  }

  snapshot(): Buffer { return Buffer.from(this.data); }

  /** The first offset in [offset, offset+got.length) where `got` differs from the model, or -1. */
  firstDifference(offset: number, got: Buffer): number {
    const want = this.data.subarray(offset, offset + got.length);
    if (want.equals(got)) return -1;
    for (let i = 0; i < got.length; i++) if (got[i] !== want[i]) return offset + i;
    return -1;
  }

  /** After a discard of [offset, offset+got.length): each byte must be the old one or zero; the model takes `got`. Returns the first bad offset or -1. */
  adoptDiscarded(offset: number, got: Buffer): number {
    for (let i = 0; i < got.length; i++) {
      const g = got[i]!;
      if (g !== 0 && g !== this.data[offset + i]) return offset + i;
    }
    got.copy(this.data, offset);
    return -1;
  }
}

/** The bytes a write with pattern `pat` puts at [offset, offset+length): position-dependent, so a misplaced or shifted write shows. */
export function patternBytes(pat: number, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) {
    const p = offset + i;
    b[i] = ((pat * 131) ^ (p >>> 9) ^ (p * 7)) & 0xff || 1;
  }
  return b;
}
