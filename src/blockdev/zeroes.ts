/**
 * Zero handling shared by the copying code (mirror, backup's
 * copy-before-write): what reads as zeroes is written as write-zeroes, or
 * not at all where the destination already reads as zeroes.
 */
import type { BlockNode } from './node.ts';

const CHUNK = 1024 * 1024;
const ZERO = Buffer.alloc(CHUNK);

/** Writes zeroes over the parts of [offset, offset+length) that do not already read as zeroes on `node`. */
export async function zeroUnlessZero(node: BlockNode, offset: number, length: number, flags: number): Promise<void> {
  for (let pos = offset; pos < offset + length;) {
    const ext = await node.blockStatus(pos, offset + length - pos);
    for (const e of ext) {
      if (!e.zero) await node.writeZeroes(e.offset, e.length, flags);
      pos = e.offset + e.length;
    }
  }
}

/** True if every byte of `buf` is zero. */
export function isZero(buf: Buffer): boolean {
  for (let o = 0; o < buf.length; o += CHUNK) {
    const part = buf.subarray(o, Math.min(buf.length, o + CHUNK));
    if (!part.equals(ZERO.subarray(0, part.length))) return false;
  }
  return true;
}
