/**
 * The dm-log-writes format (src/blockdev/filters/blklogwrites/log-format.ts):
 * superblock and entry layouts as QEMU's packed little-endian structs, the
 * sector sizes QEMU accepts, and how many sectors an entry takes.
 */
import { describe, it, expect } from 'vitest';
import {
  LOG_DISCARD_FLAG, LOG_FLUSH_FLAG, WRITE_LOG_MAGIC, decodeEntry, decodeSuper, encodeEntry, encodeSuper, entrySectors, sectorSizeValid,
} from '../../src/blockdev/filters/blklogwrites/log-format.ts';

describe('dm-log-writes format', () => {
  it('superblock: magic, version 1, entries, sector size, zero padding', () => {
    const b = encodeSuper(7, 512);
    expect(b.length).toBe(512);
    expect(b.subarray(0, 28).toString('hex')).toBe('7268737766736a00' + '0100000000000000' + '0700000000000000' + '00020000');
    expect(b.subarray(28).every((x) => x === 0)).toBe(true);
    expect(decodeSuper(b)).toEqual({ magic: WRITE_LOG_MAGIC, version: 1n, nrEntries: 7n, sectorSize: 512 });
  });

  it('entry: sector, count, flags, data_len 0, padded to the sector', () => {
    const b = encodeEntry(16, 8, LOG_FLUSH_FLAG, 4096);
    expect(b.length).toBe(4096);
    expect(b.subarray(0, 32).toString('hex')).toBe('1000000000000000' + '0800000000000000' + '0100000000000000' + '0000000000000000');
    expect(decodeEntry(b)).toEqual({ sector: 16n, nrSectors: 8n, flags: 1n });
  });

  it('a discard entry has no data sectors', () => {
    expect(entrySectors({ sector: 0n, nrSectors: 8n, flags: 0n })).toBe(9n);
    expect(entrySectors({ sector: 0n, nrSectors: 8n, flags: BigInt(LOG_DISCARD_FLAG) })).toBe(1n);
  });

  it('sector sizes: powers of two from 32 up to below 16 MiB', () => {
    expect([16, 32, 512, 1000, 4096, 2 ** 23, 2 ** 24, 0].map(sectorSizeValid)).toEqual([false, true, true, false, true, true, false, false]);
  });
});
