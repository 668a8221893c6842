/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), as VHDX's
 * checksums use it: node:zlib has only CRC-32 and the native addon none.
 * Table-driven, sliced by four bytes. Pure.
 */
const TABLES: Uint32Array[] = (() => {
  const t = [0, 1, 2, 3].map(() => new Uint32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[0][n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    for (let s = 1; s < 4; s++) t[s][n] = (t[s - 1][n] >>> 8) ^ t[0][t[s - 1][n] & 0xff];
  }
  return t;
})();

/** Continues a CRC-32C over `data` from the register value `state` (0xffffffff to start); returns the register, not yet inverted. */
export function crc32cUpdate(state: number, data: Uint8Array): number {
  const [t0, t1, t2, t3] = TABLES;
  let c = state >>> 0;
  let i = 0;
  const n4 = data.length & ~3;
  for (; i < n4; i += 4) {
    c ^= data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24);
    c = t3[c & 0xff] ^ t2[(c >>> 8) & 0xff] ^ t1[(c >>> 16) & 0xff] ^ t0[c >>> 24];
  }
  for (; i < data.length; i++) c = t0[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

/** The CRC-32C of `data` (standard: register starts at all ones, result inverted). */
export function crc32c(data: Uint8Array): number {
  return (crc32cUpdate(0xffffffff, data) ^ 0xffffffff) >>> 0;
}
