/**
 * Transmission-phase framer: bytes in, (header, payload) frames out.
 *
 * Only NBD_CMD_WRITE carries a payload. A payload that arrived inside one
 * socket chunk is handed out as a view of that chunk (no copy); one split
 * over several chunks is assembled into a single buffer as it arrives (one
 * copy). The payload of a WRITE longer than `maxPayload` is skipped as it
 * arrives, without buffering, and the request is then yielded without a
 * payload: the stream stays in sync and the reply (an error) comes after the
 * whole request, as clients expect. A bad magic ends framing: the stream cannot be
 * resynchronised.
 *
 * Pull-based so the connection can stop taking frames (backpressure) and
 * resume later without losing what was already read.
 */
import { Cmd, MAX_PAYLOAD, REQUEST_MAGIC, REQUEST_SIZE } from '../nbd-protocol/constants.ts';

/**
 * A request's 64-bit cookie as its two big-endian 32-bit halves: it is only
 * ever copied back into replies, and a BigInt per request cost as much as the
 * rest of parsing the header.
 */
export interface Cookie {
  cookieHi: number;
  cookieLo: number;
}

/** The cookie as one number, for logs and tests. */
export function cookieOf(c: Cookie): bigint {
  return (BigInt(c.cookieHi) << 32n) | BigInt(c.cookieLo);
}

export interface RequestHeader extends Cookie {
  flags: number;
  type: number;
  /** May be imprecise above 2^53; such offsets are past the end of any export anyway. */
  offset: number;
  length: number;
}

export type Frame =
  | { kind: 'request'; req: RequestHeader; payload?: Buffer; discarded?: boolean }
  /** The header's other fields as read (qsd still answers the bad request, with EINVAL, before closing). */
  | { kind: 'bad-magic'; magic: number; req: RequestHeader };

type State = 'header' | 'payload' | 'discard' | 'dead';

export class RequestFramer {
  private chunks: Buffer[] = [];
  private first = 0; // index of the first unconsumed chunk
  private pos = 0; // offset into chunks[first]
  private available = 0;
  private state: State = 'header';
  private pending?: RequestHeader;
  private assembling?: Buffer;
  private filled = 0;
  private skip = 0;
  private readonly scratch = Buffer.alloc(REQUEST_SIZE);
  private readonly maxPayload: number;
  private readonly alloc: (size: number) => Buffer;
  private readonly transient: boolean;

  /**
   * `alloc` provides the buffer a split payload is assembled in (its contents are all overwritten).
   * With `transient`, pushed chunks are only valid until retainUnconsumed() (the socket reads into
   * one reused buffer): payloads are then always assembled, never views of a chunk.
   */
  constructor(opts: { maxPayload?: number; alloc?: (size: number) => Buffer; transient?: boolean } = {}) {
    this.maxPayload = opts.maxPayload ?? MAX_PAYLOAD;
    this.alloc = opts.alloc ?? ((n) => Buffer.allocUnsafe(n));
    this.transient = opts.transient ?? false;
  }

  /**
   * Copies the bytes not yet handed out into a buffer of the framer's own, so
   * the chunks pushed so far may be reused by the caller. Takes what a payload
   * being assembled can use first, so a large write costs one copy.
   */
  retainUnconsumed(): void {
    if (this.state === 'payload' && this.assembling) this.filled += this.copyOut(this.assembling, this.filled);
    if (this.available === 0) return;
    const rest = Buffer.allocUnsafe(this.available);
    let got = 0;
    while (this.available > 0) got += this.copyOut(rest, got, rest.length - got);
    this.chunks = [rest];
    this.first = 0;
    this.pos = 0;
    this.available = rest.length;
  }

  /** Bytes received but not yet handed out in a frame (excluding a payload being assembled). */
  get buffered(): number { return this.available; }

  /** True while a frame is partly received (a client that vanishes now did so mid-request). */
  get midFrame(): boolean { return this.state === 'payload' || this.state === 'discard' || this.available > 0; }

  push(chunk: Buffer): void {
    if (this.state === 'dead' || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.available += chunk.length;
  }

  /** The next complete frame, or undefined until more bytes arrive. */
  next(): Frame | undefined {
    for (;;) {
      switch (this.state) {
        case 'dead':
          return undefined;
        case 'header': {
          if (this.available < REQUEST_SIZE) return undefined;
          // Parsed in place when the header lies in one chunk (the usual case), else from a copy.
          let h = this.chunks[this.first];
          let at = this.pos;
          if (h.length - at >= REQUEST_SIZE) {
            this.advance(REQUEST_SIZE);
          } else {
            h = this.take(REQUEST_SIZE);
            at = 0;
          }
          const magic = h.readUInt32BE(at);
          const req: RequestHeader = {
            flags: h.readUInt16BE(at + 4),
            type: h.readUInt16BE(at + 6),
            cookieHi: h.readUInt32BE(at + 8),
            cookieLo: h.readUInt32BE(at + 12),
            offset: h.readUInt32BE(at + 16) * 2 ** 32 + h.readUInt32BE(at + 20),
            length: h.readUInt32BE(at + 24),
          };
          if (magic !== REQUEST_MAGIC) {
            this.state = 'dead';
            this.chunks = [];
            this.available = 0;
            return { kind: 'bad-magic', magic, req };
          }
          if (req.type !== Cmd.WRITE) return { kind: 'request', req };
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
            const head = this.chunks[this.first];
            if (!this.transient && head && head.length - this.pos >= req.length) {
              const payload = head.subarray(this.pos, this.pos + req.length);
              this.advance(req.length);
              return this.finishPayload(req, payload);
            }
            if (this.available === 0) return undefined;
            // Split over chunks: every byte of this buffer is overwritten below before it is used.
            this.assembling = this.alloc(req.length);
            this.filled = 0;
          }
          this.filled += this.copyOut(this.assembling, this.filled);
          if (this.filled < req.length) return undefined;
          const payload = this.assembling;
          this.assembling = undefined;
          return this.finishPayload(req, payload);
        }
        case 'discard': {
          while (this.skip > 0 && this.available > 0) {
            const head = this.chunks[this.first];
            const n = Math.min(this.skip, head.length - this.pos);
            this.advance(n);
            this.skip -= n;
          }
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

  /** `n` bytes split over chunks, copied into the scratch header. */
  private take(n: number): Buffer {
    const out = this.scratch.subarray(0, n);
    let got = 0;
    while (got < n) got += this.copyOut(out, got, n - got);
    return out;
  }

  /** Copies up to `max` available bytes into dst at `at`; returns how many. */
  private copyOut(dst: Buffer, at: number, max = dst.length - at): number {
    let copied = 0;
    while (copied < max && this.available > 0) {
      const head = this.chunks[this.first];
      const n = Math.min(max - copied, head.length - this.pos);
      head.copy(dst, at + copied, this.pos, this.pos + n);
      this.advance(n);
      copied += n;
    }
    return copied;
  }

  private advance(n: number): void {
    this.pos += n;
    this.available -= n;
    const head = this.chunks[this.first];
    if (this.pos === head.length) {
      this.chunks[this.first] = undefined as unknown as Buffer; // drop the reference
      this.first++;
      this.pos = 0;
      if (this.first === this.chunks.length) {
        this.chunks = [];
        this.first = 0;
      } else if (this.first > 64) {
        this.chunks = this.chunks.slice(this.first);
        this.first = 0;
      }
    }
  }
}
