/**
 * tls-creds-anon (QEMU's crypto/tlscredsanon.c): TLS with anonymous
 * Diffie-Hellman, no certificates. It encrypts but authenticates nobody
 * (a man in the middle is not noticed), and it has no identity to
 * authorize: a server with tls-authz refuses it (src/nbd/start.ts).
 * dh-params.pem in `dir` is used if present (a server's).
 */
import { readFileSync } from 'node:fs';
import { obj } from '../../qapi/types.ts';
import type { ObjectTypeDef } from '../object-type.ts';
import { LOADED_MEMBER, TLS_CREDS_MEMBERS, baseOf, baseProperty, credsPath, type TlsCreds } from './creds.ts';

const TlsCredsAnonProperties = obj('TlsCredsAnonProperties', [...TLS_CREDS_MEMBERS, LOADED_MEMBER]);

export const tlsCredsAnonType: ObjectTypeDef<TlsCreds> = {
  qomType: 'tls-creds-anon',
  properties: TlsCredsAnonProperties,
  create(options) {
    const base = baseOf(options);
    const dh = base.endpoint === 'server' ? credsPath(base.dir, 'dh-params.pem', false) : undefined;
    return { type: 'tls-creds-anon', ...base, dhparam: dh ? readFileSync(dh) : undefined };
  },
  getProperty: baseProperty,
};
