/**
 * chardev-add's backends: what blockd opens, with qsd 7.2's checks and texts
 * (chardev/char*.c). Opened: null, ringbuf and memory, file, pipe, socket
 * (Unix and TCP, listening or connecting, TLS, nodelay, reconnect), udp,
 * each with its logfile. The backends qsd is built without are refused with its
 * text ("'vc' is not a valid char driver name"); those qsd has and blockd
 * does not (serial, parallel, pty, mux, stdio, and telnet, tn3270,
 * websocket and vsock sockets) with a message that says so.
 */
import { closeSync, constants, openSync } from 'node:fs';
import { errorText } from '../../platform/native.ts';
import { findTlsCreds } from '../../objects/tls/lookup.ts';
import type { ObjectLookup } from '../../objects/lookup.ts';
import { flattenSocketAddress, type SocketAddressValue } from '../../qapi/sockets.ts';
import { FileChardev, type Chardev } from './chardev.ts';
import { RingBuffer } from './ring-buffer.ts';
import { UdpChardev } from './udp-chardev.ts';
import { SocketChardev, type SocketTarget } from './socket-chardev.ts';
import type { InetListenAddress } from '../../platform/inet-listen.ts';
import type { BackendKind, ChardevBackendValue, ChardevCommonValue, ChardevUdpValue, ChardevFileValue, ChardevHostdevValue, ChardevRingbufValue, ChardevSocketValue } from './schema.ts';

/** The backends qsd 7.2 is built with, in query-chardev-backends' order. */
export const QSD_BACKENDS: readonly BackendKind[] = ['serial', 'mux', 'pipe', 'parallel', 'null', 'ringbuf', 'stdio', 'socket', 'file', 'memory', 'udp', 'pty'];
/** The ones blockd opens. */
export const BLOCKD_BACKENDS: ReadonlySet<BackendKind> = new Set(['pipe', 'null', 'ringbuf', 'socket', 'file', 'memory', 'udp']);

export interface OpenContext {
  objects: ObjectLookup;
  /** A line for stderr (background connection failures). */
  report(line: string): void;
}

const fail = (msg: string): never => { throw new Error(msg); };

/** open(2) of a chardev's file, failing with QEMU's "Could not open 'PATH': ..." (or "create", for a log file). */
function openFile(path: string, flags: number, verb: 'open' | 'create'): number {
  try {
    return openSync(path, flags, 0o666);
  } catch (e) {
    return fail(`Could not ${verb} '${path}': ${errorText(e)}`);
  }
}

function openLog(data: ChardevCommonValue): number | undefined {
  if (data.logfile === undefined) return undefined;
  const { O_WRONLY, O_CREAT, O_APPEND, O_TRUNC } = constants;
  return openFile(data.logfile, O_WRONLY | O_CREAT | (data.logappend ? O_APPEND : O_TRUNC), 'create');
}

/** Opens backend `b` as chardev `id`; throws the text chardev-add puts after "Failed to add chardev 'ID': ". */
export async function openChardev(id: string, b: ChardevBackendValue, ctx: OpenContext): Promise<Chardev> {
  if (!(QSD_BACKENDS as readonly string[]).includes(b.type)) fail(`'${b.type}' is not a valid char driver name`);
  if (!BLOCKD_BACKENDS.has(b.type)) fail(`chardev backend '${b.type}' is not supported by blockd`);
  if (b.type === 'socket') return openSocket(id, b.data as ChardevSocketValue, ctx);
  if (b.type === 'udp') return openUdp(id, b.data as ChardevUdpValue);
  const fds: number[] = [];
  const log = openLog(b.data);
  if (log !== undefined) fds.push(log);
  try {
    switch (b.type) {
      case 'null': return new FileChardev(id, 'chardev-null', 'null', fds);
      case 'ringbuf':
      case 'memory': {
        const size = (b.data as ChardevRingbufValue).size ?? 65536;
        if (!RingBuffer.validSize(size)) fail('size of ringbuf chardev must be power of two');
        return new FileChardev(id, `chardev-${b.type}`, b.type, fds, new RingBuffer(size < 0 ? Number(BigInt.asUintN(64, BigInt(size))) : size));
      }
      case 'file': {
        const f = b.data as ChardevFileValue;
        const { O_WRONLY, O_CREAT, O_APPEND, O_TRUNC, O_RDONLY } = constants;
        fds.push(openFile(f.out, O_WRONLY | O_CREAT | (f.append ? O_APPEND : O_TRUNC), 'open'));
        if (f.in !== undefined) fds.push(openFile(f.in, O_RDONLY, 'open'));
        return new FileChardev(id, 'chardev-file', 'file', fds);
      }
      case 'pipe': {
        // As qemu_chr_open_pipe: PATH.in and PATH.out, else PATH for both ways.
        const device = (b.data as ChardevHostdevValue).device;
        const pair: number[] = [];
        try {
          pair.push(openSync(`${device}.in`, constants.O_RDWR));
          pair.push(openSync(`${device}.out`, constants.O_RDWR));
        } catch {
          for (const fd of pair.splice(0)) closeFd(fd);
          pair.push(openFile(device, constants.O_RDWR, 'open'));
        }
        fds.push(...pair);
        return new FileChardev(id, 'chardev-pipe', 'pipe', fds);
      }
    }
  } catch (e) {
    for (const fd of fds) closeFd(fd);
    throw e;
  }
  return fail(`chardev backend '${b.type}' is not supported by blockd`);
}

