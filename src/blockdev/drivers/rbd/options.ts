/**
 * BlockdevOptionsRbd (qapi/block-core.json in QEMU 7.2) and what block/rbd.c
 * makes of it before connecting: the monitor list for mon_host, the key
 * (a secret's bytes, base64 as qcrypto_secret_lookup_as_base64 gives it),
 * auth_client_required joined with ';'.
 */
import { arr, enm, obj, opt, req, type ObjectType } from '../../../qapi/types.ts';
import type { ObjectLookup } from '../../../objects/lookup.ts';
import { CIPHER_ALGS } from '../../../crypto/cipher-spec.ts';

const InetSocketAddressBase = obj('InetSocketAddressBase', [req('host', 'str', 'host part of the address'), req('port', 'str', 'port part of the address')]);
const RbdAuthMode = enm('RbdAuthMode', ['cephx', 'none']);
export const RbdImageEncryptionFormat = enm('RbdImageEncryptionFormat', ['luks', 'luks2']);
/** The union RbdEncryptionOptions: both branches (luks, luks2) are RbdEncryptionOptionsLUKSBase. */
const RbdEncryptionOptions = obj('RbdEncryptionOptions', [req('format', RbdImageEncryptionFormat, 'encryption format'),
  req('key-secret', 'str', 'ID of a QCryptoSecret object providing a passphrase for unlocking the encryption')]);

export const BlockdevOptionsRbd: ObjectType = obj('BlockdevOptionsRbd', [
  req('pool', 'str', 'Ceph pool name'),
  opt('namespace', 'str', 'Rados namespace name in the Ceph pool'),
  req('image', 'str', 'image name in the Ceph pool'),
  opt('conf', 'str', 'path to Ceph configuration file'),
  opt('snapshot', 'str', 'Ceph snapshot name'),
  opt('encrypt', RbdEncryptionOptions, 'image encryption options'),
  opt('user', 'str', 'Ceph id name'),
  opt('auth-client-required', arr(RbdAuthMode), 'acceptable authentication modes'),
  opt('key-secret', 'str', 'ID of a QCryptoSecret object providing a key for cephx authentication'),
  opt('server', arr(InetSocketAddressBase), 'monitor host address and port'),
]);

/** QEMU's qemu_rbd_strong_runtime_opts. */
export const RBD_STRONG_OPTIONS = ['pool', 'namespace', 'image', 'conf', 'snapshot', 'user', 'server'];

export interface RbdConnectOptions {
  pool: string; image: string; namespace?: string; conf?: string; snapshot?: string; user?: string;
  monHost?: string; key?: string; authClientRequired?: string; cache: boolean; size?: number;
  encrypt?: RbdEncrypt;
}

/**
 * What the addon gets for encrypt (librbd's rbd_encryption_format_t and
 * rbd_encryption_algorithm_t numbers, the passphrase), or `refused` with
 * QEMU's text when the options could not be built (no such secret, a cipher
 * librbd lacks): the addon fails at the step where QEMU looks them up, after
 * rbd_open (and, creating, after rbd_create: the image is removed again).
 */
export interface RbdEncrypt { format: number; alg: number; passphrase?: Buffer; refused?: boolean; refusal?: string }

/** QEMU's qemu_rbd_convert_luks_options / _create_options: the secret's bytes, the cipher (aes-256 by default). */
export function encryptOptions(e: Record<string, unknown>, objects: ObjectLookup): RbdEncrypt {
  const format = e.format === 'luks' ? 0 : 1;
  let passphrase: Buffer;
  try {
    passphrase = objects.secret(e['key-secret'] as string);
  } catch (err) {
    return { format, alg: 1, refused: true, refusal: (err as Error).message };
  }
  const alg = e['cipher-alg'] as string | undefined;
  if (alg === undefined || alg === 'aes-256') return { format, alg: 1, passphrase };
  if (alg === 'aes-128') return { format, alg: 0, passphrase };
  return { format, alg: 1, refused: true, refusal: `unknown encryption algorithm: ${CIPHER_ALGS.indexOf(alg as never)}: Operation not supported` };
}

/** QEMU's qemu_rbd_mon_host: host:port (an IPv6 host in brackets) joined with ';'. */
export function monHost(servers: { host: string; port: string }[] | undefined): string | undefined {
  if (!servers || servers.length === 0) return undefined;
  return servers.map((s) => (s.host.includes(':') ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`)).join(';');
}

export function connectOptions(o: Record<string, unknown>, objects: ObjectLookup, cache: boolean): RbdConnectOptions {
  let key: string | undefined;
  if (o['key-secret'] !== undefined) key = objects.secret(o['key-secret'] as string).toString('base64');
  const acr = o['auth-client-required'] as string[] | undefined;
  return {
    pool: o.pool as string, image: o.image as string, namespace: o.namespace as string | undefined, conf: o.conf as string | undefined,
    snapshot: o.snapshot as string | undefined, user: o.user as string | undefined,
    monHost: monHost(o.server as { host: string; port: string }[] | undefined), key,
    authClientRequired: acr === undefined ? undefined : acr.join(';'), cache,
    encrypt: o.encrypt === undefined ? undefined : encryptOptions(o.encrypt as Record<string, unknown>, objects),
  };
}

/** The stage a native rbd call failed in, as QEMU words it (error_setg_errno: "<text>: <strerror>"). */
export function rbdErrorText(e: { stage?: string; reason?: string; message: string }, c: RbdConnectOptions): string {
  const why = e.reason ?? e.message;
  switch (e.stage) {
    case 'rados_create': return `error initializing: ${why}`;
    case 'rados_conf_read_file': return `error reading conf file ${c.conf}: ${why}`;
    case 'error opening pool': return `error opening pool ${c.pool}: ${why}`;
    case 'namespace does not exist': return `namespace '${c.namespace}' does not exist`;
    case 'error reading header': return `error reading header from ${c.image}: ${why}`;
    case 'error getting image info': return `error getting image info from ${c.image}: ${why}`;
    case 'encryption options': return c.encrypt?.refusal ?? why;
    case 'error opening image for encryption format': return `error opening image '${c.image}' for encryption format: ${why}`;
    case undefined: return e.message;
    default: return `${e.stage}: ${why}`;
  }
}
