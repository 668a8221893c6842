/**
 * The DMG metadata (src/blockdev/drivers/dmg/header.ts): the koly search,
 * the trailer's checks, mish entries (skipped types, QEMU's limits, wrapping
 * sums), the chunk search, the plist walk, and glib's base64 decoder
 * checked against the system's libglib (g_base64_decode through ctypes).
 */
import { describe, it, expect } from 'vitest';
import { run, SYSTEM_PYTHON } from '../helpers/tools.ts';
import { rng } from '../helpers/dmg.ts';
import {
  addMishBlock, diskSize, emptyTable, findKoly, glibBase64, inChunk, parseKoly, plistData, probeDmg, searchChunk,
  searchStart, DmgErrno, UDBZ, UDCM, UDRW, UDZE, UDZO,
} from '../../src/blockdev/drivers/dmg/header.ts';

function mish(entries: [number, number, number, number, number][], first = 0n, dataOffset = 0n): Buffer {
  const b = Buffer.alloc(204 + 40 * entries.length);
  b.write('mish', 0, 'latin1');
  b.writeBigUInt64BE(first, 8);
  b.writeBigUInt64BE(dataOffset, 0x18);
  entries.forEach(([type, sector, count, offset, length], i) => {
    const at = 204 + 40 * i;
    b.writeUInt32BE(type >>> 0, at);
    b.writeBigUInt64BE(BigInt(sector), at + 8);
    b.writeBigUInt64BE(BigInt(count), at + 0x10);
    b.writeBigUInt64BE(BigInt(offset), at + 0x18);
    b.writeBigUInt64BE(BigInt(length), at + 0x20);
  });
  return b;
}