function closeFd(fd: number): void {
  closeSync(fd);
}

async function openSocket(id: string, s: ChardevSocketValue, ctx: OpenContext): Promise<Chardev> {
  // As qemu_char_open: the log file first.
  const logFd = openLog(s);
  try {
    return await openSocketLogged(id, s, ctx, logFd);
  } catch (e) {
    if (logFd !== undefined) closeFd(logFd);
    throw e;
  }
}

async function openSocketLogged(id: string, s: ChardevSocketValue, ctx: OpenContext, logFd: number | undefined): Promise<Chardev> {
  // qmp_chardev_open_socket's defaults for QMP: a server, not waiting.
  const listen = s.server ?? true;
  let tls: { creds: ReturnType<typeof findTlsCreds>; authz?: string; objects: ObjectLookup } | undefined;
  if (s['tls-creds'] !== undefined) {
    tls = { creds: findTlsCreds(ctx.objects, s['tls-creds'], listen ? 'server' : 'client'), authz: s['tls-authz'], objects: ctx.objects };
  }
  const addr = flattenSocketAddress(s.addr);
  validate(s, addr, listen);
  if (addr.type === 'fd') throw new Error('only QEMU supports file descriptor passing');
  if (addr.type === 'vsock') throw new Error('vsock socket addresses are not supported by blockd');
  for (const k of ['telnet', 'tn3270', 'websocket'] as const) if (s[k]) fail(`chardev: socket: '${k}' is not supported by blockd`);
  let target: SocketTarget;
  if (addr.type === 'unix') {
    const u = addr as { path: string; abstract?: boolean; tight?: boolean };
    if (u.abstract && u.tight === false) fail('chardev: socket: an abstract address with tight=off is not supported by blockd');
    target = { type: 'unix', path: u.path, abstract: u.abstract === true, tight: u.abstract ? true : undefined };
  } else {
    target = { type: 'inet', host: addr.host, port: addr.port };
  }
  const chr = new SocketChardev(id, {
    addr: target, inet: addr.type === 'inet' ? addr as InetListenAddress : undefined, listen, wait: listen && s.wait === true, nodelay: s.nodelay === true,
    reconnect: s.reconnect !== undefined && s.reconnect > 0 ? s.reconnect : 0, tls, report: ctx.report,
  });
  try {
    await chr.open();
  } catch (e) {
    await chr.close();
    throw e;
  }
  chr.holdLog(logFd);
  return chr;
}

/** qmp_chardev_validate_socket, in its order. */
function validate(s: ChardevSocketValue, addr: SocketAddressValue, listen: boolean): void {
  if (addr.type === 'fd') {
    if (s.reconnect !== undefined) fail("'reconnect' option is incompatible with 'fd' address type");
    if (s['tls-creds'] !== undefined && !listen) fail("'tls_creds' option is incompatible with 'fd' address type as client");
  }
  if (addr.type === 'unix' && s['tls-creds'] !== undefined) fail("'tls_creds' option is incompatible with 'unix' address type");
  if (addr.type === 'vsock' && s['tls-creds'] !== undefined) fail("'tls_creds' option is incompatible with 'vsock' address type");
  if (s['tls-authz'] !== undefined && s['tls-creds'] === undefined) fail("'tls_authz' option requires 'tls_creds' option");
  if (listen) {
    if (s.reconnect !== undefined) fail("'reconnect' option is incompatible with socket in server listen mode");
  } else {
    if (s.websocket) fail('Websocket client is not implemented');
    if (s.wait !== undefined) fail("'wait' option is incompatible with socket in client connect mode");
  }
}

async function openUdp(id: string, u: ChardevUdpValue): Promise<Chardev> {
  const logFd = openLog(u);
  try {
    const remote = flattenSocketAddress(u.remote);
    const local = u.local ? flattenSocketAddress(u.local) : undefined;
    if (remote.type !== 'inet') throw new Error('socket type unsupported for datagram');
    if (local && local.type !== 'inet') throw new Error('socket type unsupported for datagram');
    return await UdpChardev.open(id, remote as InetListenAddress, local as InetListenAddress | undefined, logFd);
  } catch (e) {
    if (logFd !== undefined) closeFd(logFd);
    throw e;
  }
}
