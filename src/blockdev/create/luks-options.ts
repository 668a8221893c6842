/** QAPI's QCryptoBlockCreateOptionsLUKS members, shared by blockdev-create's luks and qcow2 (encrypt.*). */
import { enm, opt } from '../../qapi/types.ts';
import { CIPHER_ALGS, CIPHER_MODES, HASH_ALGS, IVGEN_ALGS } from '../../crypto/cipher-spec.ts';
import type { Luks1CreateOptions } from '../../crypto/luks1-create.ts';

export const QCryptoCipherAlgorithm = enm('QCryptoCipherAlgorithm', [...CIPHER_ALGS], 'The supported algorithms for content encryption ciphers');
export const QCryptoCipherMode = enm('QCryptoCipherMode', [...CIPHER_MODES], 'The supported modes for content encryption ciphers');
export const QCryptoIVGenAlgorithm = enm('QCryptoIVGenAlgorithm', [...IVGEN_ALGS], 'The supported algorithms for generating initialization vectors for full disk encryption');
export const QCryptoHashAlgorithm = enm('QCryptoHashAlgorithm', [...HASH_ALGS], 'The supported algorithms for computing content digests');

export const QCRYPTO_LUKS_CREATE_MEMBERS = [
  opt('key-secret', 'str', 'the ID of a QCryptoSecret object providing the decryption key'),
  opt('cipher-alg', QCryptoCipherAlgorithm, 'the cipher algorithm for data encryption (default: aes-256)'),
  opt('cipher-mode', QCryptoCipherMode, 'the cipher mode for data encryption (default: xts)'),
  opt('ivgen-alg', QCryptoIVGenAlgorithm, 'the initialization vector generator (default: plain64)'),
  opt('ivgen-hash-alg', QCryptoHashAlgorithm, 'the initialization vector generator hash (default: sha256)'),
  opt('hash-alg', QCryptoHashAlgorithm, 'the master key hash algorithm (default: sha256)'),
  opt('iter-time', 'int', 'number of milliseconds to spend in PBKDF passphrase processing (default: 2000)'),
];

/** The values of those members. */
export interface LuksCreateMembers {
  'key-secret'?: string;
  'cipher-alg'?: Luks1CreateOptions['cipherAlg'];
  'cipher-mode'?: Luks1CreateOptions['cipherMode'];
  'ivgen-alg'?: Luks1CreateOptions['ivgenAlg'];
  'ivgen-hash-alg'?: Luks1CreateOptions['ivgenHashAlg'];
  'hash-alg'?: Luks1CreateOptions['hashAlg'];
  'iter-time'?: number;
}

/** The creation options of QCryptoBlockCreateOptionsLUKS, in crypto/'s terms. */
export function luksCreateOptions(o: LuksCreateMembers): Luks1CreateOptions {
  return { cipherAlg: o['cipher-alg'], cipherMode: o['cipher-mode'], ivgenAlg: o['ivgen-alg'], ivgenHashAlg: o['ivgen-hash-alg'], hashAlg: o['hash-alg'], iterTime: o['iter-time'] };
}
