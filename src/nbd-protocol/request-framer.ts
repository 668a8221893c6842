/**
 * The incremental parser of what a client sends in the transmission phase:
 * bytes in, (header, payload) frames out. The server's framer; a client
 * builds requests with requests.ts.
 *
 * Only NBD_CMD_WRITE carries a payload. A payload that arrived inside one
 * chunk is handed out as a view of that chunk (no copy); one split over
 * several chunks is assembled into a single buffer as it arrives (one
 * copy). The payload of a WRITE longer than `maxPayload` is skipped as it
 * arrives, without buffering, and the request is then yielded without a
 * payload: the stream stays in sync and the reply (an error) comes after the
 * whole request, as clients expect. A bad magic ends framing: the stream cannot be
 * resynchronised.
 *
 * With `extended` (NBD_OPT_EXTENDED_HEADERS was acknowledged) only 32-byte
 * extended requests are valid; a payload follows exactly when the flags
 * have NBD_CMD_FLAG_PAYLOAD_LEN, whatever the command (a WRITE without the
 * flag carries none and is refused by validation). A payload longer than
 * `maxPayload` there ends framing too ('payload-too-big'): the spec asks a
 * server to disconnect rather than read a 64-bit length's worth of bytes.
 *
 * Pull-based so the connection can stop taking frames (backpressure) and
 * resume later without losing what was already read.
 */
import { Cmd, CmdFlag, EXTENDED_REQUEST_MAGIC, EXTENDED_REQUEST_SIZE, MAX_PAYLOAD, REQUEST_MAGIC, REQUEST_SIZE } from './constants.ts';
import { ByteQueue } from './byte-queue.ts';
import { readExtendedRequestHeader, readRequestHeader, requestMagic, type RequestHeader } from './requests.ts';


export type Frame =
  | { kind: 'request'; req: RequestHeader; payload?: Buffer; discarded?: boolean }
  /** The header's other fields as read (qsd still answers the bad request, with EINVAL, before closing). */
  | { kind: 'bad-magic'; magic: number; req: RequestHeader }
  /** An extended request whose payload length is over the limit (nothing after its header is taken). */
  | { kind: 'payload-too-big'; req: RequestHeader };

type State = 'header' | 'payload' | 'discard' | 'dead';

export class RequestFramer {
  private readonly q: ByteQueue;
  private state: State = 'header';
  private pending?: RequestHeader;
  private assembling?: Buffer;
  private filled = 0;
  private skip = 0;
  private readonly maxPayload: number;
  private readonly alloc: (size: number) => Buffer;
  private readonly transient: boolean;
  private readonly extended: boolean;
  private readonly headerSize: number;

  /**
   * `alloc` provides the buffer a split payload is assembled in (its contents are all overwritten).
   * With `transient`, pushed chunks are only valid until retainUnconsumed() (the socket reads into
   * one reused buffer): payloads are then always assembled, never views of a chunk.
   * With `extended`, requests are extended ones (see above).
   */
  constructor(opts: { maxPayload?: number; alloc?: (size: number) => Buffer; transient?: boolean; extended?: boolean } = {}) {
    this.maxPayload = opts.maxPayload ?? MAX_PAYLOAD;
    this.alloc = opts.alloc ?? ((n) => Buffer.allocUnsafe(n));
    this.transient = opts.transient ?? false;
    this.extended = opts.extended ?? false;
    this.headerSize = this.extended ? EXTENDED_REQUEST_SIZE : REQUEST_SIZE;
    this.q = new ByteQueue(this.headerSize);
  }

  /**
   * Copies the bytes not yet handed out into a buffer of the framer's own, so
   * the chunks pushed so far may be reused by the caller. Takes what a payload
   * being assembled can use first, so a large write costs one copy.
   */
  retainUnconsumed(): void {
    if (this.state === 'payload' && this.assembling) this.filled += this.q.copyTo(this.assembling, this.filled);
    this.q.retain();
  }

  /** Bytes received but not yet handed out in a frame (excluding a payload being assembled). */
  get buffered(): number { return this.q.length; }

  /** True while a frame is partly received (a client that vanishes now did so mid-request). */
  get midFrame(): boolean { return this.state === 'payload' || this.state === 'discard' || this.q.length > 0; }

  /**
   * Between frames: nothing of a request's payload is held, so what is
   * buffered (takeBuffered) is the raw bytes of whole or partial headers
   * and payloads still to come, which another framer can start from.
   */
  get atBoundary(): boolean { return this.state === 'header'; }

  /** The bytes received and not yet handed out, as one buffer of their own; the framer is then empty (see atBoundary). */
  takeBuffered(): Buffer {
    const out = Buffer.allocUnsafe(this.q.length);
    let got = 0;
    while (got < out.length) got += this.q.copyTo(out, got);
    return out;
  }

  push(chunk: Buffer): void {
    if (this.state === 'dead') return;
    this.q.push(chunk);
  }

  /** The next complete frame, or undefined until more bytes arrive. */
  next(): Frame | undefined {
    for (;;) {
      switch (this.state) {
        case 'dead':
          return undefined;
        case 'header': {
          if (this.q.length < this.headerSize) return undefined;
          // Parsed in place when the header lies in one chunk (the usual case), else from a copy.
          const h = this.q.read(this.headerSize);
          const at = this.q.at;
          const magic = requestMagic(h, at);
          const req = this.extended ? readExtendedRequestHeader(h, at) : readRequestHeader(h, at);
          if (magic !== (this.extended ? EXTENDED_REQUEST_MAGIC : REQUEST_MAGIC)) {
            this.state = 'dead';
            this.q.clear();
            return { kind: 'bad-magic', magic, req };
          }
          if (this.extended ? !(req.flags & CmdFlag.PAYLOAD_LEN) : req.type !== Cmd.WRITE) return { kind: 'request', req };
          if (this.extended && req.length > this.maxPayload) {
            this.state = 'dead';
            this.q.clear();
            return { kind: 'payload-too-big', req };
          }
          if (req.length > this.maxPayload) {
            this.state = 'discard';
            this.pending = req;
            this.skip = req.length;
            continue;
          }
          if (req.length === 0) return { kind: 'request', req, payload: Buffer.alloc(0) };
          this.pending = req;
          this.state = 'payload';
          continue;
        }
        case 'payload': {
          const req = this.pending!;
          if (!this.assembling) {
            if (!this.transient) {
              const payload = this.q.view(req.length);
              if (payload) return this.finishPayload(req, payload);
            }
            if (this.q.length === 0) return undefined;
            // Split over chunks: every byte of this buffer is overwritten below before it is used.
            this.assembling = this.alloc(req.length);
            this.filled = 0;
          }
          this.filled += this.q.copyTo(this.assembling, this.filled);
          if (this.filled < req.length) return undefined;
          const payload = this.assembling;
          this.assembling = undefined;
          return this.finishPayload(req, payload);
        }
        case 'discard': {
          this.skip -= this.q.discard(this.skip);
          if (this.skip > 0) return undefined;
          const req = this.pending!;
          this.pending = undefined;
          this.state = 'header';
          return { kind: 'request', req, discarded: true };
        }
      }
    }
  }

  private finishPayload(req: RequestHeader, payload: Buffer): Frame {
    this.pending = undefined;
    this.state = 'header';
    return { kind: 'request', req, payload };
  }
}
