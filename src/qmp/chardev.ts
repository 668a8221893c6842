/**
 * --chardev and --monitor, as qemu-storage-daemon parses them, for the
 * character devices a QMP monitor can use: socket (Unix path or TCP
 * host/port; listening with server=on, else connecting out to a listening
 * peer, with reconnect=SECONDS to retry) and stdio; and the chardevs no
 * monitor can use, opened as chardev-add opens them: null, ringbuf and memory
 * (size=), file (path=, append=), pipe (path=), udp (host=, port=,
 * localaddr=, localport=, ipv4=, ipv6=), each with logfile=.
 *
 * --chardev is QemuOpts syntax (not keyval): "socket,id=m,path=/x,server=on,wait=off",
 * backend first, ",," for a comma, bare "server" meaning server=on and
 * "nowait" wait=off (deprecated short forms). --monitor is keyval with the
 * implied key chardev; only mode=control (QMP) exists. A config file may give
 * either as the text or as a JSON object with the same keys.
 *
 * A chardev named "fd:N" is a listening socket inherited at fd N (systemd
 * socket activation, see src/daemon/socket-activation.ts).
 */
import { BlockError } from '../util/errors.ts';
import { VALID_ID } from '../blockdev/graph.ts';
import { fromJson, fromOptionText, strtosz } from '../qapi/visit.ts';
import { enm, obj, opt, req } from '../qapi/types.ts';
import type { ChardevBackendValue } from './chardevs/schema.ts';
import type { ListenAddress } from './monitor.ts';

export interface ChardevSpec {
  id: string;
  addr: ListenAddress;
  /** Wait for the first client before start-up goes on (server=on without wait=off). */
  wait: boolean;
  /**
   * Client mode (no server=on): connect to a peer listening at addr (unix or
   * inet) instead of listening. reconnect > 0: connect in the background and
   * again that many seconds after a failure or a hang-up; otherwise start-up
   * fails if the peer is not there, and a hang-up ends the monitor.
   */
  client?: { reconnect: number };
  /** tls-creds (and tls-authz): TLS on every connection; the ids are resolved when the monitor is added. */
  tls?: { creds: string; authz?: string };
}

export interface MonitorSpec {
  chardev: string;
  pretty: boolean;
  id?: string;
}

const fail = (msg: string): never => { throw new BlockError('EINVAL', msg); };

const BOOL_KEYS = new Set(['server', 'wait', 'telnet', 'tn3270', 'websocket', 'ipv4', 'ipv6', 'nodelay', 'delay', 'abstract', 'tight', 'mux', 'logappend', 'signal', 'append']);
const STRING_KEYS = new Set(['id', 'backend', 'path', 'host', 'port', 'to', 'fd', 'tls-creds', 'tls-authz', 'reconnect', 'logfile', 'local', 'localaddr', 'localport', 'name', 'size', 'chardev']);
/** Accepted but meaningless for a listening QMP socket, or only in their default state. */
const UNSUPPORTED_ON = ['telnet', 'tn3270', 'websocket', 'mux'];
const KNOWN_BACKENDS = new Set(['socket', 'stdio', 'file', 'pipe', 'pty', 'null', 'udp', 'serial', 'tty', 'parallel', 'parport', 'ringbuf', 'memory', 'msmouse', 'wctablet', 'braille', 'testdev', 'spicevmc', 'spiceport', 'qemu-vdagent', 'dbus', 'vc', 'console']);

/** QemuOpts' text form: backend first, then key=value pairs; ",," stands for a comma. */
function splitOpts(text: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',') {
      if (text[i + 1] === ',') { cur += ','; i++; continue; }
      parts.push(cur);
      cur = '';
    } else {
      cur += text[i];
    }
  }
  parts.push(cur);
  return parts;
}

function parseBool(key: string, v: string): boolean {
  if (v === 'on' || v === 'yes' || v === 'true' || v === 'y') return true;
  if (v === 'off' || v === 'no' || v === 'false' || v === 'n') return false;
  return fail(`Parameter '${key}' expects 'on' or 'off'`);
}

