/**
 * The incremental parser of what a server sends in the transmission phase
 * (a client's side): bytes in, simple replies and structured chunks out.
 *
 * A simple reply does not say whether data follows it: only the client knows
 * that the cookie was a READ of so many bytes (doc/proto.md: simple replies
 * are not context-free). `readLength(cookie)` answers it: the bytes of data
 * that follow a successful (error 0) simple reply to that request, 0 for
 * anything but a READ. A chunk's payload is bounded by `maxPayload`; longer
 * is a protocol error thrown as soon as the header is seen.
 *
 * With `extended` (NBD_OPT_EXTENDED_HEADERS was acknowledged) every reply
 * is a 32-byte extended chunk header and its payload: nothing else is
 * valid, and a chunk carries the offset of the request it answers.
 *
 * Payloads are views of the pushed chunks when they arrived in one, else
 * copies: the caller must not reuse pushed memory while it uses them.
 */
import {
  CHUNK_HEADER_SIZE, EXTENDED_CHUNK_HEADER_SIZE, EXTENDED_REPLY_MAGIC, MAX_PAYLOAD, ReplyFlag, SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants.ts';
import { ByteQueue } from './byte-queue.ts';
import { NbdProtocolError } from './errors.ts';
import { parseChunkPayload, readChunkHeader, readExtendedChunkHeader, readSimpleReply, type ChunkPayload } from './replies.ts';
import type { Cookie } from './requests.ts';

export type DecodedReply =
  | { kind: 'simple'; cookieHi: number; cookieLo: number; error: number; /** READ data (error 0 only). */ data?: Buffer }
  | {
    kind: 'chunk'; cookieHi: number; cookieLo: number; flags: number; done: boolean; chunk: ChunkPayload;
    /** Extended headers: the offset of the request this answers, as the server echoed it. */
    offset?: number;
  };

export interface ReplyDecoderOptions {
  /** Unused with `extended` (every reply says its length). */
  readLength(c: Cookie): number;
  /** Largest chunk payload accepted (default: 32 MiB of data plus its offset field). */
  maxPayload?: number;
  /** Extended headers were negotiated. */
  extended?: boolean;
}

export class ReplyDecoder {
  private readonly q = new ByteQueue(EXTENDED_CHUNK_HEADER_SIZE);
  private readonly maxPayload: number;
  private readonly extended: boolean;

  constructor(private readonly opts: ReplyDecoderOptions) {
    this.maxPayload = opts.maxPayload ?? MAX_PAYLOAD + 8;
    this.extended = opts.extended ?? false;
  }

  get buffered(): number { return this.q.length; }

  push(chunk: Buffer): void { this.q.push(chunk); }

  /** The next complete reply or chunk; undefined until more bytes arrive. Throws NbdProtocolError on bad input. */
  next(): DecodedReply | undefined {
    const q = this.q;
    if (q.length < 4) return undefined;
    let h = q.peek(4);
    const magic = h.readUInt32BE(q.at);
    if (this.extended) {
      if (magic !== EXTENDED_REPLY_MAGIC) throw new NbdProtocolError(`invalid reply magic 0x${(magic >>> 0).toString(16)} under extended headers`);
      if (q.length < EXTENDED_CHUNK_HEADER_SIZE) return undefined;
      h = q.peek(EXTENDED_CHUNK_HEADER_SIZE);
      const c = readExtendedChunkHeader(h, q.at);
      if (c.length > this.maxPayload) {
        throw new NbdProtocolError(`extended reply chunk length ${c.length} over the limit of ${this.maxPayload}`);
      }
      if (q.length < EXTENDED_CHUNK_HEADER_SIZE + c.length) return undefined;
      q.discard(EXTENDED_CHUNK_HEADER_SIZE);
      const chunk = parseChunkPayload(c.type, q.take(c.length), true);
      return {
        kind: 'chunk', cookieHi: c.cookieHi, cookieLo: c.cookieLo, flags: c.flags, done: (c.flags & ReplyFlag.DONE) !== 0, chunk, offset: c.offset,
      };
    }
    if (magic === SIMPLE_REPLY_MAGIC) {
      if (q.length < SIMPLE_REPLY_SIZE) return undefined;
      h = q.peek(SIMPLE_REPLY_SIZE);
      const r = readSimpleReply(h, q.at);
      const n = r.error === 0 ? this.opts.readLength(r) : 0;
      if (q.length < SIMPLE_REPLY_SIZE + n) return undefined;
      q.discard(SIMPLE_REPLY_SIZE);
      return { kind: 'simple', cookieHi: r.cookieHi, cookieLo: r.cookieLo, error: r.error, data: n > 0 ? q.take(n) : undefined };
    }
    if (magic === STRUCTURED_REPLY_MAGIC) {
      if (q.length < CHUNK_HEADER_SIZE) return undefined;
      h = q.peek(CHUNK_HEADER_SIZE);
      const c = readChunkHeader(h, q.at);
      if (c.length > this.maxPayload) {
        throw new NbdProtocolError(`structured reply chunk length ${c.length} over the limit of ${this.maxPayload}`);
      }
      if (q.length < CHUNK_HEADER_SIZE + c.length) return undefined;
      q.discard(CHUNK_HEADER_SIZE);
      const chunk = parseChunkPayload(c.type, q.take(c.length));
      return { kind: 'chunk', cookieHi: c.cookieHi, cookieLo: c.cookieLo, flags: c.flags, done: (c.flags & ReplyFlag.DONE) !== 0, chunk };
    }
    throw new NbdProtocolError(`invalid reply magic 0x${(magic >>> 0).toString(16)}`);
  }
}
