/**
 * GnuTLS priority strings (what QEMU's tls-creds `priority` takes, e.g.
 * "NORMAL:-VERS-TLS1.3" or "@SYSTEM:-VERS-ALL:+VERS-TLS1.3") translated to
 * node:tls settings: the protocol versions, the TLS 1.2 cipher list and the
 * TLS 1.3 suites, in OpenSSL's names. Pure; tested alone.
 *
 * The translation covers the forms people write: a base keyword (NORMAL,
 * PERFORMANCE, SECURE128/192/256, PFS, LEGACY, NONE, SYSTEM, @SYSTEM),
 * versions (VERS-TLS1.x, VERS-ALL, VERS-TLS-ALL), ciphers (AES-128-GCM...,
 * CIPHER-ALL), MACs (SHA1, SHA256, SHA384, AEAD, MAC-ALL), key exchanges
 * (RSA, DHE-RSA, ECDHE-RSA, ECDHE-ECDSA, PSK, DHE-PSK, ECDHE-PSK, ANON-DH,
 * KX-ALL) with +, - or !, and the %FLAGS. Anything else throws: a string
 * blockd cannot understand must not quietly become a weaker or stronger
 * setting than asked for (qsd likewise fails every handshake with it).
 *
 * blockd never negotiates below TLS 1.2, whatever the string allows.
 */

export interface TlsSettings {
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  maxVersion: 'TLSv1.2' | 'TLSv1.3';
  /** OpenSSL cipher list for TLS 1.2 (may be empty: then TLS 1.2 cannot be used). */
  ciphers: string;
  /** OpenSSL TLS 1.3 suites (may be empty). */
  ciphersuites: string;
  /** %SERVER_PRECEDENCE. */
  honorCipherOrder: boolean;
}

export class PriorityError extends Error {}

type Kx = 'RSA' | 'DHE-RSA' | 'ECDHE-RSA' | 'ECDHE-ECDSA' | 'PSK' | 'DHE-PSK' | 'ECDHE-PSK' | 'ANON-DH';
type Cipher = 'AES-128-GCM' | 'AES-256-GCM' | 'CHACHA20-POLY1305' | 'AES-128-CBC' | 'AES-256-CBC' | 'AES-128-CCM';
type Mac = 'AEAD' | 'SHA1' | 'SHA256' | 'SHA384';
type Version = 'TLS1.0' | 'TLS1.1' | 'TLS1.2' | 'TLS1.3';

interface Suite { name: string; kx: Kx; cipher: Cipher; mac: Mac }
const s = (name: string, kx: Kx, cipher: Cipher, mac: Mac): Suite => ({ name, kx, cipher, mac });

/** TLS 1.2 suites OpenSSL has, in a sensible preference order. */
const TLS12_SUITES: readonly Suite[] = [
  s('ECDHE-ECDSA-AES256-GCM-SHA384', 'ECDHE-ECDSA', 'AES-256-GCM', 'AEAD'),
  s('ECDHE-RSA-AES256-GCM-SHA384', 'ECDHE-RSA', 'AES-256-GCM', 'AEAD'),
  s('ECDHE-ECDSA-CHACHA20-POLY1305', 'ECDHE-ECDSA', 'CHACHA20-POLY1305', 'AEAD'),
  s('ECDHE-RSA-CHACHA20-POLY1305', 'ECDHE-RSA', 'CHACHA20-POLY1305', 'AEAD'),
  s('ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-ECDSA', 'AES-128-GCM', 'AEAD'),
  s('ECDHE-RSA-AES128-GCM-SHA256', 'ECDHE-RSA', 'AES-128-GCM', 'AEAD'),
  s('DHE-RSA-AES256-GCM-SHA384', 'DHE-RSA', 'AES-256-GCM', 'AEAD'),
  s('DHE-RSA-CHACHA20-POLY1305', 'DHE-RSA', 'CHACHA20-POLY1305', 'AEAD'),
  s('DHE-RSA-AES128-GCM-SHA256', 'DHE-RSA', 'AES-128-GCM', 'AEAD'),
  s('ECDHE-ECDSA-AES256-SHA384', 'ECDHE-ECDSA', 'AES-256-CBC', 'SHA384'),
  s('ECDHE-RSA-AES256-SHA384', 'ECDHE-RSA', 'AES-256-CBC', 'SHA384'),
  s('ECDHE-ECDSA-AES128-SHA256', 'ECDHE-ECDSA', 'AES-128-CBC', 'SHA256'),
  s('ECDHE-RSA-AES128-SHA256', 'ECDHE-RSA', 'AES-128-CBC', 'SHA256'),
  s('ECDHE-ECDSA-AES256-SHA', 'ECDHE-ECDSA', 'AES-256-CBC', 'SHA1'),
  s('ECDHE-RSA-AES256-SHA', 'ECDHE-RSA', 'AES-256-CBC', 'SHA1'),
  s('ECDHE-ECDSA-AES128-SHA', 'ECDHE-ECDSA', 'AES-128-CBC', 'SHA1'),
  s('ECDHE-RSA-AES128-SHA', 'ECDHE-RSA', 'AES-128-CBC', 'SHA1'),
  s('AES256-GCM-SHA384', 'RSA', 'AES-256-GCM', 'AEAD'),
  s('AES128-GCM-SHA256', 'RSA', 'AES-128-GCM', 'AEAD'),
  s('AES256-SHA256', 'RSA', 'AES-256-CBC', 'SHA256'),
  s('AES128-SHA256', 'RSA', 'AES-128-CBC', 'SHA256'),
  s('AES256-SHA', 'RSA', 'AES-256-CBC', 'SHA1'),
  s('AES128-SHA', 'RSA', 'AES-128-CBC', 'SHA1'),
  s('ECDHE-PSK-CHACHA20-POLY1305', 'ECDHE-PSK', 'CHACHA20-POLY1305', 'AEAD'),
  s('ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK', 'AES-256-CBC', 'SHA384'),
  s('ECDHE-PSK-AES128-CBC-SHA256', 'ECDHE-PSK', 'AES-128-CBC', 'SHA256'),
  s('DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK', 'AES-256-GCM', 'AEAD'),
  s('DHE-PSK-CHACHA20-POLY1305', 'DHE-PSK', 'CHACHA20-POLY1305', 'AEAD'),
  s('DHE-PSK-AES128-GCM-SHA256', 'DHE-PSK', 'AES-128-GCM', 'AEAD'),
  s('PSK-AES256-GCM-SHA384', 'PSK', 'AES-256-GCM', 'AEAD'),
  s('PSK-CHACHA20-POLY1305', 'PSK', 'CHACHA20-POLY1305', 'AEAD'),
  s('PSK-AES128-GCM-SHA256', 'PSK', 'AES-128-GCM', 'AEAD'),
  s('ADH-AES256-GCM-SHA384', 'ANON-DH', 'AES-256-GCM', 'AEAD'),
  s('ADH-AES128-GCM-SHA256', 'ANON-DH', 'AES-128-GCM', 'AEAD'),
  s('ADH-AES256-SHA256', 'ANON-DH', 'AES-256-CBC', 'SHA256'),
  s('ADH-AES128-SHA256', 'ANON-DH', 'AES-128-CBC', 'SHA256'),
];

