/**
 * detect-zeroes (QEMU's bdrv_aligned_pwritev): a write whose buffer is all
 * zeroes becomes a write-zeroes request, which may then unmap when the
 * option says `unmap`. Pure helpers: the option parsed as QEMU parses it,
 * and a fast all-zero test.
 */
import { BlockError } from '../util/errors.ts';
import type { CommonOptions } from './driver.ts';

export const DetectZeroes = { OFF: 0, ON: 1, UNMAP: 2 } as const;
export type DetectZeroesMode = (typeof DetectZeroes)[keyof typeof DetectZeroes];

/** The node's mode; `unmap` needs discard=unmap (QEMU's bdrv_parse_detect_zeroes, same text). */
export function detectZeroesMode(options: Pick<CommonOptions, 'detect-zeroes' | 'discard'>): DetectZeroesMode {
  switch (options['detect-zeroes']) {
    case 'on': return DetectZeroes.ON;
    case 'unmap':
      if (options.discard !== 'unmap') {
        throw new BlockError('EINVAL', 'setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
      }
      return DetectZeroes.UNMAP;
    default: return DetectZeroes.OFF;
  }
}

/** Compared against in pieces of this size (one memcmp each). */
const PIECE = 64 * 1024;
let zeroPiece: Buffer | undefined;

/**
 * Whether every byte of `buf` is zero. Data that is not zero usually differs
 * in its first bytes, so those are looked at in JS first; the rest is
 * compared with a shared zero buffer natively (Buffer.compare is a memcmp).
 */
export function isAllZero(buf: Buffer): boolean {
  const len = buf.length;
  if (len === 0) return true;
  if (buf[0] !== 0 || buf[len - 1] !== 0 || buf[len >> 1] !== 0) return false;
  zeroPiece ??= Buffer.alloc(PIECE);
  for (let pos = 0; pos < len; pos += PIECE) {
    const n = Math.min(PIECE, len - pos);
    if (Buffer.compare(buf.subarray(pos, pos + n), n === PIECE ? zeroPiece : zeroPiece.subarray(0, n)) !== 0) return false;
  }
  return true;
}
