/**
 * The anti-forensic information splitter of LUKS (cryptsetup's AF_split /
 * AF_merge, QEMU crypto/afsplit.c): a key of n bytes is stored as `stripes`
 * blocks of n bytes, all but the last random, so that destroying any part of
 * the stored material destroys the key.
 *
 *   d = 0; for each stripe s_i but the last: d = H(d xor s_i)
 *   last stripe = d xor key
 *
 * where H, the diffuser, hashes the block in digest-sized pieces, piece i as
 * hash(be32(i) || piece), keeping as many bytes of each digest as the piece has.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { DIGEST_LEN, type HashAlg } from './cipher-spec.ts';

function diffuse(hash: HashAlg, block: Buffer): void {
  const digestLen = DIGEST_LEN[hash];
  const index = Buffer.alloc(4);
  for (let i = 0, at = 0; at < block.length; i++, at += digestLen) {
    const piece = block.subarray(at, Math.min(at + digestLen, block.length));
    index.writeUInt32BE(i, 0);
    const digest = createHash(hash).update(index).update(piece).digest();
    digest.copy(piece, 0, 0, piece.length);
  }
}

function xorInto(dst: Buffer, src: Buffer): void {
  for (let i = 0; i < dst.length; i++) dst[i] ^= src[i];
}

/** Splits `key` into `stripes` blocks (the result is key.length * stripes bytes). */
export function afSplit(hash: HashAlg, key: Buffer, stripes: number): Buffer {
  const n = key.length;
  const out = Buffer.alloc(n * stripes);
  randomFillSync(out, 0, n * (stripes - 1));
  const d = Buffer.alloc(n);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, out.subarray(i * n, (i + 1) * n));
    diffuse(hash, d);
  }
  xorInto(d, key);
  d.copy(out, n * (stripes - 1));
  d.fill(0);
  return out;
}

/** Joins split material back into the key of `keyLen` bytes. */
export function afMerge(hash: HashAlg, split: Buffer, keyLen: number, stripes: number): Buffer {
  const d = Buffer.alloc(keyLen);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, split.subarray(i * keyLen, (i + 1) * keyLen));
    diffuse(hash, d);
  }
  xorInto(d, split.subarray((stripes - 1) * keyLen, stripes * keyLen));
  return d;
}
