/**
 * The TLS transport: an NBD connection after NBD_OPT_STARTTLS, over a
 * node:tls socket wrapping the same TCP socket. No fast path (every write
 * must go through the TLS layer), so the connection corks each reply's
 * header with its payload and node:tls encrypts a corked batch as one
 * write (full-size records instead of a record per small write, what made
 * QEMU's TLS 10x slower until it corked).
 */
import type { TLSSocket } from 'node:tls';
import type { Transport, TransportEvents } from './transport.ts';

export class TlsTransport implements Transport {
  readonly transientReads = false;
  readonly fastPath = false;
  private events?: TransportEvents;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- node:events listener type
  private readonly listeners: [string, (...args: any[]) => void][];

  /** `identity`: who the TLS session authorized (for logs). */
  constructor(readonly socket: TLSSocket, readonly peer: string, readonly identity?: string) {
    this.socket.pause();
    this.listeners = [
      ['data', (chunk: Buffer) => { if (this.events && !this.events.data(chunk)) this.socket.pause(); }],
      ['end', () => this.events?.end()],
      ['error', (err: Error) => this.events?.error(err)],
      ['close', () => this.events?.close()],
      ['drain', () => this.events?.drain()],
    ];
  }

  get writableLength(): number { return this.socket.writableLength; }
  get writable(): boolean { return !this.socket.destroyed && !this.socket.writableEnded; }
  get destroyed(): boolean { return this.socket.destroyed; }

  attach(events: TransportEvents): void {
    this.events = events;
    for (const [name, fn] of this.listeners) this.socket.on(name, fn);
  }

  detach(): void {
    this.socket.pause();
    for (const [name, fn] of this.listeners) this.socket.off(name, fn);
    if (this.socket.listenerCount('error') === 0) this.socket.on('error', () => undefined);
    this.events = undefined;
  }

  pause(): void { this.socket.pause(); }
  resume(): void { this.socket.resume(); }

  write(buf: Buffer, done?: () => void): void {
    if (done) this.socket.write(buf, done);
    else this.socket.write(buf);
  }

  cork(): void { this.socket.cork(); }
  uncork(): void { if (!this.socket.destroyed) this.socket.uncork(); }
  trySend(): number { return 0; }

  end(): void { if (!this.socket.writableEnded) this.socket.end(); }
  destroy(): void { this.socket.destroy(); }
}