/** TLS 1.3 suites (the key exchange is not part of a 1.3 suite). */
const TLS13_SUITES: readonly { name: string; cipher: Cipher }[] = [
  { name: 'TLS_AES_256_GCM_SHA384', cipher: 'AES-256-GCM' },
  { name: 'TLS_CHACHA20_POLY1305_SHA256', cipher: 'CHACHA20-POLY1305' },
  { name: 'TLS_AES_128_GCM_SHA256', cipher: 'AES-128-GCM' },
  { name: 'TLS_AES_128_CCM_SHA256', cipher: 'AES-128-CCM' },
];

const ALL_VERSIONS: readonly Version[] = ['TLS1.0', 'TLS1.1', 'TLS1.2', 'TLS1.3'];
const ALL_CIPHERS: readonly Cipher[] = ['AES-128-GCM', 'AES-256-GCM', 'CHACHA20-POLY1305', 'AES-128-CBC', 'AES-256-CBC', 'AES-128-CCM'];
const ALL_MACS: readonly Mac[] = ['AEAD', 'SHA1', 'SHA256', 'SHA384'];
/** What KX-ALL means to GnuTLS: the certificate key exchanges (PSK and anonymous ones are added by name). */
const CERT_KX: readonly Kx[] = ['ECDHE-ECDSA', 'ECDHE-RSA', 'DHE-RSA', 'RSA'];

interface Sets { versions: Set<Version>; ciphers: Set<Cipher>; macs: Set<Mac>; kx: Set<Kx> }

/** The base keywords and what each enables. */
const BASES: Readonly<Record<string, () => Sets>> = {
  NORMAL: () => full(),
  PERFORMANCE: () => full(),
  SYSTEM: () => full(),
  '@SYSTEM': () => full(),
  LEGACY: () => full(),
  PFS: () => ({ ...full(), kx: new Set<Kx>(['ECDHE-ECDSA', 'ECDHE-RSA', 'DHE-RSA']) }),
  SECURE128: () => full(),
  SECURE192: () => ({ ...full(), ciphers: new Set<Cipher>(['AES-256-GCM', 'CHACHA20-POLY1305', 'AES-256-CBC']), macs: new Set<Mac>(['AEAD', 'SHA384']) }),
  SECURE256: () => ({ ...full(), ciphers: new Set<Cipher>(['AES-256-GCM', 'CHACHA20-POLY1305', 'AES-256-CBC']), macs: new Set<Mac>(['AEAD', 'SHA384']) }),
  NONE: () => ({ versions: new Set(), ciphers: new Set(), macs: new Set(), kx: new Set() }),
};

function full(): Sets {
  return {
    versions: new Set<Version>(['TLS1.2', 'TLS1.3']),
    ciphers: new Set<Cipher>(ALL_CIPHERS),
    macs: new Set<Mac>(ALL_MACS),
    kx: new Set<Kx>(CERT_KX),
  };
}