describe('dmg header', () => {
  it('probes by the .dmg name only', () => {
    expect(probeDmg(Buffer.alloc(512), 'x.dmg')).toBe(2);
    expect(probeDmg(Buffer.alloc(512), '.dmg')).toBe(0);
    expect(probeDmg(Buffer.from('koly'), 'x.img')).toBe(0);
  });

  it('finds koly in the last 515 bytes before the final 508, refuses short files', () => {
    const len = 5000;
    const buf = Buffer.alloc(515);
    buf.write('koly', 511, 'latin1');
    expect(findKoly(len, buf)).toBe(searchStart(len) + 511);
    expect(searchStart(len)).toBe(len - 1023);
    expect(() => findKoly(len, Buffer.alloc(515))).toThrow('Could not locate UDIF trailer in dmg file');
    expect(() => findKoly(511, Buffer.alloc(511))).toThrow('dmg file must be at least 512 bytes long');
  });

  it('checks the trailer: forks below the trailer, a non-negative size; the size past BDRV_MAX_LENGTH', () => {
    const k = Buffer.alloc(512);
    k.writeBigUInt64BE(100n, 0xd8);
    k.writeBigUInt64BE(50n, 0xe0);
    k.writeBigUInt64BE(8n, 0x1ec);
    expect(parseKoly(k, 150)).toMatchObject({ xmlOffset: 100n, xmlLength: 50n, sectors: 8n });
    expect(() => parseKoly(k, 149)).toThrow(DmgErrno);
    const k2 = Buffer.from(k);
    k2.writeBigUInt64BE(151n, 0x18);
    expect(() => parseKoly(k2, 150)).toThrow(DmgErrno);
    const k3 = Buffer.from(k);
    k3.writeBigInt64BE(-1n, 0x1ec);
    expect(() => parseKoly(k3, 150)).toThrow(DmgErrno);
    expect(diskSize(8n)).toBe(4096);
    expect(() => diskSize(1n << 54n)).toThrow('Could not refresh total sector count: File too large');
    expect(() => diskSize(1n << 55n)).toThrow('File too large'); // QEMU's product wraps to 0: a node without a size
  });

  it('mish blocks: skipped entries, offsets from the data fork and the block, limits with the table index', () => {
    const t = emptyTable();
    addMishBlock(t, mish([[UDRW, 0, 4, 10, 2048], [UDCM, 4, 0, 0, 0], [UDBZ, 4, 4, 0, 9], [0x1234, 8, 1, 0, 0], [UDZO, 8, 8, 2058, 300], [UDZE, 16, 1e9, 0, 0]], 100n, 7n), 1000n);
    expect(t.types).toEqual([UDRW, UDZO, UDZE]);
    expect(t.sectors).toEqual([100n, 108n, 116n]);
    expect(t.offsets).toEqual([1017n, 3065n, 1007n]);
    expect([t.maxSectors, t.maxCompressed]).toEqual([8, 300]);
    expect([...t.warnings]).toEqual(['dmg-bzip2 module is missing, accessing bzip2 compressed blocks will result in I/O errors',
      'Image contains chunks of unknown type 1234, accessing them will result in I/O errors']);
    expect(() => addMishBlock(t, mish([[UDZO, 0, 131073, 0, 1]]), 0n)).toThrow(expect.objectContaining({ report: 'sector count 131073 for chunk 3 is larger than max (131072)' }));
    expect(() => addMishBlock(emptyTable(), mish([[UDZE, 0, 1, 0, 64 * 1024 * 1024 + 1]]), 0n)).toThrow(expect.objectContaining({ report: 'length 67108865 for chunk 0 is larger than max (67108864)' }));
    // Not a mish block: too short, or another magic.
    const t2 = emptyTable();
    addMishBlock(t2, mish([[UDRW, 0, 1, 0, 512]]).subarray(0, 243), 0n);
    const other = mish([[UDRW, 0, 1, 0, 512], [UDRW, 1, 1, 0, 512]]);
    other.write('plst', 0, 'latin1');
    addMishBlock(t2, other, 0n);
    expect(t2.types).toEqual([]);
    // Sums wrap at 64 bits.
    addMishBlock(t2, mish([[UDZE, 10, 5, 0, 0]], (1n << 64n) - 4n), 0n);
    expect(t2.sectors).toEqual([6n]);
  });

  it('searches the table as QEMU: a binary search, sectors outside every chunk not found', () => {
    const t = emptyTable();
    addMishBlock(t, mish([[UDZE, 0, 10, 0, 0], [UDZE, 10, 0, 0, 0], [UDZE, 20, 5, 0, 0], [UDZE, 25, 5, 0, 0]]), 0n);
    expect([0, 9, 10, 15, 20, 24, 25, 29, 30, 1000].map((s) => searchChunk(t, BigInt(s)))).toEqual([0, 0, -1, -1, 2, 2, 3, 3, -1, -1]);
    expect(searchChunk(emptyTable(), 0n)).toBe(-1);
    expect(inChunk(t, 2, 22n)).toBe(true);
    expect(inChunk(t, 4, 22n)).toBe(false);
  });

  it('walks <data> elements of the plist up to its first NUL; a <data> without </data> is malformed', () => {
    const d = (s: string) => plistData(Buffer.from(s, 'latin1')).map((b) => b.toString('latin1'));
    expect(d('<a><data>QUJD</data><data>\n\tREVG\n</data></a>')).toEqual(['ABC', 'DEF']);
    expect(d('<data>QUJD</data>\0<data>REVG</data>')).toEqual(['ABC']);
    expect(() => d('<data>QUJD</data><data>REVG')).toThrow(DmgErrno);
    expect(() => d('<data>QUJD\0</data>')).toThrow(DmgErrno);
  });

  it("decodes base64 as the system's glib does (seeded strings with padding, junk and whitespace)", () => {
    const r = rng(3);
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n\t *-';
    const inputs = ['', 'QUJD', 'QU=D', 'Q=JD', 'QUJ=', 'QU==', 'QUJDRA==', '=QUJD', 'QUJD==E'];
    for (let i = 0; i < 300; i++) inputs.push(Array.from({ length: Math.floor(r() * 40) }, () => alphabet[Math.floor(r() * alphabet.length)]).join(''));
    const script = `import ctypes, ctypes.util, json, sys
g = ctypes.CDLL(ctypes.util.find_library("glib-2.0"))
g.g_base64_decode.restype = ctypes.c_void_p
g.g_base64_decode.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
out = []
for s in json.load(sys.stdin):
    n = ctypes.c_size_t()
    p = g.g_base64_decode(s.encode(), ctypes.byref(n))
    out.append(ctypes.string_at(p, n.value).hex())
print(json.dumps(out))
`;
    const glib = JSON.parse(run(SYSTEM_PYTHON, ['-c', script], { input: JSON.stringify(inputs) })) as string[];
    expect(inputs.map((s) => glibBase64(Buffer.from(s, 'latin1')).toString('hex'))).toEqual(glib);
  });
});
