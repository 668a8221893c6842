/**
 * The pure crypto modules against published vectors: AES-XTS (IEEE 1619),
 * PBKDF2-HMAC-SHA1 (RFC 6070), and round trips of the anti-forensic splitter
 * and the sector ciphers (checked block by block against node:crypto, which
 * is a different code path from the addon's one-context-per-run loop).
 */
import { describe, expect, it } from 'vitest';
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { afMerge, afSplit } from '../../src/crypto/afsplit.ts';
import { pbkdf2 } from '../../src/crypto/pbkdf2.ts';
import { ASYNC_MIN, SectorCipher } from '../../src/crypto/sector-cipher.ts';
import type { CipherSpec } from '../../src/crypto/cipher-spec.ts';

const hex = (s: string) => Buffer.from(s, 'hex');
const xts = (alg: 'aes-128' | 'aes-256'): CipherSpec => ({
  cipherAlg: alg, cipherMode: 'xts', ivgenAlg: 'plain64', ivgenCipherAlg: alg, hashAlg: 'sha256', masterKeyLen: alg === 'aes-128' ? 32 : 64,
});

describe('AES-XTS sectors (IEEE 1619-2007 vectors)', () => {
  // [key1 || key2, data unit number, plaintext, ciphertext]; 32-byte data units.
  const vectors: [string, number, string, string][] = [
    ['11'.repeat(16) + '22'.repeat(16), 0x3333333333, '44'.repeat(32), 'c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0'],
    ['fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0' + '22'.repeat(16), 0x3333333333, '44'.repeat(32), 'af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89'],
    ['2718281828459045235360287471352662497757247093699959574966967627' + '3141592653589793238462643383279502884197169399375105820974944592', 0xff,
      '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', '1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b'],
  ];
  it.each(vectors)('key %s unit %d', (key, unit, plain, cipher) => {
    const spec = xts(key.length === 64 ? 'aes-128' : 'aes-256');
    const c = SectorCipher.create(spec, hex(key), 32);
    const buf = hex(plain);
    c.cryptSync(buf, unit, true);
    expect(buf.toString('hex')).toBe(cipher);
    c.cryptSync(buf, unit, false);
    expect(buf.toString('hex')).toBe(plain);
    c.wipe();
  });
});

/** node:crypto, one cipher per sector: the slow, obviously right reference. */
function reference(spec: CipherSpec, key: Buffer, data: Buffer, sector: number, encrypt: boolean): Buffer {
  const out = Buffer.alloc(data.length);
  const ossl = `${spec.cipherAlg}-${spec.cipherMode}`;
  const essivKey = spec.ivgenAlg === 'essiv' ? createHash(spec.ivgenHashAlg!).update(key).digest() : undefined;
  for (let i = 0; i < data.length / 512; i++) {
    let iv = Buffer.alloc(16);
    if (spec.ivgenAlg === 'plain') iv.writeUInt32LE((sector + i) % 2 ** 32, 0);
    else iv.writeBigUInt64LE(BigInt(sector + i), 0);
    if (essivKey) {
      const e = createCipheriv(`aes-${essivKey.length * 8}-ecb`, essivKey, null).setAutoPadding(false);
      iv = e.update(iv);
    }
    const c = (encrypt ? createCipheriv : createDecipheriv)(ossl, key, iv).setAutoPadding(false);
    c.update(data.subarray(i * 512, (i + 1) * 512)).copy(out, i * 512);
  }
  return out;
}

