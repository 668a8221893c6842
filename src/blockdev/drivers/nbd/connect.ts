/**
 * Opening the transport to an NBD server, with QEMU's error texts
 * (util/qemu-sockets.c: "Failed to connect to 'PATH': No such file or
 * directory", "Failed to connect to 'HOST:PORT': Connection refused").
 */
import { connect, type Socket } from 'node:net';
import { BlockError } from '../../../util/errors.ts';
import { errorText } from '../../../platform/native.ts';
import type { SocketAddressValue } from '../../../qapi/sockets.ts';
import { addressText } from './options.ts';

export function connectSocket(s: SocketAddressValue): Promise<Socket> {
  if (s.type !== 'inet' && s.type !== 'unix') {
    return Promise.reject(new BlockError('ENOTSUP', `blockd's nbd driver connects over inet and unix sockets only, not ${s.type}`));
  }
  return new Promise((resolve, reject) => {
    const sock = s.type === 'unix' ? connect({ path: s.path }) : connect({ host: s.host, port: Number(s.port) });
    const onError = (e: NodeJS.ErrnoException) => {
      sock.destroy();
      if (e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN') {
        const h = s as { host: string; port: string };
        reject(new BlockError('EIO', `address resolution failed for ${h.host}:${h.port}: Name or service not known`, { cause: e }));
        return;
      }
      const errno = typeof e.errno === 'number' ? Math.abs(e.errno) : undefined;
      reject(new BlockError('EIO', `Failed to connect to '${addressText(s)}': ${errorText(errno ? { errno } : e)}`, { cause: e }));
    };
    sock.once('error', onError);
    sock.once('connect', () => {
      sock.off('error', onError);
      sock.setNoDelay(true);
      resolve(sock);
    });
  });
}
