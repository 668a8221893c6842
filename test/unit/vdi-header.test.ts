/** The VDI header (src/blockdev/drivers/vdi/header.ts): layout of new images and QEMU's open checks. */
import { describe, it, expect } from 'vitest';
import { parseVdiHeader, probeVdi, vdiLayout, VDI_BLOCK_SIZE, VDI_DISK_SIZE_MAX, VDI_TYPE_STATIC } from '../../src/blockdev/drivers/vdi/header.ts';

const MiB = 1024 * 1024;

describe('vdi header', () => {
  it('a new dynamic image parses back: size, map offsets, no blocks allocated, every entry unallocated', () => {
    const { head, fileLength } = vdiLayout(5 * MiB + 100, false);
    const h = parseVdiHeader(head);
    expect(h).toMatchObject({ diskSize: 5 * MiB + 512, blockSize: VDI_BLOCK_SIZE, blocksInImage: 6, blocksAllocated: 0, offsetBmap: 512, offsetData: 1024 });
    expect(fileLength).toBe(1024);
    for (let i = 0; i < 6; i++) expect(head.readUInt32LE(512 + i * 4)).toBe(0xffffffff);
    expect(probeVdi(head)).toBe(100);
    expect(probeVdi(head.subarray(0, 511))).toBe(0);
  });

  it('a static image maps every block in order and holds them all', () => {
    const { head, fileLength } = vdiLayout(300 * MiB, true);
    const h = parseVdiHeader(head);
    expect(h.imageType).toBe(VDI_TYPE_STATIC);
    expect(h.blocksAllocated).toBe(300);
    expect(head.readUInt32LE(512 + 299 * 4)).toBe(299);
    expect(fileLength).toBe(h.offsetData + 300 * MiB);
  });

  const mutate = (write: (b: Buffer) => void) => {
    const b = Buffer.from(vdiLayout(4 * MiB, false).head.subarray(0, 512));
    write(b);
    return () => parseVdiHeader(b);
  };
  const cases: [string, (b: Buffer) => void, string][] = [
    ['signature', (b) => b.writeUInt32LE(0x12345678, 64), 'Image not in VDI format (bad signature 12345678)'],
    ['version', (b) => b.writeUInt32LE(0x00020003, 68), 'unsupported VDI image (version 2.3)'],
    ['map offset', (b) => b.writeUInt32LE(513, 340), 'unsupported VDI image (unaligned block map offset 0x201)'],
    ['data offset', (b) => b.writeUInt32LE(0x401, 344), 'unsupported VDI image (unaligned data offset 0x401)'],
    ['sector size', (b) => b.writeUInt32LE(4096, 360), 'unsupported VDI image (sector size 4096 is not 512)'],
    ['block size', (b) => b.writeUInt32LE(2 * MiB, 376), 'unsupported VDI image (block size 2097152 is not 1048576)'],
    ['too small a map', (b) => b.writeUInt32LE(3, 384), 'unsupported VDI image (disk size 4194304, image bitmap has room for 3145728)'],
    ['link UUID', (b) => { b[424] = 1; }, 'unsupported VDI image (non-NULL link UUID)'],
    ['parent UUID', (b) => { b[455] = 1; }, 'unsupported VDI image (non-NULL parent UUID)'],
    ['size', (b) => b.writeBigUInt64LE(BigInt(VDI_DISK_SIZE_MAX) + 1n, 368), `Unsupported VDI image size (size is 0x${(VDI_DISK_SIZE_MAX + 1).toString(16)}, max supported is 0x${VDI_DISK_SIZE_MAX.toString(16)})`],
  ];
  for (const [name, write, msg] of cases) {
    it(`refuses a bad ${name} with QEMU's message`, () => expect(mutate(write)).toThrow(msg));
  }
});
