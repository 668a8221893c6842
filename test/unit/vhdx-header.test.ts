/**
 * VHDX layout and log (src/blockdev/drivers/vhdx/): CRC-32C, the layout of
 * a new image read back by the parsers, QEMU's header choice and BAT
 * shape, and a log entry found by the search and replayed over an
 * in-memory file.
 */
import { describe, it, expect } from 'vitest';
import { crc32c } from '../../src/blockdev/drivers/vhdx/crc32c.ts';
import {
  HEADER1_OFFSET, HEADER2_OFFSET, HEADER_BLOCK, HEADER_SIZE, METADATA_TABLE_MAX, REGION_TABLE_OFFSET, Regions, batEntries, batIndex,
  checksumValid, decodeHeader, encodeHeader, newGuid, parseGeometry, parseMetadataTable, parseRegionTable, pickHeader, probeVhdx, vhdxLayout,
} from '../../src/blockdev/drivers/vhdx/header.ts';
import { encodeEntry, replayLog, searchLog, writeRing, type LogFile } from '../../src/blockdev/drivers/vhdx/log.ts';

const MiB = 1024 * 1024;

function image(size: number, o: Partial<Parameters<typeof vhdxLayout>[0]> = {}): Buffer {
  const { writes, fileLength } = vhdxLayout({ size, logSize: MiB, blockSize: 8 * MiB, fixed: false, zeroBlocks: true, ...o });
  const b = Buffer.alloc(fileLength);
  for (const [at, w] of writes) w.copy(b, at);
  return b;
}

function memFile(b: Buffer): LogFile & { buf: Buffer } {
  const f = {
    buf: b,
    read: async (o: number, n: number) => { const out = Buffer.alloc(n); f.buf.copy(out, 0, o, o + n); return out; },
    write: async (o: number, d: Buffer) => { if (o + d.length > f.buf.length) f.buf = Buffer.concat([f.buf, Buffer.alloc(o + d.length - f.buf.length)]); d.copy(f.buf, o); },
    writeSync: async (o: number, d: Buffer) => f.write(o, d),
    length: () => f.buf.length,
    truncate: async (n: number) => { const nb = Buffer.alloc(n); f.buf.copy(nb, 0, 0, n); f.buf = nb; },
  };
  return f;
}

describe('vhdx layout and log', () => {
  it('CRC-32C is Castagnoli\'s (check value e3069283)', () => {
    expect(crc32c(Buffer.from('123456789')).toString(16)).toBe('e3069283');
    expect(crc32c(Buffer.alloc(0))).toBe(0);
  });

  it('a new dynamic image parses back: headers, region table, metadata, geometry (QEMU\'s 8 MiB blocks, 1 MiB log)', () => {
    const b = image(20 * MiB);
    expect(probeVhdx(b)).toBe(100);
    expect(b.length).toBe(8 * MiB);
    const { headers, current } = pickHeader(b.subarray(HEADER1_OFFSET, HEADER1_OFFSET + HEADER_SIZE), b.subarray(HEADER2_OFFSET, HEADER2_OFFSET + HEADER_SIZE));
    expect(current).toBe(1);
    expect(headers[1].sequence - headers[0].sequence).toBe(1n);
    expect(headers[0]).toMatchObject({ version: 1, logLength: MiB, logOffset: BigInt(MiB) });
    const regions = new Regions();
    regions.add(BigInt(MiB), BigInt(MiB));
    const { bat, metadata } = parseRegionTable(b.subarray(REGION_TABLE_OFFSET, REGION_TABLE_OFFSET + HEADER_BLOCK), regions);
    expect(bat).toEqual({ offset: BigInt(2 * MiB), length: MiB });
    expect(metadata).toEqual({ offset: BigInt(3 * MiB), length: MiB });
    const md = b.subarray(3 * MiB, 3 * MiB + METADATA_TABLE_MAX);
    const items = parseMetadataTable(md);
    const at = (rel: number) => b.subarray(3 * MiB + rel);
    const g = parseGeometry(at(items.fileParams), at(items.virtualSize).readBigUInt64LE(0), at(items.logicalSector).readUInt32LE(0));
    expect(g).toMatchObject({ blockSize: 8 * MiB, virtualSize: 20 * MiB, chunkRatio: 512, batEntries: 3 });
    // block_state_zero: every payload entry is PAYLOAD_BLOCK_ZERO.
    expect([0, 1, 2].map((i) => b.readBigUInt64LE(2 * MiB + 8 * i))).toEqual([2n, 2n, 2n]);
  });

  it('fixed images map every block in order past the metadata; the BAT interleaves a bitmap entry per chunk', () => {
    const b = image(20 * MiB, { fixed: true, zeroBlocks: false });
    expect(b.length).toBe(8 * MiB + 20 * MiB);
    expect([0, 1, 2].map((i) => b.readBigUInt64LE(2 * MiB + 8 * i))).toEqual([BigInt(8 * MiB) | 6n, BigInt(16 * MiB) | 6n, BigInt(24 * MiB) | 6n]);
    const g = { blockSize: MiB, chunkRatio: 4096 } as Parameters<typeof batIndex>[0];
    expect(batIndex(g, 4095 * MiB)).toBe(4095);
    expect(batIndex(g, 4096 * MiB)).toBe(4097);
    // QEMU's 32-bit arithmetic for an empty disk: (0 - 1) >> chunk_ratio_bits entries.
    expect(batEntries(0, 8 * MiB, 512)).toBe(8388607);
  });

  it('picks the header with the higher sequence number; refuses two bad ones or equal numbers with different contents', () => {
    const b = image(MiB);
    const h1 = Buffer.from(b.subarray(HEADER1_OFFSET, HEADER1_OFFSET + HEADER_SIZE));
    const h2 = Buffer.from(b.subarray(HEADER2_OFFSET, HEADER2_OFFSET + HEADER_SIZE));
    const bad = Buffer.from(h2); bad[20] ^= 1;
    expect(pickHeader(h1, bad).current).toBe(0);
    expect(() => pickHeader(bad, bad)).toThrow('No valid VHDX header found');
    const same = encodeHeader({ ...decodeHeader(h2), sequence: decodeHeader(h1).sequence, dataWriteGuid: newGuid() });
    expect(checksumValid(same, 4)).toBe(true);
    expect(() => pickHeader(h1, same)).toThrow('No valid VHDX header found');
    expect(pickHeader(h1, Buffer.from(h1)).current).toBe(0);
  });

  it('a log entry is found by the search, replayed to its sector, and refused once its guid or checksum is wrong', async () => {
    const f = memFile(image(20 * MiB));
    const guid = newGuid();
    const sector = Buffer.alloc(4096, 0xab);
    const ring = { offset: MiB, length: MiB, read: MiB - 4096, write: MiB - 4096 };
    // Written across the end of the ring: the second sector wraps to its start.
    expect(await writeRing(f, ring, encodeEntry({ sequence: 7n, tail: 0, logGuid: guid, fileLength: f.length(), fileOffset: 2 * MiB, sector }))).toBe(true);
    expect(ring.write).toBe(4096);
    const found = await searchLog(f, MiB, MiB, guid);
    expect(found).toMatchObject({ count: 1, sequence: 7n, ring: { read: MiB - 4096, write: 4096 } });
    expect(await searchLog(f, MiB, MiB, newGuid())).toBeUndefined();
    await replayLog(f, found!, guid);
    expect(f.buf.subarray(2 * MiB, 2 * MiB + 4096).equals(sector)).toBe(true);
    f.buf[MiB + 100] ^= 1;
    expect(await searchLog(f, MiB, MiB, guid)).toBeUndefined();
  });
});
