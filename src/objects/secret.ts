/**
 * secret: a password or key (data=, file=, format=raw|base64, optionally
 * AES-256-CBC encrypted with another secret: keyid= and iv=), looked up by id
 * by the drivers that need one (LUKS) through ObjectLookup.secret().
 * QEMU's crypto/secret_common.c, with its error texts.
 */
import { readFileSync } from 'node:fs';
import { createDecipheriv } from 'node:crypto';
import { BlockError } from '../util/errors.ts';
import { errorText } from '../platform/native.ts';
import { enm, obj, opt } from '../qapi/types.ts';
import type { ObjectTypeDef } from './object-type.ts';
import type { ObjectLookup } from './lookup.ts';

export const QCryptoSecretFormat = enm('QCryptoSecretFormat', ['raw', 'base64'], 'The data format that the secret is provided in');

const SecretProperties = obj('SecretProperties', [
  opt('loaded', 'bool', 'if true, the secret is loaded immediately when applying this option (deprecated; always true)'),
  opt('format', QCryptoSecretFormat, 'the data format that the secret is provided in (default: raw)'),
  opt('keyid', 'str', 'the name of another secret that should be used to decrypt the provided data'),
  opt('iv', 'str', 'the random initialization vector used for encryption of this particular secret (base64)'),
  opt('data', 'str', 'the associated with the object'),
  opt('file', 'str', 'the filename to load the data associated with the object from'),
]);

/** A loaded secret: its bytes, decrypted and decoded. */
export interface Secret { readonly bytes: Buffer }

export const secretType: ObjectTypeDef<Secret> = {
  qomType: 'secret',
  properties: SecretProperties,
  create: (options, objects) => ({ bytes: loadSecret(options, objects) }),
};

function loadSecret(o: Record<string, unknown>, objects: ObjectLookup): Buffer {
  const data = o.data as string | undefined;
  const file = o.file as string | undefined;
  if (data !== undefined && file !== undefined) throw new BlockError('EINVAL', "'file' and 'data' are mutually exclusive");
  if (data === undefined && file === undefined) throw new BlockError('EINVAL', "Either 'file' or 'data' must be provided");
  let input: Buffer;
  if (file !== undefined) {
    try {
      input = readFileSync(file);
    } catch (e) {
      throw new BlockError('EINVAL', `Unable to read ${file}: Failed to open file \u201C${file}\u201D: ${errorText(e)}`);
    }
  } else {
    input = Buffer.from(data!, 'utf8');
  }
  const base64 = o.format === 'base64';
  if (o.keyid !== undefined) {
    const key = objects.secret(o.keyid as string);
    if (key.length !== 32) throw new BlockError('EINVAL', `Key secret length ${key.length} must be 32 bytes`);
    if (o.iv === undefined) throw new BlockError('EINVAL', 'IV is required to decrypt secret');
    const iv = decodeBase64(o.iv as string);
    if (iv.length !== 16) throw new BlockError('EINVAL', `IV is ${iv.length} bytes but must be 16 bytes`);
    const cipher = base64 ? decodeBase64(input.toString('latin1')) : input;
    try {
      const d = createDecipheriv('aes-256-cbc', key, iv);
      return Buffer.concat([d.update(cipher), d.final()]);
    } catch {
      throw new BlockError('EINVAL', 'Incorrect number of padding bytes');
    }
  }
  return base64 ? decodeBase64(input.toString('latin1')) : input;
}

/** Strict base64 as glib decodes it for QEMU: anything but the alphabet, padding and whitespace is refused. */
function decodeBase64(s: string): Buffer {
  const t = s.replace(/[\s]/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(t) || t.length % 4 === 1) throw new BlockError('EINVAL', 'Base64 data contains invalid characters');
  return Buffer.from(t, 'base64');
}
