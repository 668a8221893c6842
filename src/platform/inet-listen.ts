/**
 * Where a listener binds for an InetSocketAddress, as QEMU's
 * inet_listen_saddr decides it (util/qemu-sockets.c): the address family
 * from `ipv4`/`ipv6` (its matrix, with IPV6_V6ONLY off only when neither or
 * both are asked for), `numeric` hosts (no name lookup), and `to`, a range
 * of ports of which the first free one is taken. Errors carry QEMU's texts.
 *
 * `mptcp` is refused: Node's sockets are plain TCP and cannot be opened with
 * IPPROTO_MPTCP. `keep-alive` (accepted and ignored by qsd 7.2's listeners)
 * turns on TCP keep-alive for each accepted connection; the caller applies it.
 */
import { lookup } from 'node:dns/promises';
import { isIP, type ListenOptions, type Server } from 'node:net';

export interface InetListenAddress {
  host?: string;
  port?: string;
  numeric?: boolean;
  to?: number;
  ipv4?: boolean;
  ipv6?: boolean;
  'keep-alive'?: boolean;
  mptcp?: boolean;
}

/** A listen failure whose message is the whole text to report. */
export class ListenError extends Error {}

type Family = 0 | 4 | 6;

/** QEMU's inet_ai_family_from_address, and whether an IPv6 socket also takes IPv4 (v6only off). */
function family(a: InetListenAddress): { family: Family; dualStack: boolean } {
  const { ipv4, ipv6 } = a;
  if (ipv4 === false && ipv6 === false) throw new ListenError('Cannot disable IPv4 and IPv6 at same time');
  if (ipv4 === true && ipv6 === true) return { family: 0, dualStack: true };
  if (ipv6 === true || ipv4 === false) return { family: 6, dualStack: false };
  if (ipv4 === true || ipv6 === false) return { family: 4, dualStack: false };
  return { family: 0, dualStack: true };
}

/** The host to bind: resolved in the chosen family (getaddrinfo's first answer), with QEMU's texts. */
async function resolve(a: InetListenAddress, fam: Family, port: string): Promise<string | undefined> {
  const host = a.host ?? '';
  const failed = (why: string) => new ListenError(`address resolution failed for ${host}:${port}: ${why}`);
  if (host === '') return fam === 4 ? '0.0.0.0' : fam === 6 ? '::' : undefined;
  const literal = isIP(host);
  if (literal) {
    if (fam !== 0 && literal !== fam) throw failed('Address family for hostname not supported');
    return host;
  }
  if (a.numeric) throw failed('Name or service not known');
  try {
    return (await lookup(host, { family: fam })).address;
  } catch {
    throw failed('Name or service not known');
  }
}

/**
 * Listens `server` on the address: the port, or the first free one of
 * `port`..`to`. Other bind errors are thrown as they come (the caller words
 * them, as for a single port).
 */
export async function listenInet(server: Server, a: InetListenAddress): Promise<void> {
  if (a.mptcp) throw new ListenError('blockd cannot listen with mptcp=on: Node.js opens plain TCP sockets only');
  const port = a.port ?? '';
  const fam = family(a);
  const first = Number(port);
  if (!/^\d+$/.test(port) || first > 65535) {
    throw new ListenError(`address resolution failed for ${a.host ?? ''}:${port}: Servname not supported for ai_socktype`);
  }
  const host = await resolve(a, fam.family, port);
  const last = a.to !== undefined ? a.to : first;
  // IPV6_V6ONLY as QEMU's try_bind: off only for "neither or both" (one socket for both families).
  const ipv6Only = !fam.dualStack && (host === undefined || isIP(host) === 6);
  for (let p = first; p <= Math.max(first, last); p++) {
    try {
      await bindOnce(server, { host, port: p, ipv6Only });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || p >= last) {
        if (a.to !== undefined && (e as NodeJS.ErrnoException).code === 'EADDRINUSE') {
          throw new ListenError('Failed to find an available port: Address already in use');
        }
        throw e;
      }
    }
  }
}

function bindOnce(server: Server, where: ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    server.once('error', onError);
    server.listen(where, () => {
      server.off('error', onError);
      resolve();
    });
  });
}
