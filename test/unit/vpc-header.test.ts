/** The VHD footer and dynamic header (src/blockdev/drivers/vpc/header.ts): geometry, layout, QEMU's checks. */
import { describe, it, expect } from 'vitest';
import { dynamicLayout, newFooter, parseDynHeader, parseFooter, probeVpc, roundedSize, vpcChecksum, VHD_DYNAMIC, VHD_FIXED } from '../../src/blockdev/drivers/vpc/header.ts';

const MiB = 1024 * 1024;

describe('vpc header', () => {
  it('rounds sizes up to what CHS can say, as qemu-img does (6 MiB: 6301696 bytes, 181x4x17)', () => {
    expect(roundedSize(6 * MiB, false)).toEqual({ chs: [181, 4, 17], totalSectors: 12308 });
    expect(roundedSize(6301696, false).totalSectors * 512).toBe(6301696);
    expect(roundedSize(6 * MiB, true)).toEqual({ chs: [65535, 16, 255], totalSectors: 12288 });
    expect(() => roundedSize(3 * 2 ** 40, true)).toThrow('Disk size is too large, max size is 2040 GiB');
  });

  it('a new footer checks out and sizes by geometry (qemu) or by current_size (qem2)', () => {
    const { chs } = roundedSize(6301696, false);
    const f = parseFooter(newFooter(6301696, VHD_FIXED, chs, false));
    expect(f).toMatchObject({ type: VHD_FIXED, totalSectors: 12308 });
    const g = parseFooter(newFooter(6 * MiB, VHD_DYNAMIC, [65535, 16, 255], true));
    expect(g.totalSectors).toBe(12288);
    expect(probeVpc(Buffer.from('conectix'))).toBe(100);
  });

  it('refuses a footer whose checksum is wrong, and dynamic headers as QEMU does', () => {
    const f = newFooter(6301696, VHD_DYNAMIC, [181, 4, 17], false);
    f[40] ^= 1;
    expect(() => parseFooter(f)).toThrow('Incorrect header checksum');
    const { head, footerAt } = dynamicLayout(newFooter(6301696, VHD_DYNAMIC, [181, 4, 17], false), 12308);
    expect(footerAt).toBe(1536 + 512);
    const dyn = head.subarray(512, 1536);
    expect(parseDynHeader(dyn, 12308)).toMatchObject({ maxTableEntries: 4, blockSize: 2 * MiB, bitmapSize: 512, tableOffset: 1536n });
    const bad = (edit: (b: Buffer) => void) => { const b = Buffer.from(dyn); edit(b); return () => parseDynHeader(b, 12308); };
    expect(bad((b) => b.write('cxsparsX', 0, 'latin1'))).toThrow('Invalid header magic');
    expect(bad((b) => b.writeUInt32BE(3000, 32))).toThrow('Invalid block size 3000');
    expect(bad((b) => b.writeUInt32BE(2, 28))).toThrow('Page table too small');
    expect(bad((b) => b.writeUInt32BE(0x90000000, 28))).toThrow(`Max Table Entries too large (${0x90000000 | 0})`);
    expect(vpcChecksum(Buffer.from([1, 2, 3]))).toBe(~6 >>> 0);
  });
});
