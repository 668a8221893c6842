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
