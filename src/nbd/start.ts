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
import { NbdServer } from './server.ts';
import type { NbdExportList } from './exports.ts';

/** SocketAddress, flat (qapi/sockets.json); only the members of its type are set. */
export interface NbdListenAddress {
  type: string;
  host?: string;
  port?: string;
  path?: string;
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
export async function startNbdServer(exports: NbdExportList, o: NbdServerStart, logger: Logger): Promise<NbdServer> {
  // qsd accepts tls-authz alone and ignores it; blockd refuses a server that would authorize nobody.
  if (o['tls-authz'] !== undefined && o['tls-creds'] === undefined) throw fail("'tls-authz' requires 'tls-creds'");
  const server = new NbdServer(exports, {
    maxConnections: o['max-connections'],
    handshakeMaxSeconds: o['handshake-max-seconds'],
    logger,
  });
  const a = o.addr;
  try {
    if (a.type === 'inet') {
      const port = Number(a.port);
      if (!/^\d+$/.test(a.port ?? '') || port > 65535) {
        throw fail(`address resolution failed for ${a.host ?? ''}:${a.port ?? ''}: Servname not supported for ai_socktype`);
      }
      await server.listenTcp(a.host ?? '', port);
    } else if (a.type === 'unix') {
      await server.listenUnix(a.path!);
    } else if (a.type === 'fd') {
      if (!/^\d+$/.test(a.str ?? '')) throw fail(`File descriptor named '${a.str}' has not been found`);
      await server.listenFd(Number(a.str));
    } else {
      throw fail(`blockd does not support ${a.type} sockets`);
    }
    // As qsd: the credentials are looked up after the socket is bound. None can exist yet
    // (object-add refuses the tls-creds-* types), so any id is unknown.
    if (o['tls-creds'] !== undefined) throw fail(`No TLS credentials with id '${o['tls-creds']}'`);
  } catch (e) {
    await server.destroy();
    if (e instanceof BlockError) throw e;
    throw fail(bindErrorText(e, a.type === 'unix' ? a.path : undefined));
  }
  logger.info({ addr: a }, 'NBD server listening');
  return server;
}
