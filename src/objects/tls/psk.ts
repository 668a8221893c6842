/**
 * tls-creds-psk (QEMU's crypto/tlscredspsk.c): pre-shared keys from
 * `dir/keys.psk`, one `username:hexkey` a line (the file
 * `psktool -u NAME -p keys.psk` writes). A server reads the file at every
 * handshake, as GnuTLS does, so keys can be added without a restart; a
 * client reads its own key (`username`, default "qemu") when the object is
 * made. dh-params.pem in `dir` is used if present.
 */
import { readFileSync } from 'node:fs';
import { BlockError } from '../../util/errors.ts';
import { errorText } from '../../platform/native.ts';
import { obj, opt } from '../../qapi/types.ts';
import type { ObjectTypeDef } from '../object-type.ts';
import { LOADED_MEMBER, TLS_CREDS_MEMBERS, baseOf, baseProperty, credsPath, type TlsCreds } from './creds.ts';

const TlsCredsPskProperties = obj('TlsCredsPskProperties', [
  ...TLS_CREDS_MEMBERS,
  LOADED_MEMBER,
  opt('username', 'str', 'the username which will be sent to the server.  For clients only. If absent, "qemu" is sent and the property will read back as an empty string.'),
]);

const fail = (text: string) => new BlockError('EINVAL', text);

export const tlsCredsPskType: ObjectTypeDef<TlsCreds> = {
  qomType: 'tls-creds-psk',
  properties: TlsCredsPskProperties,
  create(options) {
    const base = baseOf(options);
    const username = options.username as string | undefined;
    if (base.endpoint === 'server') {
      if (username !== undefined) throw fail('username should not be set when endpoint=server');
      const dh = credsPath(base.dir, 'dh-params.pem', false);
      const file = credsPath(base.dir, 'keys.psk', true)!;
      return { type: 'tls-creds-psk', ...base, psk: { file }, dhparam: dh ? readFileSync(dh) : undefined };
    }
    const file = credsPath(base.dir, 'keys.psk', true)!;
    const user = username ?? 'qemu';
    const hex = lookupKey(file, user);
    if (hex === undefined) throw fail(`Username ${user} not found in PSK file ${file}`);
    return { type: 'tls-creds-psk', ...base, psk: { file, username: user, key: hexKey(hex, file) } };
  },
  getProperty(c, name) {
    // QEMU reads back an empty string when the default "qemu" is used.
    if (name === 'username') return { value: c.endpoint === 'client' && c.psk?.username !== 'qemu' ? c.psk?.username ?? '' : '' };
    return baseProperty(c, name);
  },
};

/** The hex key of `username` in a keys file; undefined if it has none. Throws QEMU's text if the file cannot be read. */
export function lookupKey(file: string, username: string): string | undefined {
  let content: string;
  try {
    content = readFileSync(file, 'utf8');
  } catch (e) {
    throw fail(`Cannot read PSK file ${file}: Failed to open file \u201C${file}\u201D: ${errorText(e)}`);
  }
  for (const line of content.split('\n')) {
    if (line.startsWith(`${username}:`)) return line.slice(username.length + 1).trim();
  }
  return undefined;
}

/** A key as bytes; GnuTLS takes it as hex. */
export function hexKey(hex: string, file: string): Buffer {
  if (!/^([0-9a-fA-F]{2})+$/.test(hex)) throw fail(`Cannot set PSK client credentials: The key in ${file} is not in hexadecimal`);
  return Buffer.from(hex, 'hex');
}
