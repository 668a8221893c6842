/**
 * Format probing (QEMU's bdrv_find_format/find_image_format): every driver
 * with a probe() hook scores the first bytes of the file; the best score
 * wins and raw, which claims nothing, is the fallback. The table is the
 * graph's driver registry, so a new format probes by being registered.
 */
import { open } from 'node:fs/promises';
import { BlockError } from '../util/errors.ts';
import type { Driver } from './driver.ts';

/** QEMU's BLOCK_PROBE_BUF_SIZE: how much of the file the hooks see. */
export const PROBE_BYTES = 512;

/** The format of an image's first bytes: the driver with the best score, 'raw' when none claims them. */
export function probeBytes(drivers: Iterable<Driver>, head: Buffer, filename: string): string {
  let best = 'raw';
  let score = 0;
  for (const d of drivers) {
    const s = d.probe?.(head, filename) ?? 0;
    if (s > score) { best = d.name; score = s; }
  }
  return best;
}

/** Reads the start of `filename` and probes it; a file that cannot be opened: "Could not open 'x': why". */
export async function probeFile(drivers: Iterable<Driver>, filename: string): Promise<string> {
  let fh;
  try {
    fh = await open(filename, 'r');
  } catch (e) {
    throw new BlockError('ENOENT', `Could not open '${filename}': ${(e as Error).message}`);
  }
  try {
    const head = Buffer.alloc(PROBE_BYTES);
    const { bytesRead } = await fh.read(head, 0, PROBE_BYTES, 0);
    // QEMU: an empty file is raw; a shorter one is probed with zeroes after its end.
    if (bytesRead === 0) return 'raw';
    return probeBytes(drivers, head, filename);
  } finally {
    await fh.close();
  }
}
