/**
 * Compressed writes (QEMU's qcow2_co_pwritev_compressed_part and
 * qcow2_alloc_bytes): a whole guest cluster is deflated (raw deflate,
 * window 2^12, memLevel 9, default level, as qcow2_compress; node:zlib runs
 * it in the thread pool, off the event loop) or, in a zstd image, made one
 * zstd frame at zstd's default level 3 (qcow2_zstd_compress; the native
 * addon calls the system's libzstd in the thread pool), into at most a
 * cluster minus one byte, or written as a normal cluster when it does not fit. Compressed
 * clusters are packed byte-wise into host clusters: the next one starts
 * where the last ended (the free byte offset, in memory, as QEMU's), and a
 * host cluster's refcount counts the compressed clusters touching it.
 */
import { deflateRaw } from 'node:zlib';
import { BlockError } from '../../../util/errors.ts';
import { native } from '../../../platform/native.ts';
import { CompressionType } from './compress.ts';

/** zlib compression as qcow2_compress; undefined when the result would not be smaller than a cluster. */
export function deflateCluster(buf: Buffer, clusterSize: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    deflateRaw(buf, { windowBits: 12, memLevel: 9 }, (err, out) => {
      if (err) reject(new BlockError('EIO', `Could not compress a cluster: ${err.message}`));
      else resolve(out.length <= clusterSize - 1 ? out : undefined);
    });
  });
}

/** zstd as qcow2_zstd_compress (default level); undefined when it would not be smaller than a cluster. */
export async function zstdCluster(buf: Buffer, clusterSize: number): Promise<Buffer | undefined> {
  const z = native().zstdCompress;
  if (!z) throw new BlockError('ENOTSUP', zstdMissing);
  let out: Buffer;
  try {
    out = await z(buf, 3);
  } catch (e) {
    throw new BlockError('ENOTSUP', `Could not compress a cluster with zstd: ${(e as Error).message}`);
  }
  return out.length <= clusterSize - 1 ? out : undefined;
}

const zstdMissing = "blockd's native addon has no zstd compressor (built before it: run `npm run install`)";

/** Why clusters of `type` cannot be compressed here, if they cannot. */
export function compressionRefusal(type: number): string | undefined {
  if (type === CompressionType.ZLIB) return undefined;
  if (type === CompressionType.ZSTD) return native().zstdCompress ? undefined : zstdMissing;
  return `Unknown compression type ${type}`;
}

/** The cluster compressed with the image's compression type. */
export function compressCluster(type: number, buf: Buffer, clusterSize: number): Promise<Buffer | undefined> {
  return type === CompressionType.ZSTD ? zstdCluster(buf, clusterSize) : deflateCluster(buf, clusterSize);
}

/** The L2 entry of a compressed cluster at host byte `offset`, `length` bytes long. */
export function compressedEntry(offset: number, length: number, clusterBits: number): { hi: number; lo: number } {
  const shift = BigInt(62 - (clusterBits - 8));
  // Sectors after the first that the data touches.
  const extra = BigInt(Math.floor((offset + length - 1) / 512) - Math.floor(offset / 512));
  const v = BigInt(offset) | (extra << shift) | (1n << 62n);
  return { hi: Number(v >> 32n), lo: Number(v & 0xffffffffn) };
}

/** What byte allocation needs of the image: its refcounts (cluster indices). */
export interface ByteAllocator {
  clusterSize: number;
  refcountMax: number;
  getRefcount(cluster: number): Promise<number>;
  /** Allocates one fresh cluster (refcount 1); its host offset. */
  allocCluster(): Promise<number>;
  addRef(cluster: number): Promise<void>;
}

/**
 * qcow2_alloc_bytes: `size` bytes (≤ a cluster) at the free byte offset if
 * they fit there (or run on into a newly allocated cluster right after it),
 * else at the start of a new cluster. Returns the host offset and the next
 * free byte offset (0: none).
 */
export async function allocBytes(a: ByteAllocator, freeByteOffset: number, size: number): Promise<{ offset: number; next: number }> {
  const cs = a.clusterSize;
  let offset = freeByteOffset;
  if (offset && await a.getRefcount(Math.floor(offset / cs)) >= a.refcountMax) offset = 0;
  const freeInCluster = offset ? cs - (offset % cs) : 0;
  let fresh = -1;
  if (!offset || freeInCluster < size) {
    const nc = await a.allocCluster();
    fresh = nc / cs;
    if (!offset || Math.ceil(offset / cs) * cs !== nc) offset = nc;
  }
  for (let c = Math.floor(offset / cs); c <= Math.floor((offset + size - 1) / cs); c++) {
    if (c !== fresh) await a.addRef(c);
  }
  const next = (offset + size) % cs === 0 ? 0 : offset + size;
  return { offset, next };
}
