/**
 * query-chardev's `filename` of a socket chardev, in qsd 7.2's forms
 * (chardev/char-socket.c): "disconnected:unix:PATH,server=on" or
 * "disconnected:tcp:HOST:PORT" while no peer is connected (for a listening
 * TCP socket, the address it is bound to), and once one is, the connection's
 * own addresses: "unix:PATH,server=on" ("unix:" for a client, whose end has
 * no name), "tcp:127.0.0.1:4000,server=on <-> 127.0.0.1:51234".
 */
import type { Socket } from 'node:net';

/** The socket address a chardev names (listening: the one bound). */
export type ChardevAddress =
  | { type: 'unix'; path: string; abstract?: boolean; tight?: boolean }
  | { type: 'inet'; host: string; port: string }
  | { type: 'fd'; str: string };

export function disconnectedFilename(addr: ChardevAddress, listen: boolean): string {
  return `disconnected:${addressText(addr, listen)}`;
}

function addressText(addr: ChardevAddress, listen: boolean): string {
  const server = listen ? ',server=on' : '';
  switch (addr.type) {
    case 'inet': return `tcp:${addr.host}:${addr.port}${server}`;
    case 'fd': return `fd:${addr.str}${server}`;
    case 'unix': {
      const abs = addr.abstract ? `,abstract=on${addr.tight !== false ? ',tight=on' : ''}` : '';
      return `unix:${addr.path}${abs}${server}`;
    }
  }
}

/**
 * A connected chardev's name. `localPath` is the Unix path of our end: the
 * listening path for an accepted connection, '' for one we connected (and
 * for an abstract name, which QEMU prints as a C string starting with NUL).
 */
export function connectedFilename(socket: Socket, listen: boolean, localPath: string): string {
  const server = listen ? ',server=on' : '';
  if (socket.remoteFamily === undefined && socket.localAddress === undefined) return `unix:${localPath}${server}`;
  const host = (a: string | undefined) => (a?.includes(':') ? `[${a}]` : a ?? '');
  return `tcp:${host(socket.localAddress)}:${socket.localPort}${server} <-> ${host(socket.remoteAddress)}:${socket.remotePort}`;
}

/**
 * A socket chardev's `addr` QOM property: the SocketAddress QEMU keeps (the
 * bound one when listening, numeric with ipv4/ipv6 set, as
 * socket_local_address gives it; the one given when connecting), in the
 * member order qsd's qom-get prints.
 */
export function addressProperty(addr: ChardevAddress, bound: boolean): Record<string, unknown> {
  switch (addr.type) {
    case 'unix': return addr.abstract ? { path: addr.path, abstract: true, tight: addr.tight !== false, type: 'unix' } : { path: addr.path, type: 'unix' };
    case 'fd': return { str: addr.str, type: 'fd' };
    case 'inet':
      if (!bound) return { port: addr.port, host: addr.host, type: 'inet' };
      return { port: addr.port, ...(addr.host.includes(':') ? { ipv6: true } : { ipv4: true }), host: addr.host, type: 'inet' };
  }
}
