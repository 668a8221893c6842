/**
 * A server-side TLS session over an accepted socket, from a tls-creds-*
 * object (QEMU's crypto/tlssession.c with io/channel-tls.c): the handshake,
 * then the credential checks QEMU makes once it is over (the peer's
 * certificate against the CA and CRL, its dates, its distinguished name
 * against the authz object). Used by the NBD server after STARTTLS and by
 * QMP sockets with tls-creds.
 *
 * node:tls is told not to reject an unverified client itself
 * (rejectUnauthorized false): as in QEMU the handshake completes and the
 * checks come after, so that a refusal can say why ("The certificate hasn't
 * got a known issuer", "TLS x509 authz check for CN=... is denied").
 *
 * Unlike qsd 7.2, a PSK session is checked against the authz object too
 * (the identity is the PSK username): qsd ignores tls-authz for PSK.
 */
import { isIP, type Socket } from 'node:net';
import {
  TLSSocket, checkServerIdentity, connect as tlsConnect, createSecureContext, type ConnectionOptions, type SecureContext, type SecureContextOptions,
} from 'node:tls';
import type { ObjectLookup } from '../lookup.ts';
import { findAuthz } from '../authz/authz.ts';
import { PriorityError, translatePriority, type TlsSettings } from './priority.ts';
import type { TlsCreds } from './creds.ts';
import { lookupKey } from './psk.ts';

/** QEMU's CONFIG_TLS_PRIORITY (Debian builds it as NORMAL) and the key exchanges QEMU adds per type. */
const DEFAULT_PRIORITY = 'NORMAL';
const EXTRA: Record<TlsCreds['type'], string> = {
  'tls-creds-x509': '',
  'tls-creds-psk': ':+ECDHE-PSK:+DHE-PSK:+PSK',
  'tls-creds-anon': ':+ANON-DH',
};

/** A refused or failed session: `message` is the reason, in QEMU's words where QEMU has them. */
export class TlsSessionError extends Error {}

export interface TlsSession {
  socket: TLSSocket;
  /** The authorized identity: the peer's distinguished name (x509 with verify-peer) or PSK username. */
  identity?: string;
}

/** The node:tls settings for `creds`'s priority string; throws QEMU's text when it cannot be used. */
export function sessionSettings(creds: TlsCreds): TlsSettings {
  const prio = (creds.priority ?? DEFAULT_PRIORITY) + EXTRA[creds.type];
  let s: TlsSettings;
  try {
    s = translatePriority(prio);
  } catch (e) {
    if (e instanceof PriorityError) throw new TlsSessionError(`Unable to set TLS session priority ${prio}: ${e.message}`);
    throw e;
  }
  // node:tls has no TLS 1.3 PSK or anonymous key exchange: those sessions are TLS 1.2.
  if (creds.type !== 'tls-creds-x509') {
    if (s.minVersion === 'TLSv1.3') throw new TlsSessionError(`Unable to set TLS session priority ${prio}: ${creds.type} needs TLS 1.2, which it disables`);
    // Only the key exchanges these credentials can do: a peer that picks a certificate suite we
    // offered (a GnuTLS server takes the client's order) would fail for want of a certificate.
    const mine = creds.type === 'tls-creds-psk' ? (c: string) => c.includes('PSK') : (c: string) => c.startsWith('ADH') || c.startsWith('@');
    const ciphers = s.ciphers.split(':').filter(mine);
    if (!ciphers.some((c) => !c.startsWith('@'))) throw new TlsSessionError(`Unable to set TLS session priority ${prio}: no cipher suite for ${creds.type}`);
    s = { ...s, maxVersion: 'TLSv1.2', ciphers: ciphers.join(':') };
  }
  return s;
}

/** Builds the secure context of a server session (validated once: the same for every client). */
export function serverContext(creds: TlsCreds): SecureContext {
  const s = sessionSettings(creds);
  const o: SecureContextOptions & { ciphersuites?: string } = {
    minVersion: s.minVersion,
    maxVersion: s.maxVersion,
    ciphers: s.ciphers || undefined,
    ciphersuites: s.ciphersuites,
    honorCipherOrder: s.honorCipherOrder,
  };
  if (creds.x509) {
    Object.assign(o, { ca: creds.x509.ca, cert: creds.x509.cert, key: creds.x509.key, passphrase: creds.x509.passphrase, crl: creds.x509.crl });
    o.dhparam = creds.x509.dhparam ?? 'auto';
  } else {
    o.dhparam = creds.dhparam ?? 'auto';
  }
  try {
    return createSecureContext(o);
  } catch (e) {
    throw new TlsSessionError(`Cannot set session credentials: ${(e as Error).message}`);
  }
}

