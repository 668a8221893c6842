/**
 * What every tls-creds-* object has (QEMU's crypto/tlscreds.c): the
 * TlsCredsProperties members, their defaults (endpoint=client,
 * verify-peer=on) and the path rule for files in `dir`, with QEMU's texts.
 * The state each type builds is a TlsCreds: the session code
 * (session.ts) needs nothing else.
 */
import { statSync } from 'node:fs';
import { BlockError } from '../../util/errors.ts';
import { errorText } from '../../platform/native.ts';
import { enm, opt, type Member } from '../../qapi/types.ts';

export const QCryptoTLSCredsEndpoint = enm('QCryptoTLSCredsEndpoint', ['client', 'server'],
  'The type of network endpoint that will be using the credentials.');

/** TlsCredsProperties (qapi/crypto.json), the base of each type's properties. */
export const TLS_CREDS_MEMBERS: Member[] = [
  opt('verify-peer', 'bool', 'if true the peer credentials will be verified once the handshake is completed. This is a no-op for anonymous credentials. (default: true)'),
  opt('dir', 'str', 'the path of the directory that contains the credential files'),
  opt('endpoint', QCryptoTLSCredsEndpoint, 'whether the QEMU network backend that uses the credentials will be acting as a client or as a server (default: client)'),
  opt('priority', 'str', 'a gnutls priority string as described at https://gnutls.org/manual/html_node/Priority-Strings.html'),
];

/** `loaded` (deprecated in QEMU): accepted; blockd always loads at creation, as QEMU does without it. */
export const LOADED_MEMBER: Member = opt('loaded', 'bool', "if true, the credentials are loaded immediately when applying this option and will ignore options that are processed later. Don't use; only provided for compatibility. (default: false)");

export type TlsCredsType = 'tls-creds-x509' | 'tls-creds-psk' | 'tls-creds-anon';

/** X.509 material, PEM, as node:tls takes it. */
export interface X509Material {
  ca: Buffer;
  crl?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  passphrase?: string;
  dhparam?: Buffer;
}

export interface TlsCreds {
  readonly type: TlsCredsType;
  readonly id: string;
  readonly endpoint: 'client' | 'server';
  readonly verifyPeer: boolean;
  readonly priority?: string;
  readonly dir?: string;
  readonly x509?: X509Material;
  /** PSK: the keys file (a server reads it at each handshake, as GnuTLS does); a client's username and key. */
  readonly psk?: { file: string; username?: string; key?: Buffer };
  /** anon: a dh-params.pem from dir, if there is one. */
  readonly dhparam?: Buffer;
  /** x509's own options, for qom-get. */
  readonly sanityCheck?: boolean;
  readonly passwordid?: string;
}

/** qom-get of the members every tls-creds type has (QEMU's tlscreds.c properties). */
export function baseProperty(c: TlsCreds, name: string): { value: unknown } | undefined {
  switch (name) {
    case 'endpoint': return { value: c.endpoint };
    case 'verify-peer': return { value: c.verifyPeer };
    case 'dir': return { value: c.dir ?? '' };
    case 'priority': return { value: c.priority ?? '' };
    case 'loaded': return { value: true };
    default: return undefined;
  }
}

export const TLS_CREDS_TYPES: readonly TlsCredsType[] = ['tls-creds-anon', 'tls-creds-psk', 'tls-creds-x509'];

/** The members every type reads from its options. */
export function baseOf(o: Record<string, unknown>): Pick<TlsCreds, 'id' | 'endpoint' | 'verifyPeer' | 'priority' | 'dir'> {
  return {
    id: o.id as string,
    endpoint: (o.endpoint as 'client' | 'server' | undefined) ?? 'client',
    verifyPeer: (o['verify-peer'] as boolean | undefined) ?? true,
    priority: o.priority as string | undefined,
    dir: o.dir as string | undefined,
  };
}

/**
 * QEMU's qcrypto_tls_creds_get_path: `dir/filename`, or undefined when it is
 * optional and absent. A required file that is missing (or any file that
 * cannot be examined) is QEMU's "Unable to access credentials PATH: REASON".
 */
export function credsPath(dir: string | undefined, filename: string, required: boolean): string | undefined {
  if (dir === undefined) {
    if (required) throw new BlockError('EINVAL', "Missing 'dir' property value");
    return undefined;
  }
  const path = `${dir}/${filename}`;
  try {
    statSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && !required) return undefined;
    throw new BlockError('EINVAL', `Unable to access credentials ${path}: ${errorText(e)}`);
  }
  return path;
}
