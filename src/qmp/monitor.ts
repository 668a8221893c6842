/**
 * A QMP monitor: one listening chardev (Unix socket, TCP, an inherited fd, or
 * stdio) and every client connected to it. Unlike qsd, which serves one
 * client per monitor at a time, each connection gets its own session, so
 * many clients can talk to one monitor at once. Events go to every
 * negotiated client of every monitor.
 */
import { Socket, connect, createServer, type Server } from 'node:net';
import { lstatSync, unlinkSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Dispatcher } from './dispatcher.ts';
import { QmpSession, type SessionLimits } from './session.ts';
import type { QmpEvent, QmpEventBus } from './events.ts';
import type { TlsCreds } from '../objects/tls/creds.ts';
import type { ObjectLookup } from '../objects/lookup.ts';
import { startClientSession, startServerSession } from '../objects/tls/session.ts';

export type ListenAddress =
  | { type: 'unix'; path: string }
  | { type: 'inet'; host: string; port: number }
  | { type: 'fd'; fd: number }
  | { type: 'stdio' };

export interface MonitorOptions {
  pretty: boolean;
  greeting: Record<string, unknown>;
  log: Logger;
  limits?: SessionLimits;
  /** Most clients at once; more are refused (closed). Default 128. */
  maxClients?: number;
  /** TLS on every connection (chardev tls-creds/tls-authz), as qsd: a server session when listening, a client's when connecting out. */
  tls?: { creds: TlsCreds; authz?: string; objects: ObjectLookup };
}

export class QmpMonitor {
  private server?: Server;
  private unixPath?: string;
  private readonly sessions = new Set<QmpSession>();
  /** The connected sockets, oldest first (query-chardev names the chardev after the first). */
  private readonly sockets = new Set<Socket>();
  /** Clients still in their TLS handshake (no session yet): close() drops them. */
  private readonly handshakes = new Set<Socket>();
  private readonly unsubscribe: () => void;
  private closing?: Promise<void>;
  private firstClient?: () => void;
  /** Client mode: the next connection attempt (reconnect), and the attempt under way. */
  private retryTimer?: NodeJS.Timeout;
  private connecting?: Socket;

  constructor(readonly id: string, private readonly dispatcher: Dispatcher, events: QmpEventBus, private readonly opts: MonitorOptions) {
    this.unsubscribe = events.subscribe((e) => this.broadcast(e));
  }

  get clients(): number { return this.sessions.size; }

  /** Each client's buffered bytes (see QmpSession.buffers). */
  buffers(): { pendingOutput: number; bufferedInput: number }[] {
    return [...this.sessions].map((s) => s.buffers);
  }

  /** The longest-connected client's socket, if one is connected over a socket. */
  firstSocket(): Socket | undefined {
    for (const s of this.sockets) return s;
    return undefined;
  }

  /** Where it listens (for port 0). */
  address(): ReturnType<Server['address']> | undefined { return this.server?.address(); }

