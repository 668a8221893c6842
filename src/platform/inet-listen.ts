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

interface Target { host: string; ipv6Only: boolean }

/**
 * The addresses to bind, as QEMU's NBD server resolves them (qio_net_listener:
 * one listener per getaddrinfo answer, each IPv6 one v6only), with QEMU's
 * texts. No host: 0.0.0.0 and ::, or the one of the family asked for
 * (ipv4=on,ipv6=on: one IPv6 socket that also takes IPv4).
 */
async function resolveAll(a: InetListenAddress, fam: { family: Family; dualStack: boolean }, port: string): Promise<Target[]> {
  const host = a.host ?? '';
  const failed = (why: string) => new ListenError(`address resolution failed for ${host}:${port}: ${why}`);
  const target = (h: string): Target => ({ host: h, ipv6Only: isIP(h) === 6 && !(a.ipv4 === true && a.ipv6 === true) });
  if (host === '') {
    if (a.ipv4 === true && a.ipv6 === true) return [{ host: '::', ipv6Only: false }];
    if (fam.family === 4) return [target('0.0.0.0')];
    if (fam.family === 6) return [target('::')];
    return [target('0.0.0.0'), target('::')];
  }
  const literal = isIP(host);
  if (literal) {
    if (fam.family !== 0 && literal !== fam.family) throw failed('Address family for hostname not supported');
    return [target(host)];
  }
  if (a.numeric) throw failed('Name or service not known');
  try {
    const found = await lookup(host, { family: fam.family, all: true });
    const seen = new Set<string>();
    return found.filter((f) => !seen.has(f.address) && seen.add(f.address)).map((f) => target(f.address));
  } catch {
    throw failed('Name or service not known');
  }
}

/** The checks before any lookup, and the port range. */
function prepare(a: InetListenAddress): { fam: { family: Family; dualStack: boolean }; first: number; last: number; port: string } {
  if (a.mptcp) throw new ListenError('blockd cannot listen with mptcp=on: Node.js opens plain TCP sockets only');
  const port = a.port ?? '';
  const fam = family(a);
  const first = Number(port);
  if (!/^\d+$/.test(port) || first > 65535) {
    throw new ListenError(`address resolution failed for ${a.host ?? ''}:${port}: Servname not supported for ai_socktype`);
  }
  return { fam, first, last: a.to !== undefined ? a.to : first, port };
}

/** Binds `server` to `t` on the port, or the first free one of first..last (`ranged`: a `to` was given). */
async function bindRange(server: Server, t: Target, first: number, last: number, ranged: boolean): Promise<void> {
  for (let p = first; p <= Math.max(first, last); p++) {
    try {
      await bindOnce(server, { host: t.host, port: p, ipv6Only: t.ipv6Only });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || p >= last) {
        if (ranged && (e as NodeJS.ErrnoException).code === 'EADDRINUSE') {
          throw new ListenError('Failed to find an available port: Address already in use');
        }
        throw e;
      }
    }
  }
}

/**
 * Listens `server` on the address's first answer: the port, or the first
 * free one of `port`..`to`. Other bind errors are thrown as they come (the
 * caller words them, as for a single port).
 */
export async function listenInet(server: Server, a: InetListenAddress): Promise<void> {
  const { fam, first, last, port } = prepare(a);
  const [t] = await resolveAll(a, fam, port);
  await bindRange(server, t!, first, last, a.to !== undefined);
}

/** One bind step per address to listen on (the NBD server's listeners: one server each). */
export async function inetListenTargets(a: InetListenAddress): Promise<((server: Server) => Promise<void>)[]> {
  const { fam, first, last, port } = prepare(a);
  return (await resolveAll(a, fam, port)).map((t) => (server: Server) => bindRange(server, t, first, last, a.to !== undefined));
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
