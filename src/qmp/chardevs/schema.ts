/**
 * The chardev part of qsd 7.2's qapi/char.json: ChardevBackend (a union of
 * {type, data} wrappers, member order as qsd's, which decides which error
 * comes first) and the types of query-chardev, query-chardev-backends and
 * the ringbuf commands. The schema has every backend qsd's has; which ones
 * blockd opens is open.ts's business.
 */
import { arr, enm, obj, opt, req, type Member, type ObjectType } from '../../qapi/types.ts';
import { SocketAddressLegacy, type SocketAddressLegacyValue } from '../../qapi/sockets.ts';

export const BACKEND_KINDS = ['file', 'serial', 'parallel', 'pipe', 'socket', 'udp', 'pty', 'null', 'mux', 'msmouse', 'wctablet', 'braille',
  'testdev', 'stdio', 'console', 'spicevmc', 'spiceport', 'qemu-vdagent', 'dbus', 'vc', 'ringbuf', 'memory'] as const;
export type BackendKind = typeof BACKEND_KINDS[number];

const COMMON: Member[] = [
  opt('logfile', 'str', 'The name of a logfile to save output'),
  opt('logappend', 'bool', 'true to append instead of truncate (default to false to truncate)'),
];
const common = (name: string, members: Member[] = []) => obj(name, [...COMMON, ...members]);

const ChardevCommon = common('ChardevCommon');
const ChardevFile = common('ChardevFile', [
  opt('in', 'str', 'The name of the input file'),
  req('out', 'str', 'The name of the output file'),
  opt('append', 'bool', 'Open the file in append mode (default false to truncate)'),
]);
const ChardevHostdev = common('ChardevHostdev', [req('device', 'str', 'The name of the special file for the device, i.e. /dev/ttyS0 on Unix or COM1: on Windows')]);
const ChardevSocket = common('ChardevSocket', [
  req('addr', SocketAddressLegacy, 'socket address to listen on (server=true) or connect to (server=false)'),
  opt('tls-creds', 'str', 'the ID of the TLS credentials object'),
  opt('tls-authz', 'str', 'the ID of the QAuthZ authorization object against which the client\'s x509 distinguished name will be validated'),
  opt('server', 'bool', 'create server socket (default: true)'),
  opt('wait', 'bool', 'wait for incoming connection on server sockets (default: false)'),
  opt('nodelay', 'bool', 'set TCP_NODELAY socket option (default: false)'),
  opt('telnet', 'bool', 'enable telnet protocol on server sockets (default: false)'),
  opt('tn3270', 'bool', 'enable tn3270 protocol on server sockets (default: false)'),
  opt('websocket', 'bool', 'enable websocket protocol on server sockets (default: false)'),
  opt('reconnect', 'int', 'For a client socket, if a socket is disconnected, then attempt a reconnect after the given number of seconds'),
]);
const ChardevUdp = common('ChardevUdp', [
  req('remote', SocketAddressLegacy, 'remote address'),
  opt('local', SocketAddressLegacy, 'local address'),
]);
const ChardevMux = common('ChardevMux', [req('chardev', 'str', 'name of the base chardev.')]);
const ChardevStdio = common('ChardevStdio', [opt('signal', 'bool', 'Allow signals (such as SIGINT triggered by ^C) be delivered to qemu. Default: true.')]);
const ChardevSpiceChannel = common('ChardevSpiceChannel', [req('type', 'str', 'kind of channel (for example vdagent).')]);
const ChardevSpicePort = common('ChardevSpicePort', [req('fqdn', 'str', 'name of the channel (see docs/spice-port-fqdn.txt)')]);
const ChardevQemuVDAgent = common('ChardevQemuVDAgent', [opt('mouse', 'bool', 'enable/disable mouse'), opt('clipboard', 'bool', 'enable/disable clipboard')]);
const ChardevDBus = common('ChardevDBus', [req('name', 'str', 'name of the channel (following docs/spice-port-fqdn.txt)')]);
const ChardevVC = common('ChardevVC', [opt('width', 'int', 'console width, in pixels'), opt('height', 'int', 'console height, in pixels'),
  opt('cols', 'int', 'console width, in chars'), opt('rows', 'int', 'console height, in chars')]);
