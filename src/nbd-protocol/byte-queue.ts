/**
 * The bytes of a stream that arrived in chunks of any size and are not yet
 * parsed. Every incremental parser of this folder reads from one: a message
 * is decoded once all its bytes are here, from the chunk itself when it lies
 * in one (the usual case: no copy), else from a copy.
 *
 * Chunks pushed are referenced, not copied: the caller must not reuse their
 * memory until they are consumed, or must call retain() first.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private first = 0; // index of the first unconsumed chunk
  private pos = 0; // offset into chunks[first]
  private available = 0;
  private readonly scratch: Buffer;
  /** Where the bytes returned by the last read()/peek() start in the buffer returned. */
  at = 0;

  /** `scratchSize`: the most bytes read()/peek() return at once (fixed-size headers). */
  constructor(scratchSize = 32) {
    this.scratch = Buffer.alloc(scratchSize);
  }

  /** Bytes received and not yet consumed. */
  get length(): number { return this.available; }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.available += chunk.length;
  }

  /**
   * Consumes `n` bytes (at most the scratch size; the caller checked `length`)
   * and returns a buffer holding them from `this.at`: the chunk they lie in,
   * or the scratch buffer (valid until the next read or peek) when they span chunks.
   */
  read(n: number): Buffer {
    const head = this.chunks[this.first];
    if (head.length - this.pos >= n) {
      this.at = this.pos;
      this.advance(n);
      return head;
    }
    const out = this.scratch.subarray(0, n);
    let got = 0;
    while (got < n) got += this.copyTo(out, got, n - got);
    this.at = 0;
    return this.scratch;
  }

  /** Like read() without consuming: to look at a header before its whole message is here. */
  peek(n: number): Buffer {
    const head = this.chunks[this.first];
    if (head.length - this.pos >= n) {
      this.at = this.pos;
      return head;
    }
    let got = 0;
    for (let i = this.first, p = this.pos; got < n; i++, p = 0) {
      const c = this.chunks[i];
      const k = Math.min(n - got, c.length - p);
      c.copy(this.scratch, got, p, p + k);
      got += k;
    }
    this.at = 0;
    return this.scratch;
  }

  /** The next `n` bytes as a view of the chunk they lie in, consumed; undefined (nothing consumed) if they span chunks. */
  view(n: number): Buffer | undefined {
    const head = this.chunks[this.first];
    if (!head || head.length - this.pos < n) return undefined;
    const v = head.subarray(this.pos, this.pos + n);
    this.advance(n);
    return v;
  }

  /** Consumes `n` bytes (the caller checked `length`) as one buffer of exactly that size: a view when they lie in one chunk, else a copy. */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const v = this.view(n);
    if (v) return v;
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) got += this.copyTo(out, got, n - got);
    return out;
  }

  /** Consumes up to `max` bytes into dst at `at`; returns how many. */
  copyTo(dst: Buffer, at: number, max = dst.length - at): number {
    let copied = 0;
    while (copied < max && this.available > 0) {
      const head = this.chunks[this.first];
      const n = Math.min(max - copied, head.length - this.pos);
      head.copy(dst, at + copied, this.pos, this.pos + n);
      this.advance(n);
      copied += n;
    }
    return copied;
  }

  /** Drops up to `n` bytes without reading them; returns how many. */
  discard(n: number): number {
    let skipped = 0;
    while (skipped < n && this.available > 0) {
      const k = Math.min(n - skipped, this.chunks[this.first].length - this.pos);
      this.advance(k);
      skipped += k;
    }
    return skipped;
  }

  /** Copies what is not consumed into a buffer of the queue's own, so the chunks pushed so far may be reused. */
  retain(): void {
    if (this.available === 0) return;
    const rest = Buffer.allocUnsafe(this.available);
    let got = 0;
    while (this.available > 0) got += this.copyTo(rest, got, rest.length - got);
    this.chunks = [rest];
    this.first = 0;
    this.pos = 0;
    this.available = rest.length;
  }

  /** Drops everything buffered. */
  clear(): void {
    this.chunks = [];
    this.first = 0;
    this.pos = 0;
    this.available = 0;
  }

  private advance(n: number): void {
    this.pos += n;
    this.available -= n;
    const head = this.chunks[this.first];
    if (this.pos === head.length) {
      this.chunks[this.first] = undefined as unknown as Buffer; // drop the reference
      this.first++;
      this.pos = 0;
      if (this.first === this.chunks.length) {
        this.chunks = [];
        this.first = 0;
      } else if (this.first > 64) {
        this.chunks = this.chunks.slice(this.first);
        this.first = 0;
      }
    }
  }
}
