/**
 * A socket chardev with no frontend, as chardev-add (or a --chardev no
 * --monitor uses) makes one in qsd 7.2: it listens (server, the default) or
 * connects out (with reconnect=SECONDS, in the background and again after a
 * failure), holds one connection and never reads from it for a frontend.
 *
 * What qsd's observable behaviour comes from: with no frontend its chardev
 * never polls the connection for input, only for G_IO_HUP, so it notices a
 * Unix peer's close (the kernel raises POLLHUP) but not a TCP peer's FIN (it
 * stays "connected" to that peer), only a reset; while connected it does not
 * accept, so later clients wait in the backlog. blockd reads and drops the
 * bytes (node has no HUP-only watch) and keeps later clients waiting too.
 */
import { Socket, connect, createServer, type Server } from 'node:net';
import { closeSync, unlinkSync } from 'node:fs';
import { bindErrorText } from '../../platform/bind-error.ts';
import { ListenError, listenInet, type InetListenAddress } from '../../platform/inet-listen.ts';
import { lookup } from 'node:dns/promises';
import { ADDRCONFIG, V4MAPPED } from 'node:dns';
import { isIP } from 'node:net';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { errorText } from '../../platform/native.ts';
import type { TlsCreds } from '../../objects/tls/creds.ts';
import type { ObjectLookup } from '../../objects/lookup.ts';
import { startClientSession, startServerSession } from '../../objects/tls/session.ts';
import type { Chardev } from './chardev.ts';
import { addressProperty, connectedFilename, disconnectedFilename, type ChardevAddress } from './socket-filename.ts';

export type SocketTarget = Extract<ChardevAddress, { type: 'unix' | 'inet' }>;

export interface SocketChardevOptions {
  addr: SocketTarget;
  /** The whole InetSocketAddress of a TCP one (ipv4/ipv6, numeric, to, keep-alive, mptcp), as QEMU reads it. */
  inet?: InetListenAddress;
  listen: boolean;
  /** server: the command (or start-up) waits for the first client. */
  wait: boolean;
  nodelay: boolean;
  /** client: seconds between connection attempts; 0: one attempt, which must succeed. */
  reconnect: number;
  tls?: { creds: TlsCreds; authz?: string; objects: ObjectLookup };
  /** A background connection failure, as qsd prints it ("Unable to connect character device ID: ..."). */
  report(line: string): void;
}

export class SocketChardev implements Chardev {
  readonly qomType = 'chardev-socket';
  readonly frontend = false;
  private server?: Server;
  /** The bound address (for port 0, the port given). */
  private bound?: SocketTarget;
  private current?: Socket;
  /** Its filename while connected, taken when the peer came (as QEMU's tcp_chr_connect). */
  private currentName?: string;
  /** A peer is connected or in its TLS handshake (listening). */
  private serving = false;
  private readonly waiting: Socket[] = [];
  /** Every socket it has (peers, waiting ones, ones in a handshake or connecting), destroyed at close. */
  private readonly sockets = new Set<Socket>();
  private closed = false;
  private retryTimer?: NodeJS.Timeout;
  private firstClient?: () => void;
  private logFd?: number;

  constructor(readonly id: string, private readonly o: SocketChardevOptions) {}

  filename(): string {
    if (this.current) return this.currentName!;
    return disconnectedFilename(this.bound ?? this.o.addr, this.o.listen);
  }

  /** The chardev's log file, closed with it (nothing is ever written to it: there is no frontend). */
  holdLog(fd: number | undefined): void { this.logFd = fd; }

  socketProperties(): { connected: boolean; addr: Record<string, unknown> } {
    return { connected: this.current !== undefined, addr: addressProperty(this.bound ?? this.o.addr, this.bound !== undefined) };
  }

  /** Listens or connects; rejects with qsd's text. */
  async open(): Promise<void> {
    if (this.o.listen) {
      await this.listen();
      if (this.o.wait && !this.current) await new Promise<void>((r) => (this.firstClient = r));
      return;
    }
    if (this.o.reconnect <= 0) {
      this.adopt(await this.attempt());
      return;
    }
    this.connectInBackground();
  }

  private path(a: Extract<SocketTarget, { type: 'unix' }>): string {
    return a.abstract ? `\0${a.path}` : a.path;
  }