/**
 * Runs the server side of a TLS handshake on `raw` and checks the peer.
 * Resolves once the session may carry data; rejects with a TlsSessionError
 * saying why not (the socket is then destroyed).
 */
export function startServerSession(creds: TlsCreds, raw: Socket, o: { authz?: string; objects: ObjectLookup; context?: SecureContext }): Promise<TlsSession> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (err?: Error, session?: TlsSession) => {
      if (settled) return;
      settled = true;
      if (err) { tls.destroy(); reject(err); } else resolve(session!);
    };
    let context: SecureContext;
    try {
      context = o.context ?? serverContext(creds);
    } catch (e) {
      raw.destroy();
      return reject(e);
    }
    let pskUser: string | undefined;
    const options: Record<string, unknown> = {
      isServer: true,
      secureContext: context,
      requestCert: creds.type === 'tls-creds-x509' && creds.verifyPeer,
      rejectUnauthorized: false,
    };
    if (creds.type === 'tls-creds-psk') {
      options.pskCallback = (_s: unknown, identity: string): Buffer | null => {
        try {
          const hex = lookupKey(creds.psk!.file, identity);
          if (hex === undefined || !/^([0-9a-fA-F]{2})+$/.test(hex)) return null;
          pskUser = identity;
          return Buffer.from(hex, 'hex');
        } catch {
          return null;
        }
      };
    }
    const tls = new TLSSocket(raw, options);
    // OpenSSL's short reason ("decryption failed or bad record mac": a wrong PSK key), not its error-stack line.
    tls.once('error', (err) => done(new TlsSessionError(`TLS handshake failed: ${(err as { reason?: string }).reason ?? err.message}`)));
    tls.once('close', () => done(new TlsSessionError('TLS handshake failed: The TLS connection was non-properly terminated.')));
    tls.once('secure', () => {
      try {
        const identity = checkPeer(creds, tls, pskUser);
        if (o.authz !== undefined && identity !== undefined) {
          const allowed = findAuthz(o.objects, o.authz).isAllowed(identity);
          if (!allowed) {
            throw new TlsSessionError(creds.type === 'tls-creds-psk'
              ? `TLS PSK authz check for ${identity} is denied`
              : `TLS x509 authz check for ${identity} is denied`);
          }
        }
        tls.removeAllListeners('error');
        tls.removeAllListeners('close');
        done(undefined, { socket: tls, identity });
      } catch (e) {
        done(e instanceof TlsSessionError ? e : new TlsSessionError((e as Error).message));
      }
    });
  });
}

/** QEMU's qcrypto_tls_session_check_credentials: the peer's identity, or a TlsSessionError. */
function checkPeer(creds: TlsCreds, tls: TLSSocket, pskUser: string | undefined): string | undefined {
  if (creds.type === 'tls-creds-psk') return pskUser;
  if (creds.type !== 'tls-creds-x509' || !creds.verifyPeer) return undefined;
  const cert = tls.getPeerX509Certificate();
  if (!cert) throw new TlsSessionError('No certificate peers');
  const error = verifyError(tls);
  if (error !== null) {
    const reason = verifyReason(error);
    // OpenSSL (unlike GnuTLS) will not use a CRL from a CA whose key usage lacks cRLSign, and says only "unspecified".
    if (creds.x509?.crl && reason.endsWith('(UNSPECIFIED)')) {
      throw new TlsSessionError(`${reason}: ca-crl.pem could not be used; is the CA certificate allowed to sign CRLs (key usage cRLSign)?`);
    }
    throw new TlsSessionError(reason);
  }
  return distinguishedName(cert.subject);
}

/**
 * OpenSSL's verification result of the peer's chain. A TLSSocket made by
 * hand (not by a tls.Server) does not fill in `authorized`; the same
 * result is on its handle, which is what tls.Server reads too.
 */
