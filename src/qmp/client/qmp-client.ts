/**
 * A small QMP client: connects to a Unix or TCP monitor, negotiates
 * capabilities, runs commands and delivers events. Used by blockctl and tests.
 */
import { connect, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';

export interface QmpEvent { event: string; data?: Record<string, unknown>; timestamp: { seconds: number; microseconds: number } }

export class QmpCommandError extends Error {
  constructor(readonly errorClass: string, readonly desc: string) {
    super(`${errorClass}: ${desc}`);
  }
}

export class QmpClient extends EventEmitter {
  greeting?: Record<string, unknown>;
  private buf = '';
  private nextId = 1;
  private pending = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private greeted?: (g: Record<string, unknown>) => void;
  private closedError?: Error;

  private constructor(private readonly sock: Socket) {
    super();
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose(new Error('QMP connection closed')));
    sock.on('error', (e) => this.onClose(e));
  }

  /** `target` is a Unix socket path, or host:port for TCP. */
  static async connect(target: string, opts: { negotiate?: boolean } = {}): Promise<QmpClient> {
    const tcp = /^(.*):(\d+)$/.exec(target);
    const sock = tcp && !target.includes('/') ? connect(Number(tcp[2]), tcp[1] || '127.0.0.1') : connect(target);
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    const c = new QmpClient(sock);
    c.greeting = await new Promise((resolve) => (c.greeted = resolve));
    if (opts.negotiate !== false) await c.execute('qmp_capabilities');
    return c;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `blockctl-${this.nextId++}`;
    const msg: Record<string, unknown> = { execute: command, id };
    if (args && Object.keys(args).length > 0) msg.arguments = args;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(`${JSON.stringify(msg)}\n`);
    });
  }

  close(): void { this.sock.end(); }

  /** Splits the stream into JSON objects by brace depth, so pretty-printed (multi-line) monitors work too. */
  private onData(d: string): void {
    this.buf += d;
    let depth = 0, inStr = false, esc = false, start = -1;
    let consumed = 0;
    for (let i = 0; i < this.buf.length; i++) {
      const ch = this.buf[i];
      if (inStr) {
        if (esc) esc = false;
        else if (ch === '\\') esc = true;
        else if (ch === '"') inStr = false;
        continue;
      }
      if (ch === '"') inStr = true;
      else if (ch === '{') { if (depth++ === 0) start = i; }
      else if (ch === '}' && --depth === 0) {
        this.onMessage(JSON.parse(this.buf.slice(start, i + 1)) as Record<string, unknown>);
        consumed = i + 1;
      }
    }
    this.buf = this.buf.slice(consumed);
  }

  private onMessage(msg: Record<string, unknown>): void {
    if (msg.QMP) { this.greeted?.(msg.QMP as Record<string, unknown>); return; }
    if (msg.event) { this.emit('event', msg as unknown as QmpEvent); return; }
    const p = this.pending.get(String(msg.id));
    if (!p) return;
    this.pending.delete(String(msg.id));
    if (msg.error) {
      const e = msg.error as { class: string; desc: string };
      p.reject(new QmpCommandError(e.class, e.desc));
    } else {
      p.resolve(msg.return);
    }
  }

  private onClose(e: Error): void {
    if (this.closedError) return;
    this.closedError = e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    this.emit('close');
  }
}