  private async listen(): Promise<void> {
    const a = this.o.addr;
    if (a.type === 'unix') {
      if (a.path === '' && !a.abstract) a.path = tempSocketPath();
      checkPathLength(a);
      if (!a.abstract) {
        // As QEMU's socket_listen: whatever is at the path goes.
        try { unlinkSync(a.path); } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`Failed to unlink socket ${a.path}: ${errorText(e)}`);
        }
      }
    }
    // Half-open, so a TCP peer's FIN leaves the connection as qsd leaves it; with TLS, a peer that
    // hangs up in its handshake must end it (qsd's handshake fails at EOF).
    const server = createServer({ allowHalfOpen: !this.o.tls }, (s) => this.accepted(s));
    try {
      if (a.type === 'unix') {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(this.path(a), () => resolve());
        });
      } else {
        const inet = this.o.inet ?? { host: a.host, port: a.port };
        // No host and no family: qsd binds getaddrinfo's first passive answer, 0.0.0.0 (IPv4 only).
        const unspec = inet.ipv4 === inet.ipv6 && inet.ipv4 !== false;
        await listenInet(server, !inet.host && unspec ? { ...inet, host: '0.0.0.0' } : inet);
      }
    } catch (e) {
      if (e instanceof ListenError) throw e;
      throw new Error(bindErrorText(e, a.type === 'unix' ? a.path : undefined));
    }
    server.removeAllListeners('error');
    server.on('error', () => undefined);
    this.server = server;
    const where = server.address();
    if (a.type === 'inet' && where && typeof where === 'object') this.bound = { type: 'inet', host: where.address, port: String(where.port) };
  }

  private track(s: Socket): void {
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
  }

  private accepted(s: Socket): void {
    if (this.closed) return void s.destroy();
    this.track(s);
    s.on('error', () => undefined);
    if (this.serving) {
      // qsd does not accept while it has a peer (or is in a TLS handshake with one): this one waits, as in a backlog.
      s.pause();
      this.waiting.push(s);
      s.once('close', () => { const i = this.waiting.indexOf(s); if (i >= 0) this.waiting.splice(i, 1); });
      return;
    }
    this.serve(s);
  }

  /** Takes an accepted peer: the TLS handshake first, if any; a peer whose handshake fails goes, and the next is taken. */
  private serve(s: Socket): void {
    this.serving = true;
    s.resume();
    void this.secure(s, true).then((t) => {
      if (t) return this.adopt(t);
      this.serving = false;
      this.next();
    });
  }

  /** TLS first, when configured; undefined if the handshake failed (the peer is dropped, as qsd does). */
  private async secure(s: Socket, server: boolean): Promise<Socket | undefined> {
    const tls = this.o.tls;
    if (!tls) return s;
    try {
      if (server) return (await startServerSession(tls.creds, s, { authz: tls.authz, objects: tls.objects })).socket;
      return await startClientSession(tls.creds, s, this.o.addr.type === 'inet' ? this.o.addr.host || 'localhost' : undefined);
    } catch {
      s.destroy();
      return undefined;
    }
  }

  private adopt(s: Socket): void {
    if (this.closed) return void s.destroy();
    this.current = s;
    this.currentName = connectedFilename(s, this.o.listen, this.o.listen && this.o.addr.type === 'unix' && !this.o.addr.abstract ? this.o.addr.path : '');
    if (this.o.nodelay) s.setNoDelay?.(true);
    if (this.o.inet?.['keep-alive']) s.setKeepAlive?.(true);
    s.on('error', () => undefined);
    s.on('data', () => undefined);
    const unix = this.o.addr.type === 'unix';
    // A Unix peer's close raises POLLHUP, which qsd hears; a TCP peer's FIN it does not, only a reset.
    if (unix) s.once('end', () => this.lost(s));
    s.once('close', (hadError) => { if (unix || hadError) this.lost(s); });
    s.resume();
    this.firstClient?.();
    this.firstClient = undefined;
  }

  private lost(s: Socket): void {
    if (this.current !== s) return;
    this.current = undefined;
    this.serving = false;
    s.destroy();
    if (this.o.listen) this.next();
    else if (this.o.reconnect > 0 && !this.closed) this.retryTimer = setTimeout(() => this.connectInBackground(), this.o.reconnect * 1000);
  }

  private next(): void {
    const s = this.waiting.shift();
    if (s) this.serve(s);
  }

  private connectInBackground(): void {
    let reported = false;
    const tryOnce = () => {
      this.retryTimer = undefined;
      if (this.closed) return;
      this.attempt().then((s) => this.adopt(s), (e: Error) => {
        if (!reported) this.o.report(`Unable to connect character device ${this.id}: ${e.message}`);
        reported = true;
        if (!this.closed) this.retryTimer = setTimeout(tryOnce, this.o.reconnect * 1000);
      });
    };
    tryOnce();
  }

  /** One connection attempt (and the TLS handshake); rejects with qsd's text. */
  private async attempt(): Promise<Socket> {
    const a = this.o.addr;
    const where = a.type === 'unix' ? a.path : `${a.host}:${a.port}`;
    if (a.type === 'unix') checkPathLength(a);
    const host = a.type === 'inet' ? await resolveConnect(this.o.inet ?? { host: a.host, port: a.port }) : undefined;
    return new Promise((resolve, reject) => {
      const s = a.type === 'unix' ? connect({ path: this.path(a), allowHalfOpen: true }) : connect({ host, port: Number(a.port), allowHalfOpen: true });
      this.track(s);
      s.once('error', (e: NodeJS.ErrnoException) => reject(new Error(`Failed to connect to '${where}': ${errorText(e)}`)));
      s.once('connect', () => {
        s.removeAllListeners('error');
        s.on('error', () => undefined);
        void this.secure(s, false).then((t) => (t ? resolve(t) : reject(new Error(`TLS handshake with '${where}' failed`))));
      });
    });
  }


  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.current?.destroy();
    this.waiting.splice(0);
    for (const s of this.sockets) s.destroy();
    this.firstClient?.();
    if (this.logFd !== undefined) closeSync(this.logFd);
    const server = this.server;
    // node removes a Unix listener's socket file when it closes, as QEMU does.
    return server ? new Promise((r) => server.close(() => r())) : Promise.resolve();
  }
}