/** A --chardev that is not a socket or stdio: the backend chardev-add would get (qemu_chr_parse_*). */
export interface BackendChardevSpec {
  id: string;
  backend: ChardevBackendValue;
}

const FILE_BACKENDS = new Set(['null', 'ringbuf', 'memory', 'file', 'pipe', 'udp']);

function fileBackend(backend: string, opts: Map<string, string | boolean>): ChardevBackendValue {
  const path = opts.get('path') as string | undefined;
  const data: Record<string, unknown> = {};
  if (opts.get('logfile') !== undefined) data.logfile = opts.get('logfile');
  data.logappend = opts.get('logappend') === true;
  switch (backend) {
    case 'file':
      if (path === undefined) fail('chardev: file: no filename given');
      return { type: 'file', data: { ...data, out: path, append: opts.get('append') === true } as ChardevBackendValue['data'] };
    case 'pipe':
      if (path === undefined) fail('chardev: pipe: no device path given');
      return { type: 'pipe', data: { ...data, device: path } as ChardevBackendValue['data'] };
    case 'ringbuf':
    case 'memory': {
      const text = opts.get('size') as string | undefined;
      const big = text === undefined ? 0n : strtosz(text);
      if (big === undefined) fail("Parameter 'size' expects a non-negative number below 2^64");
      // qemu_chr_parse_ringbuf keeps the size in an int: 0 there (or none) means the default.
      const size = Number(BigInt.asIntN(32, big!));
      return { type: backend, data: size !== 0 ? { ...data, size } : data };
    }
    case 'udp': {
      // qemu_chr_parse_udp: remote host (default localhost) and port, local address and port if given.
      const host = (opts.get('host') as string | undefined) || 'localhost';
      const port = opts.get('port') as string | undefined;
      if (!port) fail('chardev: udp: remote port not specified');
      const localaddr = (opts.get('localaddr') as string | undefined) || '';
      const localport = (opts.get('localport') as string | undefined) || '';
      const remote: Record<string, unknown> = { host, port };
      if (opts.has('ipv4')) remote.ipv4 = opts.get('ipv4') === true;
      if (opts.has('ipv6')) remote.ipv6 = opts.get('ipv6') === true;
      const local = localaddr !== '' || localport !== '' ? { type: 'inet', data: { host: localaddr, port: localport || '0' } } : undefined;
      return { type: 'udp', data: { ...data, remote: { type: 'inet', data: remote }, ...(local ? { local } : {}) } as ChardevBackendValue['data'] };
    }
    default:
      return { type: 'null', data };
  }
}

