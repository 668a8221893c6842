/** The Parallels header (src/blockdev/drivers/parallels/header.ts): layout of new images and QEMU's open checks. */
import { describe, it, expect } from 'vitest';
import { checkCreateOptions, parallelsLayout, parseParallelsHeader, probeParallels } from '../../src/blockdev/drivers/parallels/header.ts';

const MiB = 1024 * 1024;

describe('parallels header', () => {
  it('a new image parses back: cluster in sectors, BAT size, data area at the first cluster after the BAT', () => {
    const { head, dataOffset } = parallelsLayout(6 * MiB, MiB);
    const h = parseParallelsHeader(head);
    expect(h).toMatchObject({ totalSectors: 12288n, tracks: 2048, offMultiplier: 2048, batSize: 6, inuse: 0, dataEnd: 2048, headerSize: 88, extOff: 0n });
    // (data_end, 2048 sectors, is less than the page-rounded header size, 4096 bytes: QEMU then keeps the exact 88.)
    expect(dataOffset).toBe(MiB);
    expect(probeParallels(head)).toBe(100);
    expect(probeParallels(head.subarray(0, 63))).toBe(0);
  });

  it('the old magic counts BAT entries in sectors and keeps 32 bits of the size', () => {
    const { head } = parallelsLayout(6 * MiB, 65536);
    head.write('WithoutFreeSpace', 0, 'latin1');
    head.writeBigUInt64LE((1n << 40n) + 100n, 36);
    expect(parseParallelsHeader(head)).toMatchObject({ offMultiplier: 1, tracks: 128, totalSectors: 100n });
  });

  it("a data offset of 0 becomes the BAT's end in bytes, used as sectors (QEMU's units)", () => {
    const { head } = parallelsLayout(6 * MiB, 65536);
    head.writeUInt32LE(0, 48);
    expect(parseParallelsHeader(head)).toMatchObject({ dataEnd: 512, headerSize: 64 + 4 * 96 });
  });

  it('a BAT of 2^30 entries or more wraps in 32 bits at creation, as in QEMU', () => {
    expect(parallelsLayout(2 ** 41 - 512, 512).dataOffset).toBe(512);
  });

  it("refuses bad creation options with QEMU's messages", () => {
    expect(() => checkCreateOptions(MiB, 2 ** 31)).toThrow('Cluster size is too large');
    expect(() => checkCreateOptions(2 ** 41, 512)).toThrow('Image size is too large for this cluster size');
    expect(() => checkCreateOptions(MiB + 1, 512)).toThrow('Image size must be a multiple of 512 bytes');
    expect(() => checkCreateOptions(MiB, 1000)).toThrow('Cluster size must be a multiple of 512 bytes');
  });

  const mutate = (write: (b: Buffer) => void) => {
    const b = Buffer.from(parallelsLayout(4 * MiB, MiB).head.subarray(0, 64));
    write(b);
    return () => parseParallelsHeader(b);
  };
  const cases: [string, (b: Buffer) => void, string][] = [
    ['magic', (b) => { b[3] ^= 1; }, 'Image not in Parallels format'],
    ['version', (b) => b.writeUInt32LE(3, 16), 'Image not in Parallels format'],
    ['cluster of no sectors', (b) => b.writeUInt32LE(0, 28), 'Invalid image: Zero sectors per track'],
    ['cluster too big', (b) => b.writeUInt32LE(4186213, 28), 'Invalid image: Too big cluster'],
    ['catalog', (b) => b.writeUInt32LE(0x20000000, 32), 'Catalog too large'],
  ];
  for (const [name, write, msg] of cases) {
    it(`refuses a bad ${name} with QEMU's message`, () => expect(mutate(write)).toThrow(msg));
  }
});
