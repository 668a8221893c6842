/**
 * The byte ring of a `ringbuf` (or `memory`) chardev, with QEMU's semantics
 * (chardev/char-ringbuf.c): it keeps the last `size` bytes written; a write
 * larger than what is free overwrites the oldest unread bytes; a read takes
 * the oldest. `size` is a power of two or 0 (qsd accepts 0: nothing is kept).
 *
 * Memory grows with what is unread, not with `size` (qsd allocates `size`
 * bytes at once), so a large ring costs nothing until it fills.
 */
export class RingBuffer {
  private buf = Buffer.alloc(0);
  /** Unread bytes are buf[start, end). */
  private start = 0;
  private end = 0;

  constructor(readonly size: number) {}

  /** Whether `size` is one QEMU accepts: a power of two as a 64-bit unsigned number, or 0 (size & (size - 1) == 0). */
  static validSize(size: number | bigint): boolean {
    const s = BigInt.asUintN(64, BigInt(size));
    return (s & BigInt.asUintN(64, s - 1n)) === 0n;
  }

  get count(): number { return this.end - this.start; }

  write(data: Uint8Array): void {
    if (this.size === 0) return;
    // Only the last `size` bytes of this write can survive it.
    const src = data.length > this.size ? data.subarray(data.length - this.size) : data;
    const keep = Math.min(this.count, this.size - src.length);
    if (this.end + src.length > this.buf.length) {
      const next = Buffer.alloc(Math.min(this.size, Math.max(keep + src.length, 2 * this.buf.length, 256)) + 0);
      this.buf.copy(next, 0, this.end - keep, this.end);
      this.buf = next;
      this.start = 0;
      this.end = keep;
    } else {
      this.start = this.end - keep;
    }
    this.buf.set(src, this.end);
    this.end += src.length;
  }

  /** Takes up to `n` of the oldest unread bytes. */
  read(n: number): Buffer {
    const len = Math.min(n, this.count);
    const out = Buffer.from(this.buf.subarray(this.start, this.start + len));
    this.start += len;
    if (this.start === this.end) this.start = this.end = 0;
    return out;
  }
}
