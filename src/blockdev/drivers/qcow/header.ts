/**
 * The qcow (version 1) header as QEMU's block/qcow.c reads it: 48
 * big-endian bytes, checked with QEMU's messages in its order. Pure.
 */
import { BlockError } from '../../../util/errors.ts';

export const QCOW_MAGIC = 0x514649fb;
export const HEADER_SIZE = 48;

export interface QcowHeader {
  backingFileOffset: bigint;
  backingFileSize: number;
  size: number;
  clusterBits: number;
  l2Bits: number;
  cryptMethod: number;
  l1TableOffset: bigint;
  l1Size: number;
}

/** QEMU's qcow_probe: the magic and version 1. */
export const probeQcow = (head: Buffer): number => (head.length >= 8 && head.readUInt32BE(0) === QCOW_MAGIC && head.readUInt32BE(4) === 1 ? 100 : 0);

export function parseQcowHeader(b: Buffer): QcowHeader {
  if (b.readUInt32BE(0) !== QCOW_MAGIC) throw new BlockError('EINVAL', 'Image not in qcow format');
  const version = b.readUInt32BE(4);
  if (version !== 1) throw new BlockError('ENOTSUP', `qcow (v1) does not support qcow version ${version}`);
  const size64 = b.readBigUInt64BE(24);
  if (size64 <= 1n) throw new BlockError('EINVAL', 'Image size is too small (must be at least 2 bytes)');
  const clusterBits = b[32];
  const l2Bits = b[33];
  if (clusterBits < 9 || clusterBits > 16) throw new BlockError('EINVAL', 'Cluster size must be between 512 and 64k');
  if (l2Bits < 6 || l2Bits > 13) throw new BlockError('EINVAL', 'L2 table size must be between 512 and 64k');
  const cryptMethod = b.readUInt32BE(36);
  const shift = BigInt(clusterBits + l2Bits);
  if (size64 > 2n ** 64n - 1n - (1n << shift)) throw new BlockError('EINVAL', 'Image too large');
  const l1Size = (size64 + (1n << shift) - 1n) >> shift;
  if (l1Size > BigInt(Math.floor(0x7fffffff / 8))) throw new BlockError('EINVAL', 'Image too large');
  return {
    backingFileOffset: b.readBigUInt64BE(8), backingFileSize: b.readUInt32BE(16),
    // Whole sectors (QEMU's total_sectors); a size past 2^53 cannot be a real image's.
    size: Number(size64 / 512n) * 512, clusterBits, l2Bits, cryptMethod, l1TableOffset: b.readBigUInt64BE(40), l1Size: Number(l1Size),
  };
}
