/**
 * The TLS transport: an NBD connection after NBD_OPT_STARTTLS, over a
 * node:tls socket wrapping the same TCP socket. No fast path (every write
 * must go through the TLS layer), so the connection corks each reply's
 * header with its payload and node:tls encrypts a corked batch as one
 * write (full-size records instead of a record per small write, what made
 * QEMU's TLS 10x slower until it corked).
 */
import type { TLSSocket } from 'node:tls';
import { SocketTransport } from './socket-transport.ts';

export class TlsTransport extends SocketTransport {
  readonly transientReads = false;
  readonly fastPath = false;

  /** `identity`: who the TLS session authorized (for logs). */
  constructor(socket: TLSSocket, readonly peer: string, readonly identity?: string) {
    super(socket);
    this.socket.pause();
  }

  protected onData(chunk: Buffer): void {
    if (this.events && !this.events.data(chunk)) this.socket.pause();
  }

  trySend(): number { return 0; }
}