/** Parses one --chardev (text or config-file object). */
export function parseChardev(value: string | Record<string, unknown>): ChardevSpec | BackendChardevSpec {
  const opts = new Map<string, string | boolean>();
  if (typeof value === 'string') {
    splitOpts(value).forEach((part, i) => {
      const eq = part.indexOf('=');
      if (i === 0 && eq < 0) { opts.set('backend', part); return; }
      if (eq < 0) {
        if (BOOL_KEYS.has(part)) opts.set(part, true);
        else if (part.startsWith('no') && BOOL_KEYS.has(part.slice(2))) opts.set(part.slice(2), false);
        else fail(`Invalid parameter '${part}'`);
        return;
      }
      const key = part.slice(0, eq);
      const v = part.slice(eq + 1);
      if (BOOL_KEYS.has(key)) opts.set(key, parseBool(key, v));
      else if (STRING_KEYS.has(key)) opts.set(key, v);
      else fail(`Invalid parameter '${key}'`);
    });
  } else {
    for (const [key, v] of Object.entries(value)) {
      const k = key === 'type' ? 'backend' : key;
      if (BOOL_KEYS.has(k)) opts.set(k, typeof v === 'boolean' ? v : parseBool(k, String(v)));
      else if (STRING_KEYS.has(k)) opts.set(k, String(v));
      else fail(`Invalid parameter '${key}'`);
    }
  }
  const backend = opts.get('backend') as string | undefined;
  const id = opts.get('id') as string | undefined;
  if (id === undefined) fail('chardev: no id specified');
  if (!VALID_ID.test(id!)) fail("Parameter 'id' expects an identifier");
  if (backend === undefined) fail(`chardev: "${id}" missing backend`);
  if (!KNOWN_BACKENDS.has(backend!)) fail(`'${backend}' is not a valid char driver name`);
  if (backend === 'stdio') return { id: id!, addr: { type: 'stdio' }, wait: false };
  if (FILE_BACKENDS.has(backend!)) return { id: id!, backend: fileBackend(backend!, opts) };
  if (backend !== 'socket') fail(`chardev backend '${backend}' is not supported by blockd`);
  for (const k of UNSUPPORTED_ON) if (opts.get(k) === true) fail(`chardev: socket: '${k}' is not supported by blockd`);
  const tlsCreds = opts.get('tls-creds') as string | undefined;
  const tlsAuthz = opts.get('tls-authz') as string | undefined;
  if (tlsAuthz !== undefined && tlsCreds === undefined) fail("'tls_authz' option requires 'tls_creds' option");
  const tls = tlsCreds !== undefined ? { creds: tlsCreds, authz: tlsAuthz } : undefined;
  if (opts.get('logfile') !== undefined) fail('chardev: socket: logfile is not supported by blockd');
  const path = opts.get('path') as string | undefined;
  const host = opts.get('host') as string | undefined;
  const fd = opts.get('fd') as string | undefined;
  if ([path, host, fd].filter((x) => x !== undefined).length > 1) fail("None or one of 'path', 'fd' or 'host' option required.");
  const server = opts.get('server') === true;
  // qemu_chr_parse_socket's order: wait, then reconnect, against the mode.
  if (!server && opts.get('wait') !== undefined) fail("'wait' option is incompatible with socket in client connect mode");
  const reconnectText = opts.get('reconnect') as string | undefined;
  if (server && reconnectText !== undefined) fail("'reconnect' option is incompatible with socket in server listen mode");
  // QemuOpts numbers: decimal digits (a leading minus wraps; QEMU then treats the value as no reconnect).
  if (reconnectText !== undefined && !/^-?\d+$/.test(reconnectText)) fail("Parameter 'reconnect' expects a number");
  const reconnect = reconnectText === undefined ? 0 : Math.max(0, Number(reconnectText));
  const wait = server && opts.get('wait') !== false;
  const client = server ? undefined : { reconnect };
  if (path !== undefined) return { id: id!, addr: { type: 'unix', path }, wait, client, tls };
  if (fd !== undefined) {
    if (!/^\d+$/.test(fd)) fail(`File descriptor named '${fd}' has not been found`);
    // server=on: a listening socket (e.g. from systemd); otherwise a connected one, served at once (client mode).
    return { id: id!, addr: { type: 'fd', fd: Number(fd) }, wait, tls, ...(server ? {} : { client }) };
  }
  if (host !== undefined || opts.get('port') !== undefined) {
    const port = opts.get('port') as string | undefined;
    if (port === undefined) fail('chardev: socket: no port given');
    const p = Number(port);
    if (!/^\d+$/.test(port!) || p > 65535) fail(`address resolution failed for ${host ?? ''}:${port}: Servname not supported for ai_socktype`);
    return { id: id!, addr: { type: 'inet', host: host ?? '', port: p }, wait, client, tls };
  }
  return fail("chardev: socket: one of 'path', 'host' or 'fd' is required");
}

export const MonitorOptions = obj('MonitorOptions', [
  opt('id', 'str', 'Name of the monitor'),
  opt('mode', enm('MonitorMode', ['readline', 'control']), 'Selects the monitor mode (default: control; blockd has only control)'),
  opt('pretty', 'bool', 'Enables pretty printing (QMP only)'),
  req('chardev', 'str', 'Name of a character device to expose the monitor on'),
]);

/** Parses one --monitor (text with implied key chardev, or an object). */
export function parseMonitor(value: string | Record<string, unknown>): MonitorSpec {
  const o = (typeof value === 'string' ? fromOptionText(MonitorOptions, value, 'chardev') : fromJson(MonitorOptions, value)) as
    { id?: string; mode?: string; pretty?: boolean; chardev: string };
  if (o.mode === 'readline') fail('Only QMP is supported');
  return { chardev: o.chardev, pretty: o.pretty === true, id: o.id };
}
