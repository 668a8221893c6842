/**
 * Reused copy buffers for the copying jobs and filters (mirror, backup,
 * stream, commit, copy-before-write): a 1 GiB copy in 1 MiB units would
 * otherwise allocate (and collect) a thousand large buffers. A buffer is
 * handed back once the write that used it has completed. (The NBD data
 * path has its own size-class pool, src/util/buffer-pool.ts.)
 */
export class CopyBufferPool {
  private readonly free: Buffer[] = [];

  constructor(readonly size: number, private readonly keep = 32) {}

  /** A buffer of exactly `length` bytes (a view of a pooled one when it fits). */
  get(length: number): Buffer {
    if (length > this.size) return Buffer.allocUnsafe(length);
    const b = this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
    return b.subarray(0, length);
  }

  /** Returns a buffer from get(); views of pooled buffers go back to the pool. */
  put(buf: Buffer): void {
    if (buf.buffer.byteLength !== this.size || buf.byteOffset !== 0 || this.free.length >= this.keep) return;
    this.free.push(Buffer.from(buf.buffer, 0, this.size));
  }
}

/** The pool the copying jobs share (1 MiB buffers). */
export const copyBuffers = new CopyBufferPool(1024 * 1024);

/**
 * Bounce buffers for encryption (the luks driver and encrypted qcow2): the
 * caller's data is never encrypted in place, and a fresh 1 MiB buffer per
 * write costs a copy into new pages plus the collector's time (measured: a
 * third of the loop's time on qcow2+LUKS write-1m before this pool).
 */
export const cryptBuffers = new CopyBufferPool(1024 * 1024);
