/**
 * What the plain and the TLS transport share: a node stream socket whose
 * events are wired to the connection on attach() and unwired on detach()
 * (an upgrade hands the socket on), and the write, cork and close calls
 * that pass straight to it. A subclass says how data arrives (onData) and
 * whether it has a fast path (trySend).
 */
import type { Socket } from 'node:net';
import type { Transport, TransportEvents } from './transport.ts';

export abstract class SocketTransport implements Transport {
  abstract readonly transientReads: boolean;
  abstract readonly fastPath: boolean;
  abstract readonly peer: string;
  protected events?: TransportEvents;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- node:events listener type
  private readonly listeners: [string, (...args: any[]) => void][] = [
    ['data', (chunk: Buffer) => this.onData(chunk)],
    ['end', () => this.events?.end()],
    ['error', (err: Error) => this.events?.error(err)],
    ['close', () => this.events?.close()],
    ['drain', () => this.events?.drain()],
  ];

  protected constructor(readonly socket: Socket) {}

  /** A chunk from the socket's 'data' event. */
  protected abstract onData(chunk: Buffer): void;

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
    // An 'error' with no listener would throw; whoever takes the socket over listens for its own.
    if (this.socket.listenerCount('error') === 0) this.socket.on('error', ignore);
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
  abstract trySend(buf: Buffer): number;

  end(): void { if (!this.socket.writableEnded) this.socket.end(); }
  destroy(): void { this.socket.destroy(); }
}

function ignore(): void {}
