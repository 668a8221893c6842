/**
 * The pure parts of qcow2's compressed writes: the compressed L2 entry
 * (round trip through the reader's descriptor parser) and byte allocation
 * as qcow2_alloc_bytes (packing, running on into the next cluster only when
 * it is the one allocated right after, a refcount per compressed cluster,
 * a full refcount starting a new cluster), and clusters compressed with
 * zlib and zstd decoding back.
 */
import { describe, it, expect } from 'vitest';
import { allocBytes, compressCluster, compressedEntry, deflateCluster, type ByteAllocator } from '../../src/blockdev/drivers/qcow2/compress-write.ts';
import { CompressionType, decompressCluster } from '../../src/blockdev/drivers/qcow2/compress.ts';
import { compressedDescriptor } from '../../src/blockdev/drivers/qcow2/l2.ts';

function allocator(cs: number, firstFree: number, max = 65535): ByteAllocator & { refs: Map<number, number>; next: number } {
  const refs = new Map<number, number>();
  const a = {
    refs, next: firstFree, clusterSize: cs, refcountMax: max,
    getRefcount: async (c: number) => refs.get(c) ?? 0,
    allocCluster: async () => { const c = a.next++; refs.set(c, 1); return c * cs; },
    addRef: async (c: number) => { refs.set(c, (refs.get(c) ?? 0) + 1); },
  };
  return a;
}

describe('compressed entries', () => {
  it('round-trip through the descriptor the reader parses', () => {
    for (const bits of [9, 12, 16, 21]) {
      for (const [off, len] of [[0x50000, 100], [0x50000 + 511, 2], [0x123456789a, 40000]] as const) {
        if (len >= 1 << bits) continue; // a compressed cluster is smaller than a cluster
        const e = compressedEntry(off, len, bits);
        expect(e.hi & 0x40000000).toBe(0x40000000);
        const d = compressedDescriptor(e.hi, e.lo, bits);
        expect(d.offset).toBe(off);
        // The reader takes the data to the end of its last sector.
        expect(d.length).toBe((Math.floor((off + len - 1) / 512) + 1) * 512 - off);
      }
    }
  });
});

describe('byte allocation (qcow2_alloc_bytes)', () => {
  it('packs compressed clusters, runs on into the cluster allocated next, counts a reference per compressed cluster', async () => {
    const a = allocator(65536, 5);
    let free = 0;
    const take = async (n: number) => { const r = await allocBytes(a, free, n); free = r.next; return r.offset; };
    expect(await take(30000)).toBe(5 * 65536);
    expect(await take(30000)).toBe(5 * 65536 + 30000);
    expect(a.refs.get(5)).toBe(2);
    // 5536 bytes left: the next one spans into cluster 6, allocated right after.
    expect(await take(10000)).toBe(5 * 65536 + 60000);
    expect([a.refs.get(5), a.refs.get(6)]).toEqual([3, 1]);
    // A cluster not right after: start there, the rest of 6 is left.
    a.next = 9;
    expect(await take(65000)).toBe(9 * 65536);
    expect(a.refs.get(9)).toBe(1);
    // Ending on a boundary leaves no free byte offset.
    a.next = 20;
    free = 0;
    expect(await take(65536 - 100)).toBe(20 * 65536);
    expect((await allocBytes(a, free, 100)).next).toBe(0);
  });

  it('a cluster whose refcount is full is not packed further', async () => {
    const a = allocator(512, 3, 2);
    let r = await allocBytes(a, 0, 100);
    r = await allocBytes(a, r.next, 100);
    expect(a.refs.get(3)).toBe(2);
    r = await allocBytes(a, r.next, 100);
    expect(r.offset).toBe(4 * 512);
  });

  it('deflates text below a cluster and gives up on random data', async () => {
    const text = Buffer.alloc(65536, 'storage daemon ');
    expect((await deflateCluster(text, 65536))!.length).toBeLessThan(2000);
    const { randomBytes } = await import('node:crypto');
    expect(await deflateCluster(randomBytes(65536), 65536)).toBeUndefined();
  });

  it('zstd (the addon\'s libzstd) and zlib clusters decode with the reader\'s decompressor', async () => {
    const text = Buffer.alloc(65536, 'cluster compressed by blockd ');
    for (const type of [CompressionType.ZLIB, CompressionType.ZSTD]) {
      const out = (await compressCluster(type, text, 65536))!;
      expect(out.length).toBeLessThan(4096);
      // What follows the data in its last sector is whatever shares it: the reader copes.
      const padded = Buffer.concat([out, Buffer.alloc(512, 0xee)]);
      expect((await decompressCluster(type, padded, 65536)).equals(text)).toBe(true);
    }
  });
});
