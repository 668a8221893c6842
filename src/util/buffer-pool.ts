/**
 * Recycles the large buffers of the data path (READ data, assembled WRITE
 * payloads). Allocating a fresh megabyte per request makes the garbage
 * collector the bottleneck; a buffer goes back to the pool only when its
 * request is over (the write reached the node, the reply reached the
 * socket), so nothing is reused while still in use.
 *
 * Buffers come in power-of-two classes from 4 KiB to 32 MiB; smaller
 * requests use Node's own small-buffer pool (allocUnsafe). A 4 KiB read
 * is the most common request of all, and a fresh ArrayBuffer for each one
 * costs more than the read itself. At most `maxPooledBytes` are kept idle.
 * Pooled memory is not zeroed: callers send only bytes a driver filled or
 * bytes received from the client.
 */
const MIN_CLASS = 4 * 1024;

/**
 * Marks a lent ArrayBuffer with the pool it came from (a property rather
 * than a WeakSet entry: ephemeron-table inserts and deletes were a visible
 * share of a 4 KiB read). Foreign buffers and double releases are told
 * apart by it.
 */
const LENT_BY = Symbol('lent by');
type PooledArrayBuffer = ArrayBuffer & { [LENT_BY]?: BufferPool };

export class BufferPool {
  private readonly free = new Map<number, PooledArrayBuffer[]>();
  private idleBytes = 0;

  constructor(private readonly maxPooledBytes = 64 * 1024 * 1024) {}

  /** A buffer of exactly `size` bytes, contents unspecified. */
  acquire(size: number): Buffer {
    if (size < MIN_CLASS) return Buffer.allocUnsafe(size);
    if (size === 0) return Buffer.alloc(0);
    const cls = classOf(size);
    const list = this.free.get(cls);
    let ab = list?.pop();
    if (ab) this.idleBytes -= cls;
    else ab = new ArrayBuffer(cls) as PooledArrayBuffer;
    ab[LENT_BY] = this;
    return Buffer.from(ab, 0, size);
  }

  /** Gives back a buffer from acquire(); anything else (or a second release) is ignored. */
  release(buf: Buffer | undefined): void {
    if (!buf) return;
    const ab = buf.buffer as PooledArrayBuffer;
    if (ab[LENT_BY] !== this) return;
    ab[LENT_BY] = undefined;
    const cls = ab.byteLength;
    if (this.idleBytes + cls > this.maxPooledBytes) return;
    let list = this.free.get(cls);
    if (!list) this.free.set(cls, (list = []));
    list.push(ab);
    this.idleBytes += cls;
  }

  get idle(): number { return this.idleBytes; }
}

function classOf(size: number): number {
  let c = MIN_CLASS;
  while (c < size) c *= 2;
  return c;
}
