/**
 * BlockdevOptionsRbd (qapi/block-core.json in QEMU 7.2) and what block/rbd.c
 * makes of it before connecting: the monitor list for mon_host, the key
 * (a secret's bytes, base64 as qcrypto_secret_lookup_as_base64 gives it),
 * auth_client_required joined with ';'.
 */
import { arr, enm, obj, opt, req, type ObjectType } from '../../../qapi/types.ts';
import { BlockError } from '../../../util/errors.ts';
import type { ObjectLookup } from '../../../objects/lookup.ts';

const InetSocketAddressBase = obj('InetSocketAddressBase', [req('host', 'str', 'host part of the address'), req('port', 'str', 'port part of the address')]);
const RbdAuthMode = enm('RbdAuthMode', ['cephx', 'none']);

export const BlockdevOptionsRbd: ObjectType = obj('BlockdevOptionsRbd', [
  req('pool', 'str', 'Ceph pool name'),
  opt('namespace', 'str', 'Rados namespace name in the Ceph pool'),
  req('image', 'str', 'image name in the Ceph pool'),
  opt('conf', 'str', 'path to Ceph configuration file'),
  opt('snapshot', 'str', 'Ceph snapshot name'),
  opt('encrypt', obj('RbdEncryptionOptions', [req('format', enm('RbdImageEncryptionFormat', ['luks', 'luks2']), 'encryption format'),
    req('key-secret', 'str', 'ID of a QCryptoSecret object providing the passphrase')]), 'image encryption options (refused: blockd does not bind librbd encryption)'),
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
}

/** QEMU's qemu_rbd_mon_host: host:port (an IPv6 host in brackets) joined with ';'. */
export function monHost(servers: { host: string; port: string }[] | undefined): string | undefined {
  if (!servers || servers.length === 0) return undefined;
  return servers.map((s) => (s.host.includes(':') ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`)).join(';');
}

export function connectOptions(o: Record<string, unknown>, objects: ObjectLookup, cache: boolean): RbdConnectOptions {
  if (o.encrypt !== undefined) throw new BlockError('ENOTSUP', "blockd's rbd driver does not open encrypted images (encrypt): librbd's encryption is not bound");
  let key: string | undefined;
  if (o['key-secret'] !== undefined) key = objects.secret(o['key-secret'] as string).toString('base64');
  const acr = o['auth-client-required'] as string[] | undefined;
  return {
    pool: o.pool as string, image: o.image as string, namespace: o.namespace as string | undefined, conf: o.conf as string | undefined,
    snapshot: o.snapshot as string | undefined, user: o.user as string | undefined,
    monHost: monHost(o.server as { host: string; port: string }[] | undefined), key,
    authClientRequired: acr === undefined ? undefined : acr.join(';'), cache,
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
    case undefined: return e.message;
    default: return `${e.stage}: ${why}`;
  }
}
