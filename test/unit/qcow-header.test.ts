/** The qcow (v1) header (src/blockdev/drivers/qcow/header.ts): QEMU's checks and texts. */
import { describe, it, expect } from 'vitest';
import { parseQcowHeader, probeQcow, QCOW_MAGIC } from '../../src/blockdev/drivers/qcow/header.ts';

function header(edit: (b: Buffer) => void = () => undefined): Buffer {
  const b = Buffer.alloc(48);
  b.writeUInt32BE(QCOW_MAGIC, 0);
  b.writeUInt32BE(1, 4);
  b.writeBigUInt64BE(6n << 20n, 24);
  b[32] = 12; b[33] = 9;
  b.writeBigUInt64BE(48n, 40);
  edit(b);
  return b;
}

describe('qcow header', () => {
  it('parses a valid header: size, cluster and L2 bits, L1 size', () => {
    expect(parseQcowHeader(header())).toMatchObject({ size: 6 << 20, clusterBits: 12, l2Bits: 9, l1Size: 3, cryptMethod: 0 });
    expect(probeQcow(header())).toBe(100);
    expect(probeQcow(header((b) => b.writeUInt32BE(2, 4)))).toBe(0);
  });
  const cases: [string, (b: Buffer) => void, string][] = [
    ['magic', (b) => b.writeUInt32BE(1, 0), 'Image not in qcow format'],
    ['version', (b) => b.writeUInt32BE(2, 4), 'qcow (v1) does not support qcow version 2'],
    ['size', (b) => b.writeBigUInt64BE(1n, 24), 'Image size is too small (must be at least 2 bytes)'],
    ['cluster bits', (b) => { b[32] = 17; }, 'Cluster size must be between 512 and 64k'],
    ['L2 bits', (b) => { b[33] = 5; }, 'L2 table size must be between 512 and 64k'],
    ['a size too large for the L1 table', (b) => { b.writeBigUInt64BE(2n ** 62n, 24); b[32] = 9; b[33] = 6; }, 'Image too large'],
  ];
  for (const [name, edit, msg] of cases) it(`refuses a bad ${name} with QEMU's message`, () => expect(() => parseQcowHeader(header(edit))).toThrow(msg));
});