/** %FLAGS that change nothing node:tls would do differently (or only for TLS < 1.2). */
const NEUTRAL_FLAGS = new Set([
  'COMPAT', 'DUMBFW', 'NO_EXTENSIONS', 'NO_TICKETS', 'NO_TICKETS_TLS12', 'NO_SESSION_HASH', 'FORCE_ETM', 'NO_ETM',
  'SAFE_RENEGOTIATION', 'PARTIAL_RENEGOTIATION', 'UNSAFE_RENEGOTIATION', 'DISABLE_SAFE_RENEGOTIATION', 'STATELESS_COMPRESSION',
  'VERIFY_ALLOW_SIGN_WITH_SHA1', 'VERIFY_DISABLE_CRL_CHECKS', 'NO_STATUS_REQUEST', 'PROFILE_MEDIUM', 'PROFILE_HIGH',
]);

/** Translates `priority`; throws PriorityError naming the element it cannot translate. */
export function translatePriority(priority: string): TlsSettings {
  const parts = priority.split(':').map((p) => p.trim()).filter((p) => p.length > 0);
  if (parts.length === 0) throw new PriorityError('empty priority string');
  const base = BASES[parts[0].toUpperCase()];
  if (!base) throw new PriorityError(`unknown priority keyword '${parts[0]}'`);
  const sets = base();
  let honorCipherOrder = false;
  for (const part of parts.slice(1)) {
    if (part.startsWith('%')) {
      const flag = part.slice(1).toUpperCase();
      if (flag === 'SERVER_PRECEDENCE') honorCipherOrder = true;
      else if (!NEUTRAL_FLAGS.has(flag)) throw new PriorityError(`unknown priority flag '${part}'`);
      continue;
    }
    const op = part[0];
    if (op !== '+' && op !== '-' && op !== '!') throw new PriorityError(`priority element '${part}' has no +, - or !`);
    applyElement(sets, part.slice(1).toUpperCase(), op === '+', part);
  }
  return toSettings(sets, honorCipherOrder);
}

function applyElement(sets: Sets, name: string, add: boolean, part: string): void {
  const change = <T>(set: Set<T>, items: readonly T[]) => { for (const i of items) { if (add) set.add(i); else set.delete(i); } };
  if (name === 'VERS-ALL' || name === 'VERS-TLS-ALL') return change(sets.versions, ALL_VERSIONS);
  if (name.startsWith('VERS-')) {
    const v = name.slice(5) as Version;
    if (!ALL_VERSIONS.includes(v)) throw new PriorityError(`unknown protocol version '${part}'`);
    return change(sets.versions, [v]);
  }
  if (name === 'CIPHER-ALL') return change(sets.ciphers, ALL_CIPHERS);
  if ((ALL_CIPHERS as readonly string[]).includes(name)) return change(sets.ciphers, [name as Cipher]);
  if (name === 'MAC-ALL') return change(sets.macs, ALL_MACS);
  if ((ALL_MACS as readonly string[]).includes(name)) return change(sets.macs, [name as Mac]);
  if (name === 'KX-ALL') return change(sets.kx, CERT_KX);
  if (['RSA', 'DHE-RSA', 'ECDHE-RSA', 'ECDHE-ECDSA', 'PSK', 'DHE-PSK', 'ECDHE-PSK', 'ANON-DH'].includes(name)) {
    return change(sets.kx, [name as Kx]);
  }
  throw new PriorityError(`unknown priority element '${part}'`);
}

function toSettings(sets: Sets, honorCipherOrder: boolean): TlsSettings {
  const has12 = sets.versions.has('TLS1.2');
  const has13 = sets.versions.has('TLS1.3');
  if (!has12 && !has13) throw new PriorityError('no protocol version of TLS 1.2 or later is enabled');
  const ciphers = TLS12_SUITES.filter((x) => sets.kx.has(x.kx) && sets.ciphers.has(x.cipher) && sets.macs.has(x.mac)).map((x) => x.name);
  // TLS 1.3 needs an AEAD MAC and a certificate, PSK or (EC)DHE key exchange.
  const suites13 = sets.macs.has('AEAD') ? TLS13_SUITES.filter((x) => sets.ciphers.has(x.cipher)).map((x) => x.name) : [];
  const use12 = has12 && ciphers.length > 0;
  const use13 = has13 && suites13.length > 0;
  if (!use12 && !use13) throw new PriorityError('no cipher suite is enabled');
  // Anonymous suites are below OpenSSL's default security level; they are only there if asked for.
  const list = ciphers.join(':') + (sets.kx.has('ANON-DH') && ciphers.length > 0 ? ':@SECLEVEL=0' : '');
  return {
    minVersion: use12 ? 'TLSv1.2' : 'TLSv1.3',
    maxVersion: use13 ? 'TLSv1.3' : 'TLSv1.2',
    ciphers: use12 ? list : '',
    ciphersuites: use13 ? suites13.join(':') : '',
    honorCipherOrder,
  };
}
