/**
 * Comparing how two image files are allocated on this file system, robustly.
 * st_blocks (qemu-img info's actual-size) also counts the file system's own
 * metadata: an ext4 file written while others write beside it can come out
 * in more than four extents and get an extent-tree block (4 KiB) more than
 * its twin written in a quiet moment. So files compare by their data map
 * (SEEK_DATA/SEEK_HOLE, exact) and by st_blocks within EXTENT_SLACK_BYTES.
 */
import { closeSync, openSync, statSync } from 'node:fs';
import { expect } from 'vitest';
import { native } from '../../src/platform/native.ts';

/** Two extent-tree blocks: more than enough for test images, far less than any real allocation difference. */
export const EXTENT_SLACK_BYTES = 8192;

/** The file's data ranges, [start, end) pairs, from SEEK_DATA/SEEK_HOLE. */
export function dataMap(path: string): [number, number][] {
  const fd = openSync(path, 'r');
  try {
    const out: [number, number][] = [];
    const size = statSync(path).size;
    for (let pos = 0; pos < size;) {
      const data = native().seekData(fd, pos);
      if (data < 0) break;
      const hole = native().seekHole(fd, data);
      out.push([data, hole < 0 ? size : hole]);
      pos = hole < 0 ? size : hole;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/** Expects `actual` allocated as `expected`: the same data map, st_blocks equal up to the slack. */
export function expectSameAllocation(actual: string, expected: string): void {
  expect(dataMap(actual)).toEqual(dataMap(expected));
  expect(Math.abs(statSync(actual).blocks - statSync(expected).blocks) * 512).toBeLessThanOrEqual(EXTENT_SLACK_BYTES);
}

/** Expects two qemu-img info actual-size values equal up to the slack. */
export function expectSameActualSize(actual: number, expected: number): void {
  expect(Math.abs(actual - expected)).toBeLessThanOrEqual(EXTENT_SLACK_BYTES);
}
