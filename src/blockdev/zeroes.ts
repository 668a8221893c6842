/**
 * Zero handling shared by the copying code (mirror, active commit,
 * copy-on-read): which ranges are written as write-zeroes instead of data.
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

/** A node's cluster size (1 when it has none): QEMU aligns copies and zeroing to the target's clusters. */
export function clusterSizeOf(node: BlockNode): number {
  const cs = (node.ops.info?.() as { 'cluster-size'?: number } | undefined)?.['cluster-size'];
  return typeof cs === 'number' && cs > 0 ? cs : 1;
}

export interface CopyPiece { offset: number; length: number; zero: boolean }

/**
 * How QEMU's mirror (and active commit) copies [offset, offset+length) of
 * `source`: by the source's block status, what reads as zeroes and holds no
 * data is written as write-zeroes where it covers whole clusters of the
 * target (`cluster`); everything else is read and written as data, zero or
 * not (mirror never looks at the buffer).
 */
export async function mirrorPieces(source: BlockNode, offset: number, length: number, cluster: number): Promise<CopyPiece[]> {
  const out: CopyPiece[] = [];
  const push = (o: number, l: number, zero: boolean) => {
    if (l <= 0) return;
    const last = out[out.length - 1];
    if (last && last.zero === zero && last.offset + last.length === o) last.length += l;
    else out.push({ offset: o, length: l, zero });
  };
  const end = offset + length;
  for (let pos = offset; pos < end;) {
    const ext = await source.blockStatus(pos, end - pos);
    for (const e of ext) {
      const eEnd = Math.min(end, e.offset + e.length);
      if (e.zero && !e.data) {
        const zs = Math.ceil(e.offset / cluster) * cluster;
        const ze = Math.floor(eEnd / cluster) * cluster;
        if (ze > zs) {
          push(e.offset, zs - e.offset, false);
          push(zs, ze - zs, true);
          push(ze, eEnd - ze, false);
        } else {
          push(e.offset, eEnd - e.offset, false);
        }
      } else {
        push(e.offset, eEnd - e.offset, false);
      }
      pos = eEnd;
    }
    if (ext.length === 0) break;
  }
  return out;
}

/** True if every byte of `buf` is zero. */
export function isZero(buf: Buffer): boolean {
  for (let o = 0; o < buf.length; o += CHUNK) {
    const part = buf.subarray(o, Math.min(buf.length, o + CHUNK));
    if (!part.equals(ZERO.subarray(0, part.length))) return false;
  }
  return true;
}
