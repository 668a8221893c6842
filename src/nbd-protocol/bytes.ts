/**
 * 64-bit fields as JavaScript numbers. NBD offsets and sizes are 64-bit on
 * the wire; through BigInt each read or write allocates, which on the data
 * path cost as much as the rest of a header. Values above 2^53 lose
 * precision; no export is that large.
 */

/** Writes a safe non-negative integer as a big-endian uint64 at `at`. */
export function writeU64(b: Buffer, value: number, at: number): void {
  b.writeUInt32BE(Math.floor(value / 0x100000000), at);
  b.writeUInt32BE(value >>> 0, at + 4);
}

/** Reads a big-endian uint64 at `at` (imprecise above 2^53). */
export function readU64(b: Buffer, at: number): number {
  return b.readUInt32BE(at) * 0x100000000 + b.readUInt32BE(at + 4);
}

export const EMPTY = Buffer.alloc(0);
