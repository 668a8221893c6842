/**
 * What driver=rbd hands the addon for encrypt (QEMU's
 * qemu_rbd_convert_luks_options / _create_options): librbd's format and
 * cipher numbers, the secret's bytes, or QEMU's text for a refusal.
 */
import { describe, expect, it } from 'vitest';
import { encryptOptions, rbdErrorText } from '../../src/blockdev/drivers/rbd/options.ts';
import type { ObjectLookup } from '../../src/objects/lookup.ts';

const objects: ObjectLookup = {
  secret(id) { if (id !== 'pw') throw new Error(`No secret with id '${id}'`); return Buffer.from('sesame'); },
  lookup: () => undefined,
  type: () => undefined,
  use: () => () => undefined,
};

describe('rbd encrypt options', () => {
  it('maps the format and cipher to librbd numbers, aes-256 by default', () => {
    expect(encryptOptions({ format: 'luks', 'key-secret': 'pw' }, objects)).toEqual({ format: 0, alg: 1, passphrase: Buffer.from('sesame') });
    expect(encryptOptions({ format: 'luks2', 'key-secret': 'pw', 'cipher-alg': 'aes-128' }, objects)).toEqual({ format: 1, alg: 0, passphrase: Buffer.from('sesame') });
    expect(encryptOptions({ format: 'luks2', 'key-secret': 'pw', 'cipher-alg': 'aes-256' }, objects)).toMatchObject({ format: 1, alg: 1 });
  });
  it('refuses with the secret lookup\'s text, then with the cipher\'s enum number', () => {
    expect(encryptOptions({ format: 'luks', 'key-secret': 'nosuch', 'cipher-alg': 'des' }, objects)).toMatchObject({ refused: true, refusal: "No secret with id 'nosuch'" });
    const e = encryptOptions({ format: 'luks', 'key-secret': 'pw', 'cipher-alg': 'twofish-128' }, objects);
    expect(e).toMatchObject({ refused: true, refusal: 'unknown encryption algorithm: 9: Operation not supported' });
    expect(e.passphrase).toBeUndefined();
    const c = { pool: 'rbd', image: 'disk', cache: false, encrypt: e };
    expect(rbdErrorText({ stage: 'encryption options', reason: 'Invalid argument', message: '' }, c)).toBe('unknown encryption algorithm: 9: Operation not supported');
    expect(rbdErrorText({ stage: 'encryption load fail', reason: 'Operation not permitted', message: '' }, c)).toBe('encryption load fail: Operation not permitted');
    expect(rbdErrorText({ stage: 'error opening image for encryption format', reason: 'No such file or directory', message: '' }, c)).toBe("error opening image 'disk' for encryption format: No such file or directory");
  });
});
