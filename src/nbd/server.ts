/**
 * The NBD server: listeners (TCP, Unix, an inherited fd) feeding connections
 * that serve the NBD exports (an NbdExportList, shared by every server).
 *
 * max-connections as qsd (default 100, see DEFAULT_MAX_CONNECTIONS): once
 * the limit is reached the server stops taking new clients; they wait (connected, not greeted) until a slot frees, as
 * they would in qsd's listen backlog. Waiting sockets are capped.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { lstatSync, unlinkSync } from 'node:fs';
import type { Logger } from 'pino';
import { NbdConnection } from './connection.ts';
import { PlainSocketTransport } from './transport/plain.ts';
import { TlsTransport } from './transport/tls.ts';
import type { Transport } from './transport/transport.ts';
import { tlsOptionHandlers } from './tls-options.ts';
import type { TlsCreds } from '../objects/tls/creds.ts';
import type { ObjectLookup } from '../objects/lookup.ts';
import { TlsSessionError, serverContext, startServerSession } from '../objects/tls/session.ts';
import type { SecureContext } from 'node:tls';
import type { NbdExportList } from './exports.ts';
import type { NegotiationEnv } from './options.ts';
import { BufferPool } from '../util/buffer-pool.ts';
import { inetListenTargets, type InetListenAddress } from '../platform/inet-listen.ts';

export interface NbdServerOptions {
  /** Most clients served at once; 0 = unlimited; unset = DEFAULT_MAX_CONNECTIONS. */
  maxConnections?: number;
  /** Seconds a client may take to negotiate; 0 = no limit. Default 10. */
  handshakeMaxSeconds?: number;
  logger: Logger;
  /** Answer rejected requests with the spec's preferred errnos instead of qsd's EINVAL (see validate.ts). */
  specErrnos?: boolean;
  maxInflightRequests?: number;
  maxInflightBytes?: number;
  /** TLS-only server (FORCEDTLS): the credentials, the authz object's id, and where to look it up. */
  tls?: { creds: TlsCreds; authz?: string; objects: ObjectLookup };
}

export const DEFAULT_HANDSHAKE_MAX_SECONDS = 10;
/**
 * max-connections when none is given: 100, as qsd 7.2 with the CVE-2024-7409
 * fix (Debian's build). Clients beyond it wait to be greeted.
 */
export const DEFAULT_MAX_CONNECTIONS = 100;
/** Clients kept waiting for a slot beyond max-connections; more are turned away. */
const MAX_WAITING = 1024;

interface Listener { server: Server; unixPath?: string; describe: string }

export class NbdServer {
  private readonly listeners: Listener[] = [];
  private readonly active = new Set<NbdConnection>();
  private readonly waiting: Socket[] = [];
  private readonly log: Logger;
  private readonly env: NegotiationEnv;
  private nextId = 1;
  /** Connections served since start (negotiating or beyond), and clients turned away (no waiting slot left, TLS refused). */
  readonly counters = { accepted: 0, refused: 0 };
  private readonly pool = new BufferPool();
  private closing?: Promise<void>;
  /** TCP keep-alive on client connections (an inet listener's `keep-alive`). */
  private keepAlive = false;
  /** The TLS context every session uses, or why no session can start (an unusable priority string). */
  private tlsContext?: SecureContext | TlsSessionError;

  constructor(readonly registry: NbdExportList, private readonly opts: NbdServerOptions) {
    this.log = opts.logger.child({ component: 'nbd' });
    const multiConn = this.maxConnections !== 1;
    this.env = {
      findExport: (name) => registry.byName(name),
      listExports: () => registry.list().filter((e) => !e.shuttingDown),
      multiConn,
    };
    if (opts.tls) {
      try {
        this.tlsContext = serverContext(opts.tls.creds);
      } catch (e) {
        if (!(e instanceof TlsSessionError)) throw e;
        // As qsd: the server starts, and every handshake fails with the reason.
        this.tlsContext = e;
        this.log.error(`${opts.tls.creds.type} '${opts.tls.creds.id}': ${e.message}; every TLS handshake will fail`);
      }
    }
  }

  private get maxConnections(): number { return this.opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS; }

  /** Clients being served (negotiating or in transmission), not counting those waiting for a slot. */
  get connections(): number { return this.active.size; }

  /** Clients connected and waiting for a slot (beyond max-connections). */
  get waitingClients(): number { return this.waiting.length; }

  /** The listeners, as their log names them ("tcp 127.0.0.1:10809", "unix /run/blockd/nbd.sock"). */
  listenerNames(): string[] { return this.listeners.map((l) => l.describe); }

  /** Bound addresses, e.g. to find the port chosen for port 0. */
  addresses(): (ReturnType<Server['address']>)[] {
    return this.listeners.map((l) => l.server.address());
  }

  listenTcp(host: string, port: number): Promise<void> {
    return this.listenInet({ host, port: String(port) });
  }

  /**
   * A TCP listener for an InetSocketAddress (QEMU's rules for ipv4/ipv6,
   * numeric and a port range `to`: src/platform/inet-listen.ts); with
   * `keep-alive`, every client connection gets TCP keep-alive.
   */
  async listenInet(a: InetListenAddress): Promise<void> {
    if (a['keep-alive']) this.keepAlive = true;
    const binds = await inetListenTargets(a);
    const before = this.listeners.length;
    try {
      for (const bind of binds) {
        await this.listen(bind, () => {
          const addr = this.listeners.at(-1)?.server.address();
          return typeof addr === 'object' && addr ? `tcp ${addr.address}:${addr.port}` : `tcp ${a.host ?? ''}:${a.port ?? ''}`;
        });
      }
    } catch (e) {
      // All of the address or none of it.
      for (const l of this.listeners.splice(before)) l.server.close();
      throw e;
    }
  }

