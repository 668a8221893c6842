/**
 * vmdk's pure parsing (#20): descriptor probing, QEMU's sscanf-style extent
 * lines (fields running into the next line, truncated words, invalid
 * lines), CID lookup by first "CID" as QEMU's strstr, the CID rewrite, and
 * the sparse header checks and layout.
 */
import { describe, it, expect } from 'vitest';
import { cString, descriptionValue, parentFileNameHint, parseExtentLines, probeVmdk, readCid, rewriteCid } from '../../src/blockdev/drivers/vmdk/descriptor.ts';
import { readVmdk4Header, sparseLayout, vmdk4Geometry } from '../../src/blockdev/drivers/vmdk/header.ts';

const DESC = '# Disk DescriptorFile\nversion=1\nCID=1a2b3c4d\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\nRW 6144 FLAT "d-flat.vmdk" 0\n\nddb.adapterType = "ide"\n';

describe('vmdk descriptor', () => {
  it('probes descriptors and sparse magics as QEMU', () => {
    expect(probeVmdk(Buffer.from(DESC))).toBe(100);
    expect(probeVmdk(Buffer.from('# c\n   \r\nversion=2\r\n'))).toBe(100);
    expect(probeVmdk(Buffer.from('x\nversion=1\n'))).toBe(0);
    expect(probeVmdk(Buffer.from('KDMV'))).toBe(100);
    expect(probeVmdk(Buffer.from('COW'))).toBe(0);
  });

  it('reads createType, CIDs and the parent hint', () => {
    expect(descriptionValue(DESC, 'createType')).toBe('monolithicFlat');
    expect(readCid(DESC, false)).toBe(0x1a2b3c4d);
    expect(readCid(DESC, true)).toBe(0xffffffff);
    // The first "CID" is parentCID's when CID= is missing.
    expect(readCid(DESC.replace('CID=1a2b3c4d', 'XID=1'), false)).toBe(0xffffffff);
    expect(readCid('CID=zz', false)).toBeUndefined();
    expect(parentFileNameHint('parentFileNameHint="base.vmdk"\n')).toBe('base.vmdk');
    expect(() => parentFileNameHint('parentFileNameHint="base')).toThrow('Invalid argument');
  });

  it('scans extent lines as sscanf does', () => {
    expect(parseExtentLines(DESC)).toEqual([{ type: 'FLAT', sectors: 6144n, fname: 'd-flat.vmdk', flatOffset: 0n }]);
    expect(() => parseExtentLines('RW 10 FLAT "a"\n')).toThrow('Invalid extent line: RW 10 FLAT "a"');
    expect(() => parseExtentLines('RW 10 SPARSE "a" 3\n')).toThrow('Invalid extent line');
    expect(parseExtentLines('RDONLY 10 FLAT "a" 0\nRW 0 FLAT "b" 0\nRW 5 ZERO "c"\n')).toEqual([]);
    // A blank line before an extent line scans into it: QEMU adds the extent twice.
    expect(parseExtentLines('\nRW 8 SPARSE "s.vmdk"\n').length).toBe(2);
  });

  it('rewrites the CID in place, keeping the rest of the buffer', () => {
    const buf = Buffer.alloc(512);
    buf.write(DESC, 'latin1');
    const out = rewriteCid(buf, 0xabc)!;
    expect(cString(out)).toBe(DESC.replace('CID=1a2b3c4d', 'CID=abc'));
    expect(out.length).toBe(512);
    expect(rewriteCid(Buffer.from('CID=1\n\0'), 1)).toBeUndefined();
  });
});

describe('vmdk sparse header', () => {
  it('lays out a new extent as QEMU and parses it back', () => {
    const l = sparseLayout(6 * 1024 * 1024, false, false);
    const h = readVmdk4Header(l.header);
    expect(h).toMatchObject({ version: 1, flags: 3, capacity: 12288n, granularity: 128n, descOffset: 1n, numGtes: 512, rgdOffset: 21n });
    expect(l.fileLength).toBe(Number(h.grainOffset) * 512);
    const g = vmdk4Geometry(h, true, l.fileLength / 512);
    expect(g).toMatchObject({ l1Size: 1, l2Size: 512, clusterSectors: 128n, compressed: false });
  });

  it('refuses what QEMU refuses, with its texts', () => {
    const h = readVmdk4Header(sparseLayout(1 << 20, false, false).header);
    expect(() => vmdk4Geometry({ ...h, version: 4 }, false, 1000)).toThrow('Unsupported VMDK version 4');
    expect(() => vmdk4Geometry({ ...h, version: 3 }, true, 1000)).toThrow('VMDK version 3 must be read only');
    expect(() => vmdk4Geometry({ ...h, numGtes: 513 }, false, 1000)).toThrow('L2 table size too big');
    expect(() => vmdk4Geometry({ ...h, granularity: 0n }, false, 1000)).toThrow('L1 entry size is invalid');
    expect(() => vmdk4Geometry(h, false, 1)).toThrow(`File truncated, expecting at least ${Number(h.grainOffset) * 512} bytes`);
    expect(() => vmdk4Geometry({ ...h, granularity: 0x200001n }, false, 1000)).toThrow('Invalid granularity, image may be corrupt');
  });
});
