/**
 * BlockdevOptionsNbd (qapi/block-core.json in QEMU 7.2), the validated form
 * the driver works with, and the pseudo-filename QEMU prints for such a node
 * (block/nbd.c's nbd_refresh_filename).
 */
import { obj, opt, req, type ObjectType } from '../../../qapi/types.ts';
import { SocketAddress, type SocketAddressValue } from '../../../qapi/sockets.ts';
import type { TlsCreds } from '../../../objects/tls/creds.ts';

export const BlockdevOptionsNbd: ObjectType = obj('BlockdevOptionsNbd', [
  req('server', SocketAddress, 'NBD server address'),
  opt('export', 'str', 'export name'),
  opt('tls-creds', 'str', 'TLS credentials ID'),
  opt('tls-hostname', 'str', 'TLS hostname override for certificate validation'),
  opt('x-dirty-bitmap', 'str', 'a meta context name (qemu:dirty-bitmap:NAME, qemu:allocation-depth) whose block status is reported instead of base:allocation'),
  opt('reconnect-delay', 'uint32', 'on an unexpected disconnect, requests wait this many seconds for a reconnect before failing (default 0)'),
  opt('open-timeout', 'uint32', 'seconds to keep retrying the first connection (default 0: one attempt)'),
  // Not in qsd 7.2: QEMU's multi-conn RFC. Used only when the server advertises NBD_FLAG_CAN_MULTI_CONN.
  opt('multi-conn', 'uint32', 'open up to this many connections when the server advertises multi-conn (default 1, at most 16)'),
]);

export interface NbdConfig {
  server: SocketAddressValue & { ipv4?: boolean; ipv6?: boolean; to?: number };
  export: string;
  /** Whether `export` was given (it decides the filename's form). */
  hasExport: boolean;
  xDirtyBitmap?: string;
  reconnectDelayMs: number;
  openTimeoutMs: number;
  /** multi-conn: connections wanted when the server advertises it. */
  multiConn: number;
  /** tls-creds (a client endpoint's) and the name the server's certificate must carry. */
  tls?: { creds: TlsCreds; hostname?: string };
}

export function parseNbdOptions(o: Record<string, unknown>): NbdConfig {
  return {
    server: o.server as NbdConfig['server'],
    export: (o.export as string | undefined) ?? '',
    hasExport: o.export !== undefined,
    xDirtyBitmap: o['x-dirty-bitmap'] as string | undefined,
    reconnectDelayMs: Number(o['reconnect-delay'] ?? 0) * 1000,
    openTimeoutMs: Number(o['open-timeout'] ?? 0) * 1000,
    multiConn: Number(o['multi-conn'] ?? 1),
  };
}

/**
 * QEMU's exact filename of an nbd node: nbd://host:port/export or
 * nbd+unix:///export?socket=path; undefined where it has none (an inet
 * address with ipv4, ipv6 or to set, vsock, fd), and the node then shows as
 * json:{...}.
 */
export function nbdFilename(c: NbdConfig): string | undefined {
  const s = c.server;
  if (s.type === 'unix') return c.hasExport ? `nbd+unix:///${c.export}?socket=${s.path}` : `nbd+unix://?socket=${s.path}`;
  if (s.type !== 'inet' || s.ipv4 !== undefined || s.ipv6 !== undefined || s.to !== undefined) return undefined;
  return c.hasExport ? `nbd://${s.host}:${s.port}/${c.export}` : `nbd://${s.host}:${s.port}`;
}

/** The address as QEMU's connect errors name it. */
export function addressText(s: SocketAddressValue): string {
  if (s.type === 'unix') return s.path;
  if (s.type === 'inet' || s.type === 'vsock') return `${s.type === 'inet' ? s.host : s.cid}:${s.port}`;
  return s.str;
}
