/**
 * Decompression of compressed clusters. zlib clusters are raw deflate
 * streams (node:zlib runs them in the thread pool, off the event loop);
 * zstd clusters are single zstd frames, decoded with fzstd (pure JS; node 20's
 * zlib has no zstd). The compressed data is followed by whatever shares its
 * last sector, so the zstd frame is measured first and only it is decoded.
 */
import { inflateRaw, constants as zc } from 'node:zlib';
import { BlockError } from '../../errors.ts';

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

let fzstd: Promise<typeof import('fzstd')> | undefined;

async function unzstd(input: Buffer): Promise<Buffer> {
  const len = zstdFrameLength(input);
  if (len < 0) throw new Error('malformed zstd frame');
  fzstd ??= import('fzstd');
  const { decompress } = await fzstd;
  const out = decompress(input.subarray(0, len));
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
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
