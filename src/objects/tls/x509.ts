/**
 * tls-creds-x509 (QEMU's crypto/tlscredsx509.c): loads the PEM files of
 * `dir` when the object is made, so a missing or broken file is an
 * object-add error with QEMU's text, not a failure at the first client.
 *
 * Server: ca-cert.pem, server-cert.pem, server-key.pem (required),
 * ca-crl.pem and dh-params.pem (optional). Client: ca-cert.pem (required),
 * client-cert.pem / client-key.pem (optional). `passwordid` names the
 * secret that decrypts the key. `sanity-check` (default on) checks our own
 * certificate before any client sees it: validity dates, CA basic
 * constraints, key purpose, and that it was issued by the CA.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { X509Certificate as CryptoX509 } from 'node:crypto';
import { BlockError } from '../../util/errors.ts';
import { errorText } from '../../platform/native.ts';
import { obj, opt } from '../../qapi/types.ts';
import type { ObjectTypeDef } from '../object-type.ts';
import type { ObjectLookup } from '../lookup.ts';
import { LOADED_MEMBER, TLS_CREDS_MEMBERS, baseOf, baseProperty, credsPath, type TlsCreds, type X509Material } from './creds.ts';

const TlsCredsX509Properties = obj('TlsCredsX509Properties', [
  ...TLS_CREDS_MEMBERS,
  LOADED_MEMBER,
  opt('sanity-check', 'bool', 'if true, perform some sanity checks before using the credentials (default: true)'),
  opt('passwordid', 'str', 'For the server-key.pem and client-key.pem files which contain sensitive private keys, it is possible to use an encrypted version by providing the @passwordid parameter.  This provides the ID of a previously created secret object containing the password for decryption.'),
]);

const fail = (text: string) => new BlockError('EINVAL', text);

const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const ANY_PURPOSE = '2.5.29.37.0';

export const tlsCredsX509Type: ObjectTypeDef<TlsCreds> = {
  qomType: 'tls-creds-x509',
  properties: TlsCredsX509Properties,
  create(options, objects) {
    const base = baseOf(options);
    const x509 = loadX509(base.dir, base.endpoint === 'server', options['sanity-check'] !== false, options.passwordid as string | undefined, objects);
    return { type: 'tls-creds-x509', ...base, x509, sanityCheck: options['sanity-check'] !== false, passwordid: options.passwordid as string | undefined };
  },
  getProperty(c, name) {
    if (name === 'sanity-check') return { value: c.sanityCheck };
    if (name === 'passwordid') return { value: c.passwordid ?? '' };
    return baseProperty(c, name);
  },
};

function read(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw fail(`Cannot load CA cert list ${path}: Failed to open file \u201C${path}\u201D: ${errorText(e)}`);
  }
}

function loadX509(dir: string | undefined, isServer: boolean, sanityCheck: boolean, passwordid: string | undefined, objects: ObjectLookup): X509Material {
  const caPath = credsPath(dir, 'ca-cert.pem', true)!;
  let crlPath: string | undefined;
  let certPath: string | undefined;
  let keyPath: string | undefined;
  let dhPath: string | undefined;
  if (isServer) {
    crlPath = credsPath(dir, 'ca-crl.pem', false);
    certPath = credsPath(dir, 'server-cert.pem', true);
    keyPath = credsPath(dir, 'server-key.pem', true);
    dhPath = credsPath(dir, 'dh-params.pem', false);
  } else {
    certPath = credsPath(dir, 'client-cert.pem', false);
    keyPath = credsPath(dir, 'client-key.pem', false);
  }
  const m: X509Material = { ca: read(caPath) };
  if (sanityCheck) sanity(m.ca, caPath, certPath, isServer);
  if (certPath && keyPath) {
    m.cert = read(certPath);
    m.key = read(keyPath);
    if (passwordid !== undefined) m.passphrase = objects.secret(passwordid).toString('utf8');
    try {
      createSecureContext({ cert: m.cert, key: m.key, passphrase: m.passphrase });
    } catch (e) {
      // An encrypted key that does not open: GnuTLS's words (OpenSSL's are "bad decrypt" and the like).
      const why = m.key.includes('ENCRYPTED') ? 'Decryption has failed.' : (e as { reason?: string }).reason ?? (e as Error).message;
      throw fail(`Cannot load certificate '${certPath}' & key '${keyPath}': ${why}`);
    }
  }
  if (crlPath) {
    m.crl = read(crlPath);
    try {
      createSecureContext({ ca: m.ca, crl: m.crl });
    } catch (e) {
      throw fail(`Cannot load CRL '${crlPath}': ${(e as Error).message}`);
    }
  }
  if (dhPath) m.dhparam = read(dhPath);
  return m;
}

/** PEM blocks of a certificate list. */
function pemCerts(pem: Buffer): string[] {
  return pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
}

function parse(pem: string, file: string, what: string): CryptoX509 {
  try {
    return new CryptoX509(pem);
  } catch (e) {
    throw fail(`Unable to import ${what} certificate ${file}: ${(e as Error).message}`);
  }
}

/** QEMU's qcrypto_tls_creds_x509_sanity_check, on what node's X509Certificate shows. */
function sanity(caPem: Buffer, caFile: string, certFile: string | undefined, isServer: boolean): void {
  const blocks = pemCerts(caPem);
  if (blocks.length === 0) throw fail(`Unable to import CA certificate list ${caFile}`);
  const cas = blocks.map((b) => parse(b, caFile, 'CA'));
  for (const ca of cas) checkCert(ca, caFile, isServer, true);
  if (!certFile) return;
  const first = pemCerts(read(certFile))[0];
  if (!first) throw fail(`Unable to import ${isServer ? 'server' : 'client'} certificate ${certFile}: The certificate list is empty`);
  const cert = parse(first, certFile, isServer ? 'server' : 'client');
  checkCert(cert, certFile, isServer, false);
  const issuer = cas.find((ca) => cert.checkIssued(ca) && cert.verify(ca.publicKey));
  if (!issuer) {
    throw fail(`Our own certificate ${certFile} failed validation against ${caFile}: The certificate hasn't got a known issuer`);
  }
}

function checkCert(cert: CryptoX509, file: string, isServer: boolean, isCA: boolean): void {
  const now = Date.now();
  const who = isCA ? 'CA' : isServer ? 'server' : 'client';
  if (Date.parse(cert.validTo) < now) throw fail(`The ${who} certificate ${file} has expired`);
  if (Date.parse(cert.validFrom) > now) throw fail(`The ${who} certificate ${file} is not yet active`);
  if (cert.ca && !isCA) {
    throw fail(`The certificate ${file} basic constraints show a CA, but we need one for a ${isServer ? 'server' : 'client'}`);
  }
  if (!cert.ca && isCA) throw fail(`The certificate ${file} basic constraints do not show a CA`);
  if (isCA) return;
  // node shows the extended key usage, not whether it is critical: a certificate naming purposes but not ours is refused.
  const purposes = cert.keyUsage;
  if (purposes && purposes.length > 0 && !purposes.includes(ANY_PURPOSE) && !purposes.includes(isServer ? SERVER_AUTH : CLIENT_AUTH)) {
    throw fail(`Certificate ${file} purpose does not allow use with a TLS ${isServer ? 'server' : 'client'}`);
  }
}
