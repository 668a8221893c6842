/**
 * What a LUKS header's cipher fields mean: the cipher name ("aes"), the mode
 * string "<mode>-<ivgen>[:<ivhash>]" ("xts-plain64", "cbc-essiv:sha256") and
 * the key length, resolved to QAPI's algorithm names in QEMU's order, with
 * QEMU's error texts (crypto/block-luks.c parse_header), and mapped to the
 * OpenSSL ciphers blockd runs them with.
 */
import { BlockError } from '../util/errors.ts';

export const CIPHER_ALGS = ['aes-128', 'aes-192', 'aes-256', 'des', '3des', 'cast5-128', 'serpent-128', 'serpent-192', 'serpent-256', 'twofish-128', 'twofish-192', 'twofish-256'] as const;
export const CIPHER_MODES = ['ecb', 'cbc', 'xts', 'ctr'] as const;
export const IVGEN_ALGS = ['plain', 'plain64', 'essiv'] as const;
export const HASH_ALGS = ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'] as const;

export type CipherAlg = (typeof CIPHER_ALGS)[number];
export type CipherMode = (typeof CIPHER_MODES)[number];
export type IvgenAlg = (typeof IVGEN_ALGS)[number];
export type HashAlg = (typeof HASH_ALGS)[number];

export const DIGEST_LEN: Record<HashAlg, number> = { md5: 16, sha1: 20, sha224: 28, sha256: 32, sha384: 48, sha512: 64, ripemd160: 20 };

/** The LUKS cipher names with their algorithms by key size (QEMU's name map; des and 3des have no LUKS name). */
const LUKS_CIPHER_NAMES: Record<string, Record<number, CipherAlg>> = {
  aes: { 16: 'aes-128', 24: 'aes-192', 32: 'aes-256' },
  cast5: { 16: 'cast5-128' },
  serpent: { 16: 'serpent-128', 24: 'serpent-192', 32: 'serpent-256' },
  twofish: { 16: 'twofish-128', 24: 'twofish-192', 32: 'twofish-256' },
};

export const KEY_LEN: Record<CipherAlg, number> = {
  'aes-128': 16, 'aes-192': 24, 'aes-256': 32, des: 8, '3des': 24, 'cast5-128': 16,
  'serpent-128': 16, 'serpent-192': 24, 'serpent-256': 32, 'twofish-128': 16, 'twofish-192': 24, 'twofish-256': 32,
};

export interface CipherSpec {
  cipherAlg: CipherAlg;
  cipherMode: CipherMode;
  ivgenAlg: IvgenAlg;
  /** Present when the mode string names one (used only by essiv; dm-crypt ignores it otherwise). */
  ivgenHashAlg?: HashAlg;
  /** The cipher ESSIV encrypts IVs with: keyed by the hash of the master key, so sized by the digest. */
  ivgenCipherAlg: CipherAlg;
  /** The hash of PBKDF2 and the anti-forensic splitter. */
  hashAlg: HashAlg;
  /** Bytes of the master key (twice the cipher's key for XTS). */
  masterKeyLen: number;
}

function lookup<T extends string>(names: readonly T[], name: string, what: string): T {
  if (!(names as readonly string[]).includes(name)) throw new BlockError('ENOTSUP', `${what} '${name}' not supported`);
  return name as T;
}

/** The LUKS name of an algorithm ("aes" for aes-256), for the header QEMU writes. */
export function luksCipherName(alg: CipherAlg): string {
  for (const [name, sizes] of Object.entries(LUKS_CIPHER_NAMES)) if (Object.values(sizes).includes(alg)) return name;
  throw new BlockError('ENOTSUP', `Algorithm '${alg}' not supported`);
}

/** QEMU's essiv cipher: the same family with a key as long as the IV hash's digest. */
export function essivCipher(cipher: CipherAlg, hash: HashAlg): CipherAlg {
  const digestLen = DIGEST_LEN[hash];
  if (KEY_LEN[cipher] === digestLen) return cipher;
  const family = cipher.split('-')[0];
  const sized = LUKS_CIPHER_NAMES[family];
  if (family === 'cast5' || !sized || cipher === 'des' || cipher === '3des') throw new BlockError('ENOTSUP', `Cipher ${cipher} not supported with essiv`);
  const alg = sized[digestLen];
  const title = family === 'aes' ? 'AES' : family[0].toUpperCase() + family.slice(1);
  if (!alg) throw new BlockError('ENOTSUP', `No ${title} cipher with key size ${digestLen} available`);
  return alg;
}

/** Resolves a header's cipher fields, checking them in QEMU's order. */
export function parseCipherSpec(cipherName: string, cipherModeSpec: string, hashSpec: string, masterKeyLen: number): CipherSpec {
  const dash = cipherModeSpec.indexOf('-');
  if (dash < 0) throw new BlockError('EINVAL', `Unexpected cipher mode string format '${cipherModeSpec}'`);
  const modeName = cipherModeSpec.slice(0, dash);
  let ivgenName = cipherModeSpec.slice(dash + 1);
  let ivgenHashAlg: HashAlg | undefined;
  const colon = ivgenName.indexOf(':');
  if (colon >= 0) {
    ivgenHashAlg = lookup(HASH_ALGS, ivgenName.slice(colon + 1), 'Hash algorithm');
    ivgenName = ivgenName.slice(0, colon);
  }
  const cipherMode = lookup(CIPHER_MODES, modeName, 'Cipher mode');
  const keyBytes = cipherMode === 'xts' ? masterKeyLen / 2 : masterKeyLen;
  const cipherAlg = LUKS_CIPHER_NAMES[cipherName]?.[keyBytes];
  if (!cipherAlg) throw new BlockError('ENOTSUP', `Algorithm '${cipherName}' with key size ${Math.trunc(keyBytes)} bytes not supported`);
  const hashAlg = lookup(HASH_ALGS, hashSpec, 'Hash algorithm');
  const ivgenAlg = lookup(IVGEN_ALGS, ivgenName, 'IV generator');
  let ivgenCipherAlg = cipherAlg;
  if (ivgenAlg === 'essiv') {
    if (!ivgenHashAlg) throw new BlockError('EINVAL', 'Missing IV generator hash specification');
    ivgenCipherAlg = essivCipher(cipherAlg, ivgenHashAlg);
  }
  return { cipherAlg, cipherMode, ivgenAlg, ivgenHashAlg, ivgenCipherAlg, hashAlg, masterKeyLen };
}

/**
 * The OpenSSL cipher for an algorithm and mode, or a refusal: blockd runs
 * what the OpenSSL inside node has (AES in ecb/cbc/ctr/xts, but no
 * aes-192-xts); QEMU's nettle/gnutls backends also have serpent, twofish and
 * cast5.
 */
export function opensslCipher(alg: CipherAlg, mode: CipherMode): string {
  if (alg.startsWith('aes-') && !(mode === 'xts' && alg === 'aes-192')) return `${alg}-${mode}`;
  throw new BlockError('ENOTSUP', `Cipher '${alg}' in mode '${mode}' is not supported by blockd`);
}