const ChardevRingbuf = common('ChardevRingbuf', [opt('size', 'int', 'ring buffer size, must be power of two, default is 65536')]);

const wrapper = (t: ObjectType) => obj(`q_obj_${t.name}-wrapper`, [req('data', t)]);
const VARIANT_TYPES: Record<BackendKind, ObjectType> = {
  file: ChardevFile, serial: ChardevHostdev, parallel: ChardevHostdev, pipe: ChardevHostdev, socket: ChardevSocket, udp: ChardevUdp,
  pty: ChardevCommon, null: ChardevCommon, mux: ChardevMux, msmouse: ChardevCommon, wctablet: ChardevCommon, braille: ChardevCommon,
  testdev: ChardevCommon, stdio: ChardevStdio, console: ChardevCommon, spicevmc: ChardevSpiceChannel, spiceport: ChardevSpicePort,
  'qemu-vdagent': ChardevQemuVDAgent, dbus: ChardevDBus, vc: ChardevVC, ringbuf: ChardevRingbuf, memory: ChardevRingbuf,
};
const wrappers = new Map<ObjectType, ObjectType>();
const wrapped = (t: ObjectType) => { let w = wrappers.get(t); if (!w) wrappers.set(t, (w = wrapper(t))); return w; };

export const ChardevBackendKind = enm('ChardevBackendKind', [...BACKEND_KINDS]);
export const ChardevBackend: ObjectType = obj('ChardevBackend', [req('type', ChardevBackendKind, 'backend type')], {
  union: { discriminator: 'type', variants: Object.fromEntries(BACKEND_KINDS.map((k) => [k, wrapped(VARIANT_TYPES[k])])) },
});

export const ChardevReturn = obj('ChardevReturn', [opt('pty', 'str', 'name of the slave pseudoterminal device, present if and only if a chardev of type \'pty\' was created')]);
export const ChardevInfo = obj('ChardevInfo', [
  req('label', 'str', 'the label of the character device'),
  req('filename', 'str', 'the filename of the character device'),
  req('frontend-open', 'bool', 'shows whether the frontend device attached to this backend (e.g. with the chardev=... option) is in open or closed state (since 2.1)'),
]);
export const ChardevBackendInfo = obj('ChardevBackendInfo', [req('name', 'str', 'the name of the backend')]);
export const DataFormat = enm('DataFormat', ['utf8', 'base64'], 'An enumeration of data format.');
export const ChardevInfoList = arr(ChardevInfo);
export const ChardevBackendInfoList = arr(ChardevBackendInfo);

/** Members every backend has. */
export interface ChardevCommonValue { logfile?: string; logappend?: boolean }
export interface ChardevSocketValue extends ChardevCommonValue {
  addr: SocketAddressLegacyValue;
  'tls-creds'?: string;
  'tls-authz'?: string;
  server?: boolean;
  wait?: boolean;
  nodelay?: boolean;
  telnet?: boolean;
  tn3270?: boolean;
  websocket?: boolean;
  reconnect?: number;
}
export interface ChardevFileValue extends ChardevCommonValue { in?: string; out: string; append?: boolean }
export interface ChardevHostdevValue extends ChardevCommonValue { device: string }
export interface ChardevRingbufValue extends ChardevCommonValue { size?: number }
export interface ChardevUdpValue extends ChardevCommonValue { remote: SocketAddressLegacyValue; local?: SocketAddressLegacyValue }

/** A validated ChardevBackend. */
export interface ChardevBackendValue { type: BackendKind; data: ChardevCommonValue }
