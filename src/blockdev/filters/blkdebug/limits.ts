/** blkdebug's limit options, checked as blkdebug_open checks them (QEMU's texts). */
import { BlockError } from '../../../util/errors.ts';

export interface BlkdebugLimits {
  /** 0: the default. */
  align: number; maxTransfer: number; optWriteZero: number; maxWriteZero: number; optDiscard: number; maxDiscard: number;
}

const INT_MAX = 2 ** 31 - 1;

/** `childAlign`: the image's request alignment, which every limit must also respect. */
export function checkLimits(o: Record<string, unknown>, childAlign: number): BlkdebugLimits {
  const get = (k: string) => {
    const v = (o[k] as number | undefined) ?? 0;
    // QEMU reads them as sizes (QEMU_OPT_SIZE), which refuse a minus.
    if (v < 0) throw new BlockError('EINVAL', `Parameter '${k}' expects a non-negative number below 2^64`);
    return v;
  };
  const bad = (k: string, v: number) => new BlockError('EINVAL', `Cannot meet constraints with ${k} ${v}`);
  const align = get('align');
  if (align && (align >= INT_MAX || (align & (align - 1)) !== 0)) throw bad('align', align);
  const a = Math.max(align, childAlign);
  const multiple = (k: string, of: number) => {
    const v = get(k);
    if (v && (v >= INT_MAX || v % of !== 0)) throw bad(k, v);
    return v;
  };
  const maxTransfer = multiple('max-transfer', a);
  const optWriteZero = multiple('opt-write-zero', a);
  const maxWriteZero = multiple('max-write-zero', Math.max(optWriteZero, a));
  const optDiscard = multiple('opt-discard', a);
  const maxDiscard = multiple('max-discard', Math.max(optDiscard, a));
  return { align, maxTransfer, optWriteZero, maxWriteZero, optDiscard, maxDiscard };
}