/** QEMU's check of a Unix socket path against sun_path (108 bytes; 107 for an abstract name). */
function checkPathLength(a: Extract<SocketTarget, { type: 'unix' }>): void {
  if (Buffer.byteLength(a.path) > (a.abstract ? 107 : 108)) throw new Error(`UNIX socket path '${a.path}' is too long`);
}

/** What QEMU listens on for an empty Unix path: a fresh name in $TMPDIR (mkstemp's qemu-socket-XXXXXX). */
function tempSocketPath(): string {
  const chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const tail = [...randomBytes(6)].map((b) => chars[b % chars.length]).join('');
  return `${process.env.TMPDIR || tmpdir()}/qemu-socket-${tail}`;
}

/**
 * The address a connecting TCP chardev connects to, as QEMU's
 * inet_parse_connect_saddr resolves it: the family from ipv4/ipv6 with
 * AI_V4MAPPED (an IPv4 address for an IPv6-only client becomes
 * ::ffff:a.b.c.d), no numeric-only lookup; its texts.
 */
async function resolveConnect(a: InetListenAddress): Promise<string> {
  const host = a.host ?? '';
  const port = a.port ?? '';
  const failed = (why: string) => new Error(`address resolution failed for ${host}:${port}: ${why}`);
  if (a.ipv4 === false && a.ipv6 === false) throw new Error('Cannot disable IPv4 and IPv6 at same time');
  if (!/^\d+$/.test(port) || Number(port) > 65535) throw failed('Servname not supported for ai_socktype');
  const fam = a.ipv4 === true && a.ipv6 === true ? 0 : a.ipv6 === true || a.ipv4 === false ? 6 : a.ipv4 === true || a.ipv6 === false ? 4 : 0;
  if (host === '') throw failed('Name or service not known');
  const literal = isIP(host);
  if (literal) {
    if (fam === 4 && literal === 6) throw failed('Address family for hostname not supported');
    return fam === 6 && literal === 4 ? `::ffff:${host}` : host;
  }
  try {
    return (await lookup(host, { family: fam, hints: ADDRCONFIG | (fam === 6 ? V4MAPPED : 0) })).address;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw failed(code === 'EAI_AGAIN' ? 'Temporary failure in name resolution' : code === 'ENODATA' ? 'No address associated with hostname' : 'Name or service not known');
  }
}
