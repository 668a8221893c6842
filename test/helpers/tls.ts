/**
 * TLS material for tests, made with GnuTLS's certtool (gnutls-bin): a CA, a
 * server certificate for localhost/127.0.0.1, two client certificates with
 * different distinguished names, an expired client certificate, a second
 * (wrong) CA with its own server, and PSK key files. Each set is laid out as
 * QEMU's tls-creds-x509 `dir` and libnbd's tls-certificates= want it
 * (ca-cert.pem, server-cert.pem/server-key.pem, client-cert.pem/client-key.pem).
 */
import { copyFileSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { run } from './tools.ts';

export interface TlsFixture {
  /** Server dir: ca-cert.pem, server-cert.pem, server-key.pem. */
  server: string;
  /** Client dirs: ca-cert.pem, client-cert.pem, client-key.pem. */
  client1: string;
  client2: string;
  expired: string;
  /** A client whose certificate the server's CA did not sign (and whose ca-cert.pem is the other CA). */
  wrongCa: string;
  /** A server of the other CA (clients of the right CA must not trust it). */
  otherServer: string;
  /** A server dir like `server` with ca-crl.pem revoking client2's certificate. */
  crlServer: string;
  /** A server dir whose certificate expired (our CA). */
  expiredServer: string;
  /** A server dir whose key is PKCS#8-encrypted with `keyPassword`. */
  encryptedServer: string;
  keyPassword: string;
  /** The distinguished names as QEMU's authz sees them (gnutls_x509_crt_get_dn: certificate order). */
  dn1: string;
  dn2: string;
  /** PSK: a server dir with keys.psk (alice, bob), alice's client file, and a file with a wrong key for alice. */
  pskServer: string;
  pskAlice: string;
  pskWrong: string;
  /** A client keys file for the default username, "qemu". */
  pskDefault: string;
}

const KEY = ['--generate-privkey', '--key-type=ecdsa', '--curve=secp256r1'];

function key(path: string): void { run('certtool', [...KEY, '--outfile', path]); }

function template(dir: string, name: string, lines: string[]): string {
  const p = join(dir, `${name}.info`);
  writeFileSync(p, lines.join('\n') + '\n');
  return p;
}

function ca(dir: string, cn: string): { cert: string; key: string } {
  mkdirSync(dir, { recursive: true });
  const k = join(dir, 'ca-key.pem');
  const c = join(dir, 'ca-cert.pem');
  key(k);
  run('certtool', ['--generate-self-signed', '--load-privkey', k, '--outfile', c,
    '--template', template(dir, 'ca', [`cn = ${cn}`, 'ca', 'cert_signing_key', 'crl_signing_key', 'expiration_days = 30'])]);
  return { cert: c, key: k };
}

function issue(authority: { cert: string; key: string }, dir: string, who: 'server' | 'client', lines: string[]): void {
  mkdirSync(dir, { recursive: true });
  const k = join(dir, `${who}-key.pem`);
  key(k);
  run('certtool', ['--generate-certificate', '--load-privkey', k, '--load-ca-certificate', authority.cert, '--load-ca-privkey', authority.key,
    '--outfile', join(dir, `${who}-cert.pem`), '--template', template(dir, who, lines)]);
  copyFileSync(authority.cert, join(dir, 'ca-cert.pem'));
}

const serverLines = ['organization = Example', 'cn = localhost', 'dns_name = localhost', 'ip_address = 127.0.0.1',
  'tls_www_server', 'encryption_key', 'signing_key', 'expiration_days = 30'];
const clientLines = (cn: string, extra: string[] = ['expiration_days = 30']) =>
  ['country = GB', 'organization = Example Org', `cn = ${cn}`, 'tls_www_client', 'encryption_key', 'signing_key', ...extra];

/** Makes every set under `root`. */
export function makeTlsFixture(root: string): TlsFixture {
  const authority = ca(join(root, 'ca'), 'Test CA');
  const other = ca(join(root, 'other-ca'), 'Other CA');
  const f: TlsFixture = {
    server: join(root, 'server'), client1: join(root, 'client1'), client2: join(root, 'client2'), expired: join(root, 'expired'),
    wrongCa: join(root, 'wrong-ca'), otherServer: join(root, 'other-server'),
    dn1: 'C=GB,O=Example Org,CN=client1', dn2: 'C=GB,O=Example Org,CN=client2',
    crlServer: join(root, 'crl-server'), expiredServer: join(root, 'expired-server'), encryptedServer: join(root, 'encrypted-server'), keyPassword: 'hunter2',
    pskServer: join(root, 'psk-server'), pskAlice: join(root, 'psk-alice', 'keys.psk'), pskWrong: join(root, 'psk-wrong', 'keys.psk'), pskDefault: join(root, 'psk-qemu', 'keys.psk'),
  };
  issue(authority, f.server, 'server', serverLines);
  issue(authority, f.client1, 'client', clientLines('client1'));
  issue(authority, f.client2, 'client', clientLines('client2'));
  issue(authority, f.expired, 'client', clientLines('expired', ['activation_date = "2020-01-01 00:00:00 UTC"', 'expiration_date = "2020-02-01 00:00:00 UTC"']));
  issue(other, f.wrongCa, 'client', clientLines('client1'));
  issue(other, f.otherServer, 'server', serverLines);
  issue(authority, f.expiredServer, 'server', [...serverLines.filter((l) => !l.startsWith('expiration')),
    'activation_date = "2020-01-01 00:00:00 UTC"', 'expiration_date = "2020-02-01 00:00:00 UTC"']);
  issue(authority, f.encryptedServer, 'server', serverLines);
  mkdirSync(f.crlServer);
  for (const file of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) copyFileSync(join(f.server, file), join(f.crlServer, file));
  run('certtool', ['--generate-crl', '--load-ca-privkey', authority.key, '--load-ca-certificate', authority.cert,
    '--load-certificate', join(f.client2, 'client-cert.pem'), '--outfile', join(f.crlServer, 'ca-crl.pem'),
    '--template', template(f.crlServer, 'crl', ['crl_next_update = 30', 'crl_number = 1'])]);
  const plainKey = join(f.encryptedServer, 'server-key.pem');
  run('certtool', ['--load-privkey', plainKey, '--to-p8', '--password', f.keyPassword, '--outfile', `${plainKey}.enc`]);
  renameSync(`${plainKey}.enc`, plainKey);
  const alice = randomBytes(32).toString('hex');
  const bob = randomBytes(32).toString('hex');
  for (const d of [f.pskServer, join(root, 'psk-alice'), join(root, 'psk-wrong'), join(root, 'psk-qemu')]) mkdirSync(d, { recursive: true });
  writeFileSync(f.pskDefault, `qemu:${randomBytes(32).toString('hex')}\n`);
  writeFileSync(join(f.pskServer, 'keys.psk'), `alice:${alice}\nbob:${bob}\n`);
  writeFileSync(f.pskAlice, `alice:${alice}\n`);
  writeFileSync(f.pskWrong, `alice:${randomBytes(32).toString('hex')}\n`);
  return f;
}

/** Resolves once 127.0.0.1:`port` accepts a connection (the NBD server starts after the monitor). */
export async function waitForPort(port: number, timeoutMs = 20_000): Promise<void> {
  const { connect } = await import('node:net');
  const end = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); r(true); });
      s.once('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on port ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
