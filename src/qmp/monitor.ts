/**
 * A QMP monitor: one listening chardev (Unix socket, TCP, an inherited fd, or
 * stdio) and every client connected to it. Unlike qsd, which serves one
 * client per monitor at a time, each connection gets its own session, so
 * many clients can talk to one monitor at once. Events go to every
 * negotiated client of every monitor.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { lstatSync, unlinkSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Dispatcher } from './dispatcher.ts';
import { QmpSession, type SessionLimits } from './session.ts';
import type { QmpEvent, QmpEventBus } from './events.ts';

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
}

export class QmpMonitor {
  private server?: Server;
  private unixPath?: string;
  private readonly sessions = new Set<QmpSession>();
  private readonly unsubscribe: () => void;
  private closing?: Promise<void>;
  private firstClient?: () => void;

  constructor(readonly id: string, private readonly dispatcher: Dispatcher, events: QmpEventBus, private readonly opts: MonitorOptions) {
    this.unsubscribe = events.subscribe((e) => this.broadcast(e));
  }

  get clients(): number { return this.sessions.size; }

  /** Each client's buffered bytes (see QmpSession.buffers). */
  buffers(): { pendingOutput: number; bufferedInput: number }[] {
    return [...this.sessions].map((s) => s.buffers);
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
    socket.setNoDelay?.(true);
    // Once our last bytes are out the socket is closed, as qsd closes its chardev: a client that
    // keeps its end open (most do, until they read EOF) does not hold the daemon's shutdown.
    this.addSession({ input: socket, output: socket, end: () => socket.end(() => socket.destroy()), destroy: () => socket.destroy() });
  }

  private addSession(io: ConstructorParameters<typeof QmpSession>[0]): void {
    const session = new QmpSession(io, this.dispatcher, {
      pretty: this.opts.pretty, greeting: this.opts.greeting, log: this.opts.log, limits: this.opts.limits,
    });
    this.sessions.add(session);
    void session.finished.then(() => this.sessions.delete(session));
    session.start();
    this.firstClient?.();
    this.firstClient = undefined;
  }

  private broadcast(e: QmpEvent): void {
    for (const s of this.sessions) s.event(e);
  }

  /** Stops listening and ends every session after its pending output. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.unsubscribe();
      const server = this.server;
      const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
      const sessions = [...this.sessions];
      for (const s of sessions) s.close();
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
