/** The QED header (src/blockdev/drivers/qed/header.ts): layout of new images and QEMU's open checks. */
import { describe, it, expect } from 'vitest';
import {
  F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, bytesToClusters, checkCreateOptions, maxImageSize, parseQedHeader, probeQed, qedLayout,
} from '../../src/blockdev/drivers/qed/header.ts';

const K = 1024;
const MiB = K * K;

function image(o: Parameters<typeof qedLayout>[0]): { b: Buffer; len: number } {
  const { head, l1Offset, l1Bytes } = qedLayout(o);
  const b = Buffer.alloc(l1Offset + l1Bytes);
  head.copy(b);
  return { b, len: b.length };
}

describe('qed header', () => {
  it('a new image parses back: geometry, size, the L1 table at one cluster, no features', () => {
    const { b, len } = image({ size: 6 * MiB, clusterSize: 64 * K, tableSize: 4 });
    const { h, fileSize } = parseQedHeader(b, len);
    expect(h).toMatchObject({ clusterSize: 64 * K, tableSize: 4, headerSize: 1, features: 0n, l1TableOffset: 64 * K, imageSize: 6 * MiB });
    expect(fileSize).toBe(5 * 64 * K);
    expect(probeQed(b)).toBe(100);
    expect(probeQed(b.subarray(0, 63))).toBe(0);
  });

  it('a backing file is named after the header; a raw one is recorded as not to be probed', () => {
    const raw = parseQedHeader(image({ size: MiB, clusterSize: 64 * K, tableSize: 4, backingFile: 'b.raw', backingFmt: 'raw' }).b, 5 * 64 * K).h;
    expect(raw.features).toBe(F_BACKING_FILE | F_BACKING_FORMAT_NO_PROBE);
    expect(raw).toMatchObject({ backingFilenameOffset: 64, backingFilenameSize: 5 });
    const q = parseQedHeader(image({ size: MiB, clusterSize: 64 * K, tableSize: 4, backingFile: 'b.qcow2', backingFmt: 'qcow2' }).b, 5 * 64 * K).h;
    expect(q.features).toBe(F_BACKING_FILE);
  });

  it("QEMU's qed_bytes_to_clusters divides by cluster_size - 1", () => {
    expect(bytesToClusters(4096, 1)).toBe(1);
    expect(bytesToClusters(4096, 4096 * 4094)).toBe(4094);
    expect(bytesToClusters(4096, 4096 * 4095)).toBe(4096);
  });

  it("refuses bad creation options with QEMU's messages", () => {
    expect(() => checkCreateOptions({ size: MiB, clusterSize: 3000, tableSize: 4 })).toThrow('QED cluster size must be within range [4096, 67108864] and power of 2');
    expect(() => checkCreateOptions({ size: MiB, clusterSize: 4096, tableSize: 32 })).toThrow('QED table size must be within range [1, 16] and power of 2');
    expect(() => checkCreateOptions({ size: MiB + 1, clusterSize: 4096, tableSize: 4 })).toThrow(`less than ${maxImageSize(4096, 4)} bytes`);
  });

  const mutate = (write: (b: Buffer) => void, len?: number) => {
    const { b, len: l } = image({ size: 4 * MiB, clusterSize: 64 * K, tableSize: 4, backingFile: 'x' });
    write(b);
    return () => parseQedHeader(b, len ?? l);
  };
  const cases: [string, (b: Buffer) => void, string, number?][] = [
    ['magic', (b) => b.writeUInt32LE(0x12345678, 0), 'Image not in QED format'],
    ['feature', (b) => b.writeBigUInt64LE(0x18n, 16), 'Unsupported QED features: 18'],
    ['cluster size', (b) => b.writeUInt32LE(3 * 4096, 4), 'QED cluster size is invalid'],
    ['table size', (b) => b.writeUInt32LE(3, 8), 'QED table size is invalid'],
    ['image size', (b) => b.writeBigUInt64LE(4n * BigInt(MiB) + 1n, 48), 'QED image size is invalid'],
    ['L1 offset', (b) => b.writeBigUInt64LE(100n, 40), 'QED table offset is invalid'],
    ['L1 past the file', () => undefined, 'QED table offset is invalid', 4 * 64 * K],
    ['one-cluster tables (QEMU opens none)', (b) => b.writeUInt32LE(1, 8), 'QED table offset is invalid'],
    ['header size', (b) => b.writeUInt32LE(0x10000, 12), 'QED table offset is invalid'],
    ['huge header size', (b) => { b.writeUInt32LE(0x10000, 12); b.writeBigUInt64LE(BigInt(0x10000) * 65536n, 40); }, 'QED table offset is invalid'],
    ['backing name offset', (b) => b.writeUInt32LE(65536, 56), 'QED backing filename offset is invalid'],
  ];
  for (const [name, write, msg, len] of cases) {
    it(`refuses a bad ${name} with QEMU's message`, () => expect(mutate(write, len)).toThrow(msg));
  }
});
