import { describe, it, expect } from 'vitest';
import { DetectZeroes, detectZeroesMode, isAllZero } from '../../src/blockdev/detect-zeroes.ts';

describe('isAllZero', () => {
  it('finds a non-zero byte anywhere, in buffers of any size (pieces of the scan, their edges)', () => {
    for (const len of [1, 2, 3, 511, 4096, 65535, 65536, 65537, 3 * 65536 + 17]) {
      const b = Buffer.alloc(len);
      expect(isAllZero(b)).toBe(true);
      for (const at of new Set([0, 1, len >> 1, 65535, 65536, 65537, len - 2, len - 1].filter((x) => x >= 0 && x < len))) {
        b[at] = 1;
        expect(isAllZero(b), `len ${len}, byte ${at}`).toBe(false);
        b[at] = 0;
      }
    }
    expect(isAllZero(Buffer.alloc(0))).toBe(true);
  });

  it('looks only at its view of a larger buffer', () => {
    const b = Buffer.alloc(200_000, 1);
    b.fill(0, 1000, 150_000);
    expect(isAllZero(b.subarray(1000, 150_000))).toBe(true);
    expect(isAllZero(b.subarray(999, 150_000))).toBe(false);
    expect(isAllZero(b.subarray(1000, 150_001))).toBe(false);
  });
});

describe('detectZeroesMode', () => {
  it('parses the option as QEMU: unmap needs discard=unmap', () => {
    expect(detectZeroesMode({})).toBe(DetectZeroes.OFF);
    expect(detectZeroesMode({ 'detect-zeroes': 'off', discard: 'unmap' })).toBe(DetectZeroes.OFF);
    expect(detectZeroesMode({ 'detect-zeroes': 'on' })).toBe(DetectZeroes.ON);
    expect(detectZeroesMode({ 'detect-zeroes': 'unmap', discard: 'unmap' })).toBe(DetectZeroes.UNMAP);
    expect(() => detectZeroesMode({ 'detect-zeroes': 'unmap' }))
      .toThrow('setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
    expect(() => detectZeroesMode({ 'detect-zeroes': 'unmap', discard: 'ignore' })).toThrow(/not allowed/);
  });
});
