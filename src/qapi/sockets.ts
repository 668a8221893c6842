/**
 * Socket addresses, as in qsd 7.2's qapi/sockets.json (member order matters:
 * it decides which error is reported first). Used by the NBD server, the
 * monitor's chardevs and (later) the NBD client driver.
 */
import { enm, obj, opt, req, type ObjectType } from './types.ts';

export const InetSocketAddress: ObjectType = obj('InetSocketAddress', [
  req('host', 'str', 'host part of the address'),
  req('port', 'str', 'port part of the address'),
  opt('numeric', 'bool', 'true if the host/port are guaranteed to be numeric (default: false)'),
  opt('to', 'uint16', 'if present, a range of possible ports, from port to this one'),
  opt('ipv4', 'bool', 'whether to accept IPv4 addresses'),
  opt('ipv6', 'bool', 'whether to accept IPv6 addresses'),
  opt('keep-alive', 'bool', 'enable keep-alive'),
  opt('mptcp', 'bool', 'enable multi-path TCP'),
]);

export const UnixSocketAddress: ObjectType = obj('UnixSocketAddress', [
  req('path', 'str', 'filesystem path to use'),
  opt('abstract', 'bool', 'if true, a Linux abstract socket address (default: false)'),
  opt('tight', 'bool', 'if false, pad an abstract address to the full sun_path (default: true)'),
]);

export const VsockSocketAddress: ObjectType = obj('VsockSocketAddress', [
  req('cid', 'str', 'unique host identifier'),
  req('port', 'str', 'port'),
]);

export const FdSocketAddress: ObjectType = obj('FdSocketAddress', [
  req('str', 'str', 'file descriptor number or name'),
]);

export const SocketAddressType = enm('SocketAddressType', ['inet', 'unix', 'vsock', 'fd']);

/** A flat union on 'type'. blockd listens on inet, unix and fd; vsock is accepted by the schema as in qsd. */
export const SocketAddress: ObjectType = obj('SocketAddress', [req('type', SocketAddressType, 'transport type')], {
  union: {
    discriminator: 'type',
    variants: { inet: InetSocketAddress, unix: UnixSocketAddress, vsock: VsockSocketAddress, fd: FdSocketAddress },
  },
});

const wrap = (name: string, t: ObjectType) => obj(`q_obj_${name}Wrapper`, [req('data', t)]);

/** The older form of SocketAddress, {type, data: {...}}; nbd-server-start still takes it. */
export const SocketAddressLegacy: ObjectType = obj('SocketAddressLegacy', [req('type', SocketAddressType)], {
  union: {
    discriminator: 'type',
    variants: {
      inet: wrap('InetSocketAddress', InetSocketAddress),
      unix: wrap('UnixSocketAddress', UnixSocketAddress),
      vsock: wrap('VsockSocketAddress', VsockSocketAddress),
      fd: wrap('String', obj('String', [req('str', 'str')])),
    },
  },
});

/** A validated SocketAddress (the members blockd reads; the others are in the schema as in qsd). */
export type SocketAddressValue =
  | { type: 'inet'; host: string; port: string }
  | { type: 'unix'; path: string }
  | { type: 'vsock'; cid: string; port: string }
  | { type: 'fd'; str: string };

/** A validated SocketAddressLegacy. */
export interface SocketAddressLegacyValue { type: SocketAddressValue['type']; data: Record<string, unknown> }

/** QEMU's socket_address_flatten: the legacy {type, data} form as a flat SocketAddress. */
export function flattenSocketAddress(legacy: SocketAddressLegacyValue): SocketAddressValue {
  return { ...legacy.data, type: legacy.type } as SocketAddressValue;
}
