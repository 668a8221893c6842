/**
 * Transmission replies, both directions (doc/proto.md "Simple reply message",
 * "Structured reply chunk message", "Extended reply chunk message"):
 *
 *   simple (16):    u32 magic 0x67446698 | u32 error | u64 cookie   [READ data when error is 0]
 *   chunk  (20):    u32 magic 0x668e33ef | u16 flags | u16 type | u64 cookie | u32 length   + length bytes
 *   extended (32):  u32 magic 0x6e8a278c | u16 flags | u16 type | u64 cookie | u64 request offset | u64 length
 *                   + length bytes (once NBD_OPT_EXTENDED_HEADERS was acknowledged: every reply is one)
 *
 * Chunk payloads by type:
 *     NONE              (nothing; with DONE)
 *     OFFSET_DATA       u64 offset, data
 *     OFFSET_HOLE       u64 offset, u32 hole length
 *     BLOCK_STATUS      u32 context id, then (u32 length, u32 flags) per extent (compact headers only)
 *     BLOCK_STATUS_EXT  u32 context id, u32 extent count, then (u64 length, u64 flags) per extent (extended only)
 *     ERROR             u32 error, u16 message length, message
 *     ERROR_OFFSET      u32 error, u16 message length, message, u64 offset
 *
 * A builder answers in the header style of the request it is given
 * (`ReplyTo.extended`: an extended request is answered with extended
 * headers, echoing its offset; the status chunk is then BLOCK_STATUS_EXT).
 * Builders return small headers in buffers from Node's pool (every byte is
 * written); data is never copied: the caller writes it after its header,
 * corked. Parsers read a header in place; the incremental client-side
 * parser is reply-decoder.ts.
 */
import {
  CHUNK_HEADER_SIZE, EXTENDED_CHUNK_HEADER_SIZE, EXTENDED_REPLY_MAGIC, MAX_STRING, ReplyFlag, ReplyType, SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_MAGIC, SIMPLE_REPLY_MAGIC,
} from './constants.ts';
import { readU64, writeU64 } from './bytes.ts';
import { NbdProtocolError } from './errors.ts';
import type { Cookie } from './requests.ts';

// ---- building (server) ----

/**
 * What a reply header echoes of its request: the cookie and, for an
 * extended request, the request's offset (a RequestHeader is one).
 */
export type ReplyTo = Cookie & { extended?: boolean; offset?: number };

/** Bytes of a chunk header answering `to`: 32 (extended) or 20. */
export function chunkHeaderSize(to: { extended?: boolean }): number {
  return to.extended ? EXTENDED_CHUNK_HEADER_SIZE : CHUNK_HEADER_SIZE;
}

export function simpleReply(c: Cookie, error: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  writeSimpleReply(b, c, error);
  return b;
}

/** Writes a simple reply header into the first SIMPLE_REPLY_SIZE bytes of `b`. */
export function writeSimpleReply(b: Buffer, c: Cookie, error: number): void {
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeUInt32BE(c.cookieHi, 8);
  b.writeUInt32BE(c.cookieLo, 12);
}

/** Bytes in front of READ data: the simple reply header, or an OFFSET_DATA chunk header (compact or extended) with its offset field. */
export function readReplyHeaderSize(structured: boolean, extended = false): number {
  if (extended) return EXTENDED_CHUNK_HEADER_SIZE + 8;
  return structured ? CHUNK_HEADER_SIZE + 8 : SIMPLE_REPLY_SIZE;
}

/** Writes the header of a READ reply carrying `dataLength` bytes into the front of `b` (readReplyHeaderSize bytes). */
export function writeReadReplyHeader(b: Buffer, structured: boolean, to: ReplyTo, offset: number, dataLength: number): void {
  if (!structured && !to.extended) return writeSimpleReply(b, to, 0);
  writeChunkHeader(b, to, ReplyType.OFFSET_DATA, true, 8 + dataLength);
  writeU64(b, offset, chunkHeaderSize(to));
}

/** A chunk header followed by `extra` bytes of fixed fields the caller fills (from chunkHeaderSize(to) on). */
function chunk(to: ReplyTo, type: number, done: boolean, length: number, extra: number): Buffer {
  const b = Buffer.allocUnsafe(chunkHeaderSize(to) + extra);
  writeChunkHeader(b, to, type, done, length);
  return b;
}

/**
 * Writes a chunk header (`length`: the bytes after it) into the first
 * chunkHeaderSize(to) bytes of `b`: structured, or extended for an extended
 * request (which must then carry its offset).
 */