function verifyError(tls: TLSSocket): Error | null {
  const handle = (tls as unknown as { _handle?: { verifyError?: () => Error | null } })._handle;
  if (typeof handle?.verifyError !== 'function') return new Error('NO_VERIFY_RESULT');
  return handle.verifyError();
}

/** OpenSSL's verification result in QEMU's words (GnuTLS status bits), more precise where OpenSSL says more. */
function verifyReason(err: Error | string | null | undefined): string {
  const code = typeof err === 'string' ? err : (err as { code?: string } | null)?.code ?? String(err);
  switch (code) {
    case 'CERT_HAS_EXPIRED': return 'The certificate has expired';
    case 'CERT_NOT_YET_VALID': return 'The certificate is not yet activated';
    case 'CERT_REVOKED': return 'The certificate has been revoked';
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
      return "The certificate hasn't got a known issuer";
    case 'CERT_SIGNATURE_FAILURE': return 'The certificate is not trusted';
    case 'CA_KEY_TOO_SMALL':
    case 'EE_KEY_TOO_SMALL':
    case 'CA_MD_TOO_WEAK':
      return 'The certificate uses an insecure algorithm';
    default: return `The certificate is not trusted (${code})`;
  }
}

/**
 * The subject as QEMU sees it: gnutls_x509_crt_get_dn, which writes the
 * RDNs in certificate order (not RFC 4514's reversed order), comma
 * separated: "C=GB,O=Example Org,CN=client1" for what certtool prints as
 * "CN=client1,O=Example Org,C=GB". node gives one RDN a line, in
 * certificate order, values already escaped RFC 2253-style.
 */
export function distinguishedName(subject: string): string {
  return subject.split('\n').filter((l) => l.length > 0).join(',');
}

/**
 * The client side (QEMU's block/nbd.c over qio_channel_tls_new_client):
 * the handshake on `raw`, then, with verify-peer, the server's certificate
 * against the CA and `hostname` (QEMU's texts: "No hostname for
 * certificate validation", "Certificate does not match the hostname H").
 */
export function startClientSession(creds: TlsCreds, raw: Socket, hostname: string | undefined): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    let s: TlsSettings;
    try {
      s = sessionSettings(creds);
    } catch (e) {
      raw.destroy();
      return reject(e);
    }
    const o: Record<string, unknown> = {
      socket: raw,
      minVersion: s.minVersion, maxVersion: s.maxVersion, ciphers: s.ciphers || undefined, ciphersuites: s.ciphersuites,
      // Verified below, after the handshake, with QEMU's texts.
      rejectUnauthorized: false,
      checkServerIdentity: () => undefined,
    };
    // SNI takes a name, never an address (RFC 6066).
    if (hostname !== undefined && isIP(hostname) === 0) o.servername = hostname;
    if (creds.x509) Object.assign(o, { ca: creds.x509.ca, cert: creds.x509.cert, key: creds.x509.key, passphrase: creds.x509.passphrase });
    if (creds.type === 'tls-creds-psk') o.pskCallback = () => ({ psk: creds.psk!.key!, identity: creds.psk!.username! });
    let t: TLSSocket;
    try {
      t = tlsConnect(o as ConnectionOptions);
    } catch (e) {
      raw.destroy();
      return reject(new TlsSessionError(`Cannot set session credentials: ${(e as Error).message}`));
    }
    let settled = false;
    const done = (err?: Error) => {
      if (settled) return;
      settled = true;
      if (err) { t.destroy(); reject(err); } else { t.removeAllListeners('error'); t.removeAllListeners('close'); resolve(t); }
    };
    t.once('error', (err) => done(new TlsSessionError(`TLS handshake failed: ${(err as { reason?: string }).reason ?? err.message}`)));
    t.once('close', () => done(new TlsSessionError('TLS handshake failed: The TLS connection was non-properly terminated.')));
    t.once('secureConnect', () => {
      if (creds.type !== 'tls-creds-x509' || !creds.verifyPeer) return done();
      if (!t.authorized) return done(new TlsSessionError(verifyReason(t.authorizationError)));
      if (hostname === undefined) return done(new TlsSessionError('No hostname for certificate validation'));
      if (checkServerIdentity(hostname, t.getPeerCertificate()) !== undefined) {
        return done(new TlsSessionError(`Certificate does not match the hostname ${hostname}`));
      }
      done();
    });
  });
}