  /** A Unix socket listener; `abstract` binds in the abstract namespace (no file), the name padded with NULs to the whole sun_path. */
  listenUnix(path: string, abstract = false): Promise<void> {
    if (abstract) return this.listen((server) => bindWith(server, `\0${path}`), () => `unix @${path}`);
    // Like qsd, a stale socket file at the path is replaced.
    try {
      if (lstatSync(path).isSocket()) unlinkSync(path);
    } catch { /* absent */ }
    return this.listen((server) => bindWith(server, path), () => `unix ${path}`, path);
  }

  /** A listening socket inherited from the parent (systemd socket activation). */
  listenFd(fd: number): Promise<void> {
    return this.listen((server) => bindWith(server, { fd }), () => `fd ${fd}`);
  }

  private async listen(bind: (server: Server) => Promise<void>, describe: () => string, unixPath?: string): Promise<void> {
    if (this.closing) throw new Error('NBD server is shut down');
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => this.accept(s));
    await bind(server);
    const listener = { server, unixPath, describe: '' };
    this.listeners.push(listener);
    listener.describe = describe();
    server.on('error', (err) => this.log.error({ err, listener: listener.describe }, 'NBD listener error'));
  }

  private accept(socket: Socket): void {
    if (this.closing) return void socket.destroy();
    if (this.keepAlive) socket.setKeepAlive(true);
    const max = this.maxConnections;
    if (max > 0 && this.active.size >= max) {
      if (this.waiting.length >= MAX_WAITING) {
        this.log.warn('too many NBD clients waiting for a connection slot; turning one away');
        this.counters.refused++;
        return void socket.destroy();
      }
      socket.on('error', () => undefined);
      socket.once('close', () => {
        const i = this.waiting.indexOf(socket);
        if (i >= 0) this.waiting.splice(i, 1);
      });
      this.waiting.push(socket);
      return;
    }
    this.startConnection(socket);
  }

  private startConnection(accepted: Socket): void {
    const id = this.nextId++;
    this.counters.accepted++;
    const transport = new PlainSocketTransport(accepted);
    const log = this.log.child({ conn: id, peer: transport.peer });
    const conn = new NbdConnection(transport, {
      env: this.env,
      log,
      ...(this.opts.tls ? this.tlsUpgrade(log) : {}),
      handshakeMaxSeconds: this.opts.handshakeMaxSeconds ?? DEFAULT_HANDSHAKE_MAX_SECONDS,
      maxInflightRequests: this.opts.maxInflightRequests,
      maxInflightBytes: this.opts.maxInflightBytes,
      specErrnos: this.opts.specErrnos,
      pool: this.pool,
    });
    this.active.add(conn);
    void conn.finished.then(() => {
      this.active.delete(conn);
      this.admitWaiting();
    });
    conn.start();
  }

  /** STARTTLS for one connection: the FORCEDTLS option table and the upgrade to a checked TLS session. */
  private tlsUpgrade(log: Logger): { optionHandlers: ReturnType<typeof tlsOptionHandlers>; upgrade: (t: Transport) => Promise<Transport> } {
    const tls = this.opts.tls!;
    let active = false;
    const upgrade = async (current: Transport): Promise<Transport> => {
      if (!(current instanceof PlainSocketTransport)) throw new Error('STARTTLS on a transport that is not a plain socket');
      const context = this.tlsContext;
      try {
        if (context instanceof TlsSessionError) throw context;
        const session = await startServerSession(tls.creds, current.socket, { authz: tls.authz, objects: tls.objects, context });
        active = true;
        log.info({ identity: session.identity, protocol: session.socket.getProtocol() }, 'NBD client upgraded to TLS');
        return new TlsTransport(session.socket, current.peer, session.identity);
      } catch (e) {
        current.socket.destroy();
        this.counters.refused++;
        // One line a user can act on: which credentials, which client, why.
        throw new Error(`${tls.creds.type} '${tls.creds.id}': TLS session with ${current.peer} refused: ${(e as Error).message}`);
      }
    };
    return { optionHandlers: tlsOptionHandlers(() => active), upgrade };
  }

  private admitWaiting(): void {
    const max = this.maxConnections;
    while (!this.closing && this.waiting.length > 0 && (max === 0 || this.active.size < max)) {
      const s = this.waiting.shift()!;
      if (s.destroyed) continue;
      s.removeAllListeners('error');
      s.removeAllListeners('close');
      this.startConnection(s);
    }
  }

  /** Stops accepting; connections finish their in-flight requests, then close. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.shutdown((c) => c.close());
    return this.closing;
  }

  /** Stops accepting and drops every connection now. Idempotent; also finishes a close() in progress. */
  async destroy(): Promise<void> {
    const pending = this.closing;
    this.closing ??= this.shutdown((c) => c.destroy());
    if (pending) await Promise.all([...this.active].map((c) => c.destroy()));
    return this.closing;
  }

  private async shutdown(end: (c: NbdConnection) => Promise<void>): Promise<void> {
    const closed = this.listeners.map((l) => new Promise<void>((r) => l.server.close(() => r())));
    for (const s of this.waiting.splice(0)) s.destroy();
    await Promise.all([...this.active].map(end));
    await Promise.all(closed);
    for (const l of this.listeners) {
      if (!l.unixPath) continue;
      try { unlinkSync(l.unixPath); } catch { /* already gone */ }
    }
    this.log.debug('NBD server stopped');
  }
}

/** Binds a server to a path, an abstract name or an inherited descriptor. */
function bindWith(server: Server, where: string | { fd: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const ready = () => { server.off('error', reject); resolve(); };
    if (typeof where === 'string') server.listen(where, ready);
    else server.listen(where, ready);
  });
}
