/**
 * The one way an NBD server starts (QEMU's nbd_server_start): the command
 * line's --nbd-server and QMP's nbd-server-start both call startNbdServer
 * with the flat SocketAddress (QMP's legacy {type, data} form is flattened by
 * its command), so both get the same checks, in the same order, with qsd's
 * texts. A failure leaves nothing listening.
 */
import type { Logger } from 'pino';
import { BlockError } from '../util/errors.ts';
import { bindErrorText } from '../platform/bind-error.ts';
import { ListenError, type InetListenAddress } from '../platform/inet-listen.ts';
import { NbdServer } from './server.ts';
import type { NbdExportList } from './exports.ts';
import type { ObjectLookup } from '../objects/lookup.ts';
import { checkAuthzUsable, findTlsCreds } from '../objects/tls/lookup.ts';

/** SocketAddress, flat (qapi/sockets.json); only the members of its type are set. */
export interface NbdListenAddress extends InetListenAddress {
  type: string;
  path?: string;
  abstract?: boolean;
  tight?: boolean;
  str?: string;
}

/** NbdServerOptions (qapi/block-export.json). */
export interface NbdServerStart {
  addr: NbdListenAddress;
  'tls-creds'?: string;
  'tls-authz'?: string;
  'max-connections'?: number;
  'handshake-max-seconds'?: number;
}

const fail = (text: string) => new BlockError('EINVAL', text);

/** Starts a server listening on `o.addr` and serving `exports`; throws with qsd's text. */
export async function startNbdServer(exports: NbdExportList, o: NbdServerStart, logger: Logger, objects: ObjectLookup): Promise<NbdServer> {
  // qsd accepts tls-authz alone and ignores it; blockd refuses a server that would authorize nobody.
  if (o['tls-authz'] !== undefined && o['tls-creds'] === undefined) throw fail("'tls-authz' requires 'tls-creds'");
  // The credentials are resolved before anything listens, but a failure is reported after the bind
  // (below): qsd binds first, so a bad address wins over bad credentials.
  let tls: { creds: ReturnType<typeof findTlsCreds>; authz?: string; objects: ObjectLookup } | undefined;
  let credsError: unknown;
  if (o['tls-creds'] !== undefined) {
    try {
      const creds = findTlsCreds(objects, o['tls-creds'], 'server');
      checkAuthzUsable(creds, o['tls-authz']);
      tls = { creds, authz: o['tls-authz'], objects };
    } catch (e) {
      credsError = e;
    }
  }
  const server = new NbdServer(exports, {
    maxConnections: o['max-connections'],
    handshakeMaxSeconds: o['handshake-max-seconds'],
    logger,
    tls,
  });
  const a = o.addr;
  try {
    if (a.type === 'inet') {
      await server.listenInet(a);
    } else if (a.type === 'unix') {
      // Node (libuv) binds an abstract name padded to the whole sun_path, which is QEMU's
      // tight=off; the exact-length form (tight=on, the default) it cannot bind.
      if (a.abstract && a.tight !== false) throw fail('blockd binds abstract socket addresses padded only (tight=off): Node.js cannot bind the exact-length form (tight=on, the default)');
      await server.listenUnix(a.path!, a.abstract === true);
    } else if (a.type === 'fd') {
      if (!/^\d+$/.test(a.str ?? '')) throw fail(`File descriptor named '${a.str}' has not been found`);
      await server.listenFd(Number(a.str));
    } else {
      throw fail(`blockd does not support ${a.type} sockets`);
    }
    if (credsError !== undefined) throw credsError;
  } catch (e) {
    await server.destroy();
    if (e instanceof BlockError) throw e;
    if (e instanceof ListenError) throw fail(e.message);
    throw fail(bindErrorText(e, a.type === 'unix' ? a.path : undefined));
  }
  // As qsd, the authz object is looked up at each client; one that does not exist (yet) refuses them all.
  if (tls?.authz !== undefined && objects.type(tls.authz) === undefined) {
    logger.warn(`tls-authz '${tls.authz}' does not exist: every TLS client is refused until it is created`);
  }
  logger.info({ addr: a, tls: tls ? tls.creds.id : undefined, authz: tls?.authz }, 'NBD server listening');
  return server;
}