describe('sector ciphers match one node:crypto cipher per sector', () => {
  const specs: [string, CipherSpec][] = [
    ['aes-256-xts-plain64', xts('aes-256')],
    ['aes-128-xts-plain64', xts('aes-128')],
    ['aes-256-cbc-plain64', { cipherAlg: 'aes-256', cipherMode: 'cbc', ivgenAlg: 'plain64', ivgenCipherAlg: 'aes-256', hashAlg: 'sha256', masterKeyLen: 32 }],
    ['aes-128-cbc-essiv:sha256', { cipherAlg: 'aes-128', cipherMode: 'cbc', ivgenAlg: 'essiv', ivgenHashAlg: 'sha256', ivgenCipherAlg: 'aes-256', hashAlg: 'sha256', masterKeyLen: 16 }],
    ['aes-256-cbc-essiv:sha256', { cipherAlg: 'aes-256', cipherMode: 'cbc', ivgenAlg: 'essiv', ivgenHashAlg: 'sha256', ivgenCipherAlg: 'aes-256', hashAlg: 'sha256', masterKeyLen: 32 }],
    ['aes-256-xts-plain', { ...xts('aes-256'), ivgenAlg: 'plain' }],
  ];
  it.each(specs)('%s, inline and on the thread pool', async (_name, spec) => {
    const key = randomBytes(spec.masterKeyLen);
    const c = SectorCipher.create(spec, key);
    // Sector numbers past 2^32 show plain's truncation and plain64's full width.
    for (const [len, sector] of [[4096, 5], [ASYNC_MIN * 2, 2 ** 32 - 3]] as const) {
      const plain = randomBytes(len);
      const buf = Buffer.from(plain);
      const p = c.crypt(buf, sector, true);
      expect(p === undefined).toBe(len < ASYNC_MIN);
      await p;
      expect(buf.equals(reference(spec, key, plain, sector, true))).toBe(true);
      await c.crypt(buf, sector, false);
      expect(buf.equals(plain)).toBe(true);
      // Out of place (a write's bounce buffer): the same ciphertext, the input untouched.
      const out = Buffer.alloc(len);
      const q = c.cryptInto(buf, out, sector, true);
      expect(q === undefined).toBe(len < ASYNC_MIN);
      await q;
      expect(buf.equals(plain)).toBe(true);
      expect(out.equals(reference(spec, key, plain, sector, true))).toBe(true);
    }
    expect(() => c.cryptInto(Buffer.alloc(1024), Buffer.alloc(512), 0, true)).toThrow(/length differs/);
    const shared = Buffer.alloc(2048);
    expect(() => c.cryptInto(shared.subarray(0, 1024), shared.subarray(512, 1536), 0, true)).toThrow(/overlaps/);
    c.wipe();
    expect(() => c.cryptSync(Buffer.alloc(512), 0, true)).toThrow(/wiped/);
  });
});

describe('PBKDF2 (RFC 6070 HMAC-SHA1 vectors)', () => {
  const vectors: [string, string, number, number, string][] = [
    ['password', 'salt', 1, 20, '0c60c80f961f0e71f3a9b524af6012062fe037a6'],
    ['password', 'salt', 2, 20, 'ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957'],
    ['password', 'salt', 4096, 20, '4b007901b765489abead49d926f721d065a429c1'],
    ['passwordPASSWORDpassword', 'saltSALTsaltSALTsaltSALTsaltSALTsalt', 4096, 25, '3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038'],
    ['pass\0word', 'sa\0lt', 4096, 16, '56fa6aa75548099dcc37d7f03425e0c3'],
  ];
  it.each(vectors)('%j / %j, %d iterations', async (pw, salt, iters, len, out) => {
    expect((await pbkdf2('sha1', Buffer.from(pw), Buffer.from(salt), iters, len)).toString('hex')).toBe(out);
  });
});

describe('anti-forensic splitter', () => {
  it.each(['sha1', 'sha256', 'sha512'] as const)('split then merge gives the key back (%s, 64- and 20-byte keys)', (hash) => {
    for (const keyLen of [64, 20, 33]) {
      const key = randomBytes(keyLen);
      const split = afSplit(hash, key, 4000);
      expect(split.length).toBe(keyLen * 4000);
      expect(afMerge(hash, split, keyLen, 4000).equals(key)).toBe(true);
      // Any damaged stripe destroys the key.
      split[keyLen * 1234] ^= 1;
      expect(afMerge(hash, split, keyLen, 4000).equals(key)).toBe(false);
    }
  });

  it('is the diffusion cryptsetup defines (a 2-stripe split computed by hand)', () => {
    // d = H(s0), where H hashes 32-byte pieces as sha256(be32(i) || piece); last = d xor key.
    const key = randomBytes(40);
    const split = afSplit('sha256', key, 2);
    const s0 = split.subarray(0, 40);
    const d = Buffer.concat([
      createHash('sha256').update(Buffer.from([0, 0, 0, 0])).update(s0.subarray(0, 32)).digest(),
      createHash('sha256').update(Buffer.from([0, 0, 0, 1])).update(s0.subarray(32, 40)).digest().subarray(0, 8),
    ]);
    for (let i = 0; i < 40; i++) d[i] ^= key[i];
    expect(split.subarray(40).equals(d)).toBe(true);
  });
});
