/**
 * The plain socket transport: a node:net socket, with the two fast paths
 * the data path depends on.
 *
 * Reads: an accepted socket's handle is moved into a new net.Socket that
 * reads into one reused buffer (`onread`) instead of allocating a 64 KiB
 * buffer per read, which at 1 MiB writes was mostly garbage-collector time.
 * Node offers `onread` only when a socket is created, so the handle is taken
 * over; the accepted socket is then destroyed without closing it (it no
 * longer owns the handle), which also keeps the server's connection count
 * right. If the handle cannot be taken over, the accepted socket's 'data'
 * events are used.
 *
 * Writes: trySend() is one non-blocking send(2) on the socket's descriptor
 * (the native addon's sendNowait): node:net's write path (stream state,
 * write request, after-write callbacks) costs several times the syscall
 * itself, which at queue depth 1 is the whole latency.
 *
 * Moves: a connection served in another event loop (an iothread) goes there
 * as a duplicate of its descriptor (moveOut), and is taken up there with
 * fromDescriptor.
 */
import { Socket as NetSocket, type Socket } from 'node:net';
import { native } from '../../platform/native.ts';
import { SocketTransport } from './socket-transport.ts';

/** Size of the one buffer each connection's socket reads into. */
const READ_BUFFER_SIZE = 256 * 1024;

export class PlainSocketTransport extends SocketTransport {
  readonly transientReads: boolean;
  readonly fastPath: boolean;
  readonly peer: string;
  private readonly fd: number;

  /** Takes over an accepted socket, still paused (the server listens with pauseOnConnect). */
  constructor(accepted: Socket) {
    const fd = (accepted as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    let self: PlainSocketTransport | undefined;
    const adopted = adoptWithReadBuffer(accepted, (n, buf) => self?.events?.data(buf.subarray(0, n)) ?? false);
    super(adopted ?? accepted);
    self = this;
    this.fd = typeof fd === 'number' && fd >= 0 ? fd : -1;
    this.transientReads = adopted !== undefined;
    this.fastPath = this.fd >= 0;
    this.peer = this.socket.remoteAddress ? `${this.socket.remoteAddress}:${this.socket.remotePort}` : 'unix';
    this.socket.setNoDelay?.(true);
  }

  /** A connection handed over from another event loop (moveOut there), not reading until resumed. */
  static fromDescriptor(fd: number): PlainSocketTransport {
    const socket = new NetSocket({ fd, readable: true, writable: true, allowHalfOpen: true, pauseOnCreate: true } as ConstructorParameters<typeof NetSocket>[0]);
    return new PlainSocketTransport(socket);
  }

  moveOut(): number {
    if (this.fd < 0) throw new Error('assertion failed: moving a socket without a descriptor');
    if (this.writableLength > 0) throw new Error('assertion failed: moving a socket with writes queued');
    const copy = native().dupFd(this.fd);
    this.detach();
    this.destroy();
    return copy;
  }

  protected onData(chunk: Buffer): void { void this.events?.data(chunk); }

  trySend(buf: Buffer): number {
    if (this.fd < 0) return 0;
    const sent = native().sendNowait(this.fd, buf);
    return sent > 0 ? sent : 0;
  }
}

/** Moves an accepted socket's handle into a socket reading into one reused buffer; undefined if it cannot. */
function adoptWithReadBuffer(accepted: Socket, onRead: (nread: number, buf: Buffer) => boolean): Socket | undefined {
  const holder = accepted as unknown as { _handle: unknown };
  const handle = holder._handle;
  if (!handle) return undefined;
  holder._handle = null;
  accepted.destroy();
  const buffer = Buffer.allocUnsafe(READ_BUFFER_SIZE);
  return new NetSocket({ handle, allowHalfOpen: true, readable: true, writable: true, onread: { buffer, callback: onRead } } as unknown as ConstructorParameters<typeof NetSocket>[0]);
}
