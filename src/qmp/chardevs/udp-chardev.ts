/**
 * A `udp` chardev (chardev/char-udp.c with util/qemu-sockets.c's
 * inet_dgram_saddr): a datagram socket bound to `local` (default: any
 * address, any port) and connected to `remote`, resolved as QEMU resolves
 * them and failing with its texts. With no frontend nothing is sent, and
 * what arrives is dropped (qsd leaves it unread in the socket).
 */
import { createSocket, type Socket } from 'node:dgram';
import { ADDRCONFIG, V4MAPPED } from 'node:dns';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { closeSync } from 'node:fs';
import { errorText } from '../../platform/native.ts';
import type { InetListenAddress } from '../../platform/inet-listen.ts';
import type { Chardev } from './chardev.ts';

const fail = (msg: string): never => { throw new Error(msg); };

async function resolve(host: string, port: string, family: 0 | 4 | 6, hints: number): Promise<{ address: string; family: 4 | 6 }> {
  const failed = (why: string) => new Error(`address resolution failed for ${host}:${port}: ${why}`);
  if (!/^\d+$/.test(port) || Number(port) > 65535) throw failed('Servname not supported for ai_socktype');
  const literal = isIP(host);
  if (literal) {
    if (family === 4 && literal === 6) throw failed('Address family for hostname not supported');
    if (family === 6 && literal === 4) return { address: `::ffff:${host}`, family: 6 };
    return { address: host, family: literal as 4 | 6 };
  }
  try {
    const r = await lookup(host, { family, hints });
    return { address: r.address, family: r.family as 4 | 6 };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw failed(code === 'EAI_AGAIN' ? 'Temporary failure in name resolution' : code === 'ENODATA' ? 'No address associated with hostname' : 'Name or service not known');
  }
}

/** QEMU's inet_ai_family_from_address. */
function familyOf(a: InetListenAddress): 0 | 4 | 6 {
  if (a.ipv4 === false && a.ipv6 === false) fail('Cannot disable IPv4 and IPv6 at same time');
  if (a.ipv4 === true && a.ipv6 === true) return 0;
  if (a.ipv6 === true || a.ipv4 === false) return 6;
  if (a.ipv4 === true || a.ipv6 === false) return 4;
  return 0;
}

export class UdpChardev implements Chardev {
  readonly qomType = 'chardev-udp';
  readonly frontend = false;
  private closed = false;

  private constructor(readonly id: string, private readonly socket: Socket, private readonly logFd: number | undefined) {}

  /** Opens it; `remote` and `local` are the flattened InetSocketAddresses (other address types were refused before). */
  static async open(id: string, remote: InetListenAddress, local: InetListenAddress | undefined, logFd: number | undefined): Promise<UdpChardev> {
    const family = familyOf(remote);
    const host = remote.host || 'localhost';
    if (!remote.port) fail('remote port not specified');
    const peer = await resolve(host, remote.port!, family, ADDRCONFIG | V4MAPPED);
    const localHost = local?.host || '';
    const localPort = local?.port || '0';
    const bindTo = localHost === '' ? { address: peer.family === 6 ? '::' : '0.0.0.0' } : await resolve(localHost, localPort, peer.family, 0);
    const socket = createSocket({ type: peer.family === 6 ? 'udp6' : 'udp4', reuseAddr: true });
    socket.on('message', () => undefined);
    try {
      await new Promise<void>((res, rej) => {
        socket.once('error', (e) => rej(new Error(`Failed to bind socket: ${errorText(e)}`)));
        socket.bind({ address: bindTo.address, port: Number(localPort) }, () => res());
      });
      socket.removeAllListeners('error');
      await new Promise<void>((res, rej) => {
        // QEMU's text names the local address and port here (its variables at that point).
        socket.connect(Number(remote.port), peer.address, (e?: Error) => (e ? rej(new Error(`Failed to connect to '${localHost || '(null)'}:${localPort}': ${errorText(e)}`)) : res()));
      });
    } catch (e) {
      socket.close();
      throw e;
    }
    socket.on('error', () => undefined);
    return new UdpChardev(id, socket, logFd);
  }

  filename(): string { return 'udp'; }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    if (this.logFd !== undefined) closeSync(this.logFd);
    return new Promise((r) => this.socket.close(() => r()));
  }
}