export function writeChunkHeader(b: Buffer, to: ReplyTo, type: number, done: boolean, length: number): void {
  b.writeUInt32BE(to.extended ? EXTENDED_REPLY_MAGIC : STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(done ? ReplyFlag.DONE : 0, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(to.cookieHi, 8);
  b.writeUInt32BE(to.cookieLo, 12);
  if (to.extended) {
    if (to.offset === undefined) throw new Error('an extended reply header needs the request offset');
    writeU64(b, to.offset, 16);
    writeU64(b, length, 24);
  } else b.writeUInt32BE(length, 16);
}

export function chunkNone(to: ReplyTo): Buffer {
  return chunk(to, ReplyType.NONE, true, 0, 0);
}

/** Header (with the offset field) of an OFFSET_DATA chunk; the data follows it on the wire. */
export function chunkDataHeader(to: ReplyTo, done: boolean, offset: number, dataLength: number): Buffer {
  const b = chunk(to, ReplyType.OFFSET_DATA, done, 8 + dataLength, 8);
  writeU64(b, offset, chunkHeaderSize(to));
  return b;
}

export function chunkHole(to: ReplyTo, done: boolean, offset: number, length: number): Buffer {
  const b = chunk(to, ReplyType.OFFSET_HOLE, done, 12, 12);
  const h = chunkHeaderSize(to);
  writeU64(b, offset, h);
  b.writeUInt32BE(length, h + 8);
  return b;
}

/** An ERROR chunk (always the last of its reply); the message is cut to 4096 bytes. */
export function chunkError(to: ReplyTo, error: number, message: string): Buffer {
  return errorChunk(to, ReplyType.ERROR, error, message, undefined);
}

/** An ERROR_OFFSET chunk: the error concerns the byte at `offset`; more chunks may follow. */
export function chunkErrorOffset(to: ReplyTo, done: boolean, error: number, message: string, offset: number): Buffer {
  return errorChunk(to, ReplyType.ERROR_OFFSET, error, message, offset, done);
}

function errorChunk(to: ReplyTo, type: number, error: number, message: string, offset: number | undefined, done = true): Buffer {
  let msg = Buffer.from(message, 'utf8');
  if (msg.length > MAX_STRING) msg = msg.subarray(0, MAX_STRING);
  const tail = offset === undefined ? 0 : 8;
  const b = chunk(to, type, done, 6 + msg.length + tail, 6 + msg.length + tail);
  const h = chunkHeaderSize(to);
  b.writeUInt32BE(error, h);
  b.writeUInt16BE(msg.length, h + 4);
  msg.copy(b, h + 6);
  if (offset !== undefined) writeU64(b, offset, h + 6 + msg.length);
  return b;
}

/**
 * One extent of a status chunk. `length` fits 32 bits in BLOCK_STATUS and
 * 64 in BLOCK_STATUS_EXT; `flags` is the low 32 bits of the status,
 * `flagsHi` the high 32 of a BLOCK_STATUS_EXT status (0 for every context
 * blockd serves).
 */
export interface WireExtent { length: number; flags: number; flagsHi?: number }

/** The status chunk of one context: BLOCK_STATUS, or BLOCK_STATUS_EXT answering an extended request. */
export function chunkBlockStatus(to: ReplyTo, done: boolean, contextId: number, extents: readonly WireExtent[]): Buffer {
  const n = extents.length;
  const h = chunkHeaderSize(to);
  if (to.extended) {
    const b = chunk(to, ReplyType.BLOCK_STATUS_EXT, done, 8 + 16 * n, 8 + 16 * n);
    b.writeUInt32BE(contextId, h);
    b.writeUInt32BE(n, h + 4);
    let p = h + 8;
    for (const e of extents) {
      writeU64(b, e.length, p);
      b.writeUInt32BE((e.flagsHi ?? 0) >>> 0, p + 8);
      b.writeUInt32BE(e.flags >>> 0, p + 12);
      p += 16;
    }
    return b;
  }
  const b = chunk(to, ReplyType.BLOCK_STATUS, done, 4 + 8 * n, 4 + 8 * n);
  b.writeUInt32BE(contextId, h);
  let p = h + 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length, p);
    b.writeUInt32BE(e.flags >>> 0, p + 4);
    p += 8;
  }
  return b;
}

// ---- parsing (client) ----

export interface SimpleReplyHeader extends Cookie { error: number }

/** The simple reply header at `at` (its magic already checked), read in place. */
export function readSimpleReply(b: Buffer, at: number): SimpleReplyHeader {
  return { error: b.readUInt32BE(at + 4), cookieHi: b.readUInt32BE(at + 8), cookieLo: b.readUInt32BE(at + 12) };
}

export interface ChunkHeader extends Cookie {
  flags: number;
  type: number;
  /** Bytes of payload after the header. */
  length: number;
}

export interface ExtendedChunkHeader extends ChunkHeader {
  /** The offset of the request it answers. */
  offset: number;
}

/** The extended chunk header at `at` (its magic already checked), read in place; `length` is 64-bit. */
export function readExtendedChunkHeader(b: Buffer, at: number): ExtendedChunkHeader {
  return {
    flags: b.readUInt16BE(at + 4),
    type: b.readUInt16BE(at + 6),
    cookieHi: b.readUInt32BE(at + 8),
    cookieLo: b.readUInt32BE(at + 12),
    offset: readU64(b, at + 16),
    length: readU64(b, at + 24),
  };
}

