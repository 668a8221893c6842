/**
 * The persistent bitmaps directory, read for query output only. blockd keeps
 * the bitmaps intact but does not maintain them: an image opened read-write
 * has the bitmaps autoclear bit cleared (qcow2 spec), which marks them stale.
 */
import { BlockError } from '../../../util/errors.ts';

export interface BitmapInfo { name: string; granularity: number; flags: string[] }

const MAX_DIRECTORY = 64 * 1024 * 1024;

export function parseBitmapDirectory(buf: Buffer, count: number): BitmapInfo[] {
  const out: BitmapInfo[] = [];
  let pos = 0;
  for (let i = 0; i < count; i++) {
    if (pos + 24 > buf.length) throw new BlockError('EINVAL', 'Bitmap directory is corrupted');
    const flags = buf.readUInt32BE(pos + 12);
    const granularityBits = buf[pos + 17];
    const nameSize = buf.readUInt16BE(pos + 18);
    const extra = buf.readUInt32BE(pos + 20);
    const end = pos + 24 + extra + nameSize;
    if (end > buf.length || granularityBits > 63) throw new BlockError('EINVAL', 'Bitmap directory is corrupted');
    const f: string[] = [];
    if (flags & 1) f.push('in-use');
    if (flags & 2) f.push('auto');
    out.push({ name: buf.toString('utf8', pos + 24 + extra, end), granularity: 2 ** granularityBits, flags: f });
    pos = Math.ceil(end / 8) * 8;
  }
  return out;
}

export function bitmapDirectoryReadSize(size: number): number {
  if (size > MAX_DIRECTORY) throw new BlockError('EINVAL', 'Bitmap directory is too large');
  return size;
}
