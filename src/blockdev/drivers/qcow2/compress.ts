/**
 * Decompression of compressed clusters. zlib clusters are raw deflate
 * streams (node:zlib runs them in the thread pool, off the event loop);
 * zstd clusters are single zstd frames, decoded with fzstd (pure JS; node 20's
 * zlib has no zstd) in a worker thread. The compressed data is followed by whatever shares its
 * last sector, so the zstd frame is measured first and only it is decoded.
 */
import { inflateRaw, constants as zc } from 'node:zlib';
import { Worker } from 'node:worker_threads';
import { BlockError } from '../../../util/errors.ts';

export const CompressionType = { ZLIB: 0, ZSTD: 1 } as const;

function inflate(input: Buffer, clusterSize: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    inflateRaw(input, { finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: clusterSize }, (err, out) => {
      if (err) reject(err); else resolve(out);
    });
  });
}

const ZSTD_MAGIC = 0xfd2fb528;

/** Length in bytes of the zstd frame at the start of `buf`, or -1 if it is malformed or truncated. */
export function zstdFrameLength(buf: Buffer): number {
  if (buf.length < 6 || buf.readUInt32LE(0) !== ZSTD_MAGIC) return -1;
  const fhd = buf[4];
  const single = (fhd >> 5) & 1;
  const fcsFlag = fhd >> 6;
  const didSize = [0, 1, 2, 4][fhd & 3];
  const fcsSize = [single ? 1 : 0, 2, 4, 8][fcsFlag];
  let pos = 5 + (single ? 0 : 1) + didSize + fcsSize;
  for (;;) {
    if (pos + 3 > buf.length) return -1;
    const h = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16);
    const last = h & 1;
    const type = (h >> 1) & 3;
    const size = h >>> 3;
    if (type === 3) return -1;
    pos += 3 + (type === 1 ? 1 : size);
    if (pos > buf.length) return -1;
    if (last) break;
  }
  if ((fhd >> 2) & 1) pos += 4;
  return pos > buf.length ? -1 : pos;
}

/**
 * fzstd runs in a worker thread so that a 2 MiB cluster (about 20 ms of pure
 * JS) does not stall the event loop. The worker is kept referenced only while
 * requests are pending.
 */
class ZstdWorker {
  private worker?: Worker;
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (b: Buffer) => void; reject: (e: Error) => void }>();

  decode(input: Buffer): Promise<Buffer> {
    const w = this.start();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) w.ref();
      // A copy: the caller's buffer stays usable, the copy is moved to the worker.
      const copy = new Uint8Array(input);
      w.postMessage({ id, input: copy }, [copy.buffer]);
    });
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL('./zstd-worker.mjs', import.meta.url));
    w.unref();
    w.on('message', (m: { id: number; out?: Uint8Array; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (this.pending.size === 0) w.unref();
      if (m.error !== undefined || !m.out) p.reject(new Error(m.error ?? 'zstd worker failed'));
      else p.resolve(Buffer.from(m.out.buffer, m.out.byteOffset, m.out.byteLength));
    });
    const fail = (e: Error) => {
      this.worker = undefined;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    w.on('error', fail);
    w.on('exit', (code) => { if (this.worker === w) fail(new Error(`zstd worker exited (${code})`)); });
    this.worker = w;
    return w;
  }
}

const zstdWorker = new ZstdWorker();

async function unzstd(input: Buffer): Promise<Buffer> {
  const len = zstdFrameLength(input);
  if (len < 0) throw new Error('malformed zstd frame');
  return zstdWorker.decode(input.subarray(0, len));
}

/** Decompresses one cluster; anything but exactly one cluster of output is an I/O error, as in QEMU. */
export async function decompressCluster(type: number, input: Buffer, clusterSize: number): Promise<Buffer> {
  let out: Buffer;
  try {
    out = type === CompressionType.ZSTD ? await unzstd(input) : await inflate(input, clusterSize);
  } catch (e) {
    throw new BlockError('EIO', `qcow2: failed to decompress cluster: ${(e as Error).message}`, { cause: e });
  }
  if (out.length !== clusterSize) {
    throw new BlockError('EIO', `qcow2: compressed cluster decompressed to ${out.length} bytes instead of ${clusterSize}`);
  }
  return out;
}