/** The chunk header at `at` (its magic already checked), read in place. */
export function readChunkHeader(b: Buffer, at: number): ChunkHeader {
  return {
    flags: b.readUInt16BE(at + 4),
    type: b.readUInt16BE(at + 6),
    cookieHi: b.readUInt32BE(at + 8),
    cookieLo: b.readUInt32BE(at + 12),
    length: b.readUInt32BE(at + 16),
  };
}

/** A chunk's payload, decoded by type. */
export type ChunkPayload =
  | { type: typeof ReplyType.NONE }
  | { type: typeof ReplyType.OFFSET_DATA; offset: number; data: Buffer }
  | { type: typeof ReplyType.OFFSET_HOLE; offset: number; length: number }
  | { type: typeof ReplyType.BLOCK_STATUS; contextId: number; extents: WireExtent[] }
  | { type: typeof ReplyType.BLOCK_STATUS_EXT; contextId: number; extents: WireExtent[] }
  /** ERROR, ERROR_OFFSET (with `offset`) and any unknown error type (bit 15 set), which keeps the error layout. */
  | { type: number; error: number; message: string; offset?: number }
  /** A type this codec does not know and that is not an error: its payload as sent. */
  | { type: number; unknown: Buffer };

export function isErrorChunk(type: number): boolean {
  return (type & 0x8000) !== 0;
}

function bad(type: number, why: string): never {
  throw new NbdProtocolError(`invalid structured reply chunk of type ${type}: ${why}`);
}

/**
 * Decodes the payload of a chunk of type `type`; throws NbdProtocolError
 * when its length does not fit the layout, or when it is the status chunk
 * of the other header style (BLOCK_STATUS under extended headers,
 * BLOCK_STATUS_EXT without: `extended` says which were negotiated).
 */
export function parseChunkPayload(type: number, p: Buffer, extended = false): ChunkPayload {
  switch (type) {
    case ReplyType.NONE:
      if (p.length !== 0) bad(type, `length ${p.length}, expected 0`);
      return { type };
    case ReplyType.OFFSET_DATA:
      if (p.length <= 8) bad(type, `length ${p.length}, expected more than 8`);
      return { type, offset: readU64(p, 0), data: p.subarray(8) };
    case ReplyType.OFFSET_HOLE: {
      if (p.length !== 12) bad(type, `length ${p.length}, expected 12`);
      const length = p.readUInt32BE(8);
      if (length === 0) bad(type, 'hole of length 0');
      return { type, offset: readU64(p, 0), length };
    }
    case ReplyType.BLOCK_STATUS: {
      if (extended) bad(type, 'BLOCK_STATUS under extended headers (BLOCK_STATUS_EXT expected)');
      if (p.length < 12 || (p.length - 4) % 8 !== 0) bad(type, `length ${p.length}, expected 4 + 8 per extent (at least one)`);
      const extents: WireExtent[] = [];
      for (let at = 4; at < p.length; at += 8) extents.push({ length: p.readUInt32BE(at), flags: p.readUInt32BE(at + 4) });
      return { type, contextId: p.readUInt32BE(0), extents };
    }
    case ReplyType.BLOCK_STATUS_EXT: {
      if (!extended) bad(type, 'BLOCK_STATUS_EXT without extended headers');
      if (p.length < 24 || (p.length - 8) % 16 !== 0) bad(type, `length ${p.length}, expected 8 + 16 per extent (at least one)`);
      const count = p.readUInt32BE(4);
      if (count !== (p.length - 8) / 16) bad(type, `descriptor count ${count} does not match length ${p.length}`);
      const extents: WireExtent[] = [];
      for (let at = 8; at < p.length; at += 16) {
        extents.push({ length: readU64(p, at), flags: p.readUInt32BE(at + 12), flagsHi: p.readUInt32BE(at + 8) });
      }
      return { type, contextId: p.readUInt32BE(0), extents };
    }
  }
  if (!isErrorChunk(type)) return { type, unknown: p };
  if (p.length < 6) bad(type, `length ${p.length}, expected at least 6`);
  const error = p.readUInt32BE(0);
  const msgLen = p.readUInt16BE(4);
  const tail = type === ReplyType.ERROR_OFFSET ? 8 : 0;
  if (error === 0) bad(type, 'error value 0');
  if (msgLen > MAX_STRING) bad(type, `message length ${msgLen} over ${MAX_STRING}`);
  if (type === ReplyType.ERROR || type === ReplyType.ERROR_OFFSET ? p.length !== 6 + msgLen + tail : p.length < 6 + msgLen) {
    bad(type, `length ${p.length} does not fit a message of ${msgLen} bytes`);
  }
  const message = p.toString('utf8', 6, 6 + msgLen);
  if (tail) return { type, error, message, offset: readU64(p, 6 + msgLen) };
  return { type, error, message };
}