  async listen(addr: ListenAddress): Promise<void> {
    if (addr.type === 'stdio') {
      this.addSession({
        input: process.stdin, output: process.stdout, endIsClose: true,
        end: () => process.stdin.pause(), destroy: () => process.stdin.destroy(),
      });
      return;
    }
    const server = createServer({ allowHalfOpen: true }, (s) => this.accept(s));
    if (addr.type === 'unix') {
      // As QEMU does, replace a stale socket file.
      try { if (lstatSync(addr.path).isSocket()) unlinkSync(addr.path); } catch { /* absent */ }
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const ready = () => {
        server.off('error', reject);
        server.on('error', (err) => this.opts.log.error({ err, monitor: this.id }, 'QMP listener error'));
        resolve();
      };
      if (addr.type === 'unix') server.listen(addr.path, ready);
      else if (addr.type === 'inet') server.listen({ host: addr.host || undefined, port: addr.port }, ready);
      else server.listen({ fd: addr.fd }, ready);
    });
    this.server = server;
    if (addr.type === 'unix') this.unixPath = addr.path;
  }

  /**
   * Client mode (a chardev without server=on): connects out to a peer
   * listening at `addr` and serves QMP on that connection, as qsd. Without
   * reconnect a failure is thrown (start-up fails: "Failed to connect to
   * 'PATH': No such file or directory") and a hang-up ends the monitor. With
   * reconnect > 0 it connects in the background, and tries again that many
   * seconds after a failure or a hang-up; the first failure in a row is
   * reported through `report` ("Unable to connect character device ID: ...").
   */
  async connectOut(addr: Extract<ListenAddress, { type: 'unix' | 'inet' }>, reconnectSeconds: number, report: (line: string) => void): Promise<void> {
    if (reconnectSeconds <= 0) {
      this.adopt(await this.attempt(addr));
      return;
    }
    let reported = false;
    const retry = () => {
      if (this.closing) return;
      this.retryTimer = setTimeout(tryOnce, reconnectSeconds * 1000);
    };
    const tryOnce = () => {
      this.retryTimer = undefined;
      this.attempt(addr).then((socket) => {
        if (this.closing) return void socket.destroy();
        reported = false;
        void this.adopt(socket).finished.then(retry);
      }, (e: Error) => {
        if (!reported) report(`Unable to connect character device ${this.id}: ${e.message}`);
        reported = true;
        retry();
      });
    };
    tryOnce();
  }

  /**
   * Client mode over an inherited, already connected socket (a chardev with
   * fd=N and no server=on, as qsd takes it): QMP is served on it at once.
   */
  async serveConnected(fd: number): Promise<void> {
    let socket: Socket;
    try {
      socket = new Socket({ fd, allowHalfOpen: true, readable: true, writable: true });
    } catch (e) {
      throw new Error(`Failed to connect to fd ${fd}: ${(e as Error).message}`);
    }
    const tls = this.opts.tls;
    if (tls) socket = await startClientSession(tls.creds, socket, undefined);
    this.adopt(socket);
  }

  /** One connection attempt; rejects with qsd's text. */
  private attempt(addr: Extract<ListenAddress, { type: 'unix' | 'inet' }>): Promise<Socket> {
    const where = addr.type === 'unix' ? addr.path : `${addr.host}:${addr.port}`;
    return new Promise((resolve, reject) => {
      const socket = addr.type === 'unix'
        ? connect({ path: addr.path, allowHalfOpen: true })
        : connect({ host: addr.host || 'localhost', port: addr.port, allowHalfOpen: true });
      this.connecting = socket;
      socket.once('connect', () => {
        socket.off('error', onError);
        this.connecting = undefined;
        const tls = this.opts.tls;
        if (!tls) return resolve(socket);
        // As QEMU's chardev: the server's certificate must name the host connected to.
        startClientSession(tls.creds, socket, addr.type === 'inet' ? addr.host || 'localhost' : undefined).then(resolve, reject);
      });
      const onError = (err: NodeJS.ErrnoException) => {
        this.connecting = undefined;
        reject(new Error(`Failed to connect to '${where}': ${strerror(err)}`));
      };
      socket.once('error', onError);
    });
  }

  /** Resolves when the first client connects (chardev wait=on). */
  waitForClient(): Promise<void> {
    if (this.sessions.size > 0) return Promise.resolve();
    return new Promise((r) => (this.firstClient = r));
  }

  private accept(socket: Socket): void {
    if (this.closing) return void socket.destroy();
    if (this.sessions.size >= (this.opts.maxClients ?? 128)) {
      this.opts.log.warn({ monitor: this.id }, 'too many QMP clients; refusing one');
      return void socket.destroy();
    }
    const tls = this.opts.tls;
    if (!tls) return void this.adopt(socket);
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    this.handshakes.add(socket);
    const settled = () => this.handshakes.delete(socket);
    startServerSession(tls.creds, socket, { authz: tls.authz, objects: tls.objects }).finally(settled).then((s) => {
      if (this.closing) return void s.socket.destroy();
      this.opts.log.info({ monitor: this.id, identity: s.identity }, 'QMP client connected over TLS');
      this.adopt(s.socket);
    }, (e: Error) => {
      // One line a user can act on: which credentials, which client, why.
      this.opts.log.warn(`${tls.creds.type} '${tls.creds.id}': TLS session with ${peer} on monitor ${this.id} refused: ${e.message}`);
    });
  }

  /** Serves QMP on a connected socket (accepted, or connected out in client mode). */
  private adopt(socket: Socket): QmpSession {
    socket.setNoDelay?.(true);
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    // Once our last bytes are out the socket is closed, as qsd closes its chardev: a client that
    // keeps its end open (most do, until they read EOF) does not hold the daemon's shutdown.
    return this.addSession({ input: socket, output: socket, end: () => socket.end(() => socket.destroy()), destroy: () => socket.destroy() });
  }

  private addSession(io: ConstructorParameters<typeof QmpSession>[0]): QmpSession {
    const session = new QmpSession(io, this.dispatcher, {
      pretty: this.opts.pretty, greeting: this.opts.greeting, log: this.opts.log, limits: this.opts.limits,
    });
    this.sessions.add(session);
    void session.finished.then(() => this.sessions.delete(session));
    session.start();
    this.firstClient?.();
    this.firstClient = undefined;
    return session;
  }

  private broadcast(e: QmpEvent): void {
    for (const s of this.sessions) s.event(e);
  }

  /** Stops listening and ends every session after its pending output. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.unsubscribe();
      clearTimeout(this.retryTimer);
      this.connecting?.destroy();
      const server = this.server;
      const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
      const sessions = [...this.sessions];
      for (const s of sessions) s.close();
      // A client that never finishes its handshake would hold the listener's close forever.
      for (const s of this.handshakes) s.destroy();
      // A client that does not hang up after our FIN is dropped after a grace period.
      const timer = setTimeout(() => { for (const s of sessions) s.destroy(); }, 1000);
      await Promise.all(sessions.map((s) => s.finished));
      clearTimeout(timer);
      this.sessions.clear();
      await closed;
      if (this.unixPath) {
        try { unlinkSync(this.unixPath); } catch { /* already gone */ }
      }
    })();
    return this.closing;
  }
}

/** The C library's text for the errors a connect() gives (what qsd prints). */
function strerror(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ENOENT': return 'No such file or directory';
    case 'ECONNREFUSED': return 'Connection refused';
    case 'EACCES': return 'Permission denied';
    case 'ENOTSOCK': return 'Socket operation on non-socket';
    case 'ETIMEDOUT': return 'Connection timed out';
    case 'EHOSTUNREACH': return 'No route to host';
    case 'ENETUNREACH': return 'Network is unreachable';
    default: return err.message;
  }
}
