/**
 * Finding the TLS credentials a server names (QEMU's nbd_get_tls_creds and
 * the chardev's equivalent), with QEMU's texts, and the one check blockd
 * adds: a tls-authz needs an identity to authorize, which anonymous
 * credentials and x509 with verify-peer=off do not give (qsd 7.2 then
 * serves everyone, the authz object notwithstanding).
 */
import { BlockError } from '../../util/errors.ts';
import type { ObjectLookup } from '../lookup.ts';
import { TLS_CREDS_TYPES, type TlsCreds } from './creds.ts';

export function findTlsCreds(objects: ObjectLookup, id: string, endpoint: 'client' | 'server'): TlsCreds {
  const type = objects.type(id);
  if (type === undefined) throw new BlockError('ENOENT', `No TLS credentials with id '${id}'`);
  if (!(TLS_CREDS_TYPES as readonly string[]).includes(type)) throw new BlockError('EINVAL', `Object with id '${id}' is not TLS credentials`);
  const creds = objects.lookup<TlsCreds>(id, type)!;
  if (creds.endpoint !== endpoint) throw new BlockError('EINVAL', `Expected TLS credentials for a ${endpoint} endpoint`);
  return creds;
}

/** Refuses a tls-authz that could never see an identity. */
export function checkAuthzUsable(creds: TlsCreds, authz: string | undefined): void {
  if (authz === undefined) return;
  if (creds.type === 'tls-creds-anon') {
    throw new BlockError('EINVAL', `tls-authz '${authz}' cannot be used with tls-creds-anon '${creds.id}': anonymous TLS has no client identity to authorize`);
  }
  if (creds.type === 'tls-creds-x509' && !creds.verifyPeer) {
    throw new BlockError('EINVAL', `tls-authz '${authz}' cannot be used with tls-creds-x509 '${creds.id}' and verify-peer=off: without a verified client certificate there is no identity to authorize`);
  }
}
