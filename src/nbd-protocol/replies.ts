/**
 * Transmission replies, both directions (doc/proto.md "Simple reply message",
 * "Structured reply chunk message"):
 *
 *   simple (16):  u32 magic 0x67446698 | u32 error | u64 cookie   [READ data when error is 0]
 *   chunk  (20):  u32 magic 0x668e33ef | u16 flags | u16 type | u64 cookie | u32 length   + length bytes:
 *     NONE          (nothing; with DONE)
 *     OFFSET_DATA   u64 offset, data
 *     OFFSET_HOLE   u64 offset, u32 hole length
 *     BLOCK_STATUS  u32 context id, then (u32 length, u32 flags) per extent
 *     ERROR         u32 error, u16 message length, message
 *     ERROR_OFFSET  u32 error, u16 message length, message, u64 offset
 *
 * Builders return small headers in buffers from Node's pool (every byte is
 * written); data is never copied: the caller writes it after its header,
 * corked. Parsers read a header in place; the incremental client-side
 * parser is reply-decoder.ts.
 */
import {
  CHUNK_HEADER_SIZE, MAX_STRING, ReplyFlag, ReplyType, SIMPLE_REPLY_SIZE, STRUCTURED_REPLY_MAGIC, SIMPLE_REPLY_MAGIC,
} from './constants.ts';
import { readU64, writeU64 } from './bytes.ts';
import { NbdProtocolError } from './errors.ts';
import type { Cookie } from './requests.ts';

// ---- building (server) ----

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

/** Bytes in front of READ data: the simple reply header, or an OFFSET_DATA chunk header with its offset field. */
export function readReplyHeaderSize(structured: boolean): number {
  return structured ? CHUNK_HEADER_SIZE + 8 : SIMPLE_REPLY_SIZE;
}

/** Writes the header of a READ reply carrying `dataLength` bytes into the front of `b`. */
export function writeReadReplyHeader(b: Buffer, structured: boolean, c: Cookie, offset: number, dataLength: number): void {
  if (!structured) return writeSimpleReply(b, c, 0);
  writeChunkHeader(b, c, ReplyType.OFFSET_DATA, true, 8 + dataLength);
  writeU64(b, offset, CHUNK_HEADER_SIZE);
}

/** A structured chunk header followed by `extra` bytes of fixed fields the caller fills. */
function chunk(c: Cookie, type: number, done: boolean, length: number, extra: number): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + extra);
  writeChunkHeader(b, c, type, done, length);
  return b;
}

/** Writes a chunk header (`length`: the bytes after it) into the first CHUNK_HEADER_SIZE bytes of `b`. */
export function writeChunkHeader(b: Buffer, c: Cookie, type: number, done: boolean, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(done ? ReplyFlag.DONE : 0, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(c.cookieHi, 8);
  b.writeUInt32BE(c.cookieLo, 12);
  b.writeUInt32BE(length, 16);
}

export function chunkNone(c: Cookie): Buffer {
  return chunk(c, ReplyType.NONE, true, 0, 0);
}

/** Header (with the offset field) of an OFFSET_DATA chunk; the data follows it on the wire. */
export function chunkDataHeader(c: Cookie, done: boolean, offset: number, dataLength: number): Buffer {
  const b = chunk(c, ReplyType.OFFSET_DATA, done, 8 + dataLength, 8);
  writeU64(b, offset, CHUNK_HEADER_SIZE);
  return b;
}

export function chunkHole(c: Cookie, done: boolean, offset: number, length: number): Buffer {
  const b = chunk(c, ReplyType.OFFSET_HOLE, done, 12, 12);
  writeU64(b, offset, CHUNK_HEADER_SIZE);
  b.writeUInt32BE(length, CHUNK_HEADER_SIZE + 8);
  return b;
}

/** An ERROR chunk (always the last of its reply); the message is cut to 4096 bytes. */
export function chunkError(c: Cookie, error: number, message: string): Buffer {
  return errorChunk(c, ReplyType.ERROR, error, message, undefined);
}

/** An ERROR_OFFSET chunk: the error concerns the byte at `offset`; more chunks may follow. */
export function chunkErrorOffset(c: Cookie, done: boolean, error: number, message: string, offset: number): Buffer {
  return errorChunk(c, ReplyType.ERROR_OFFSET, error, message, offset, done);
}

function errorChunk(c: Cookie, type: number, error: number, message: string, offset: number | undefined, done = true): Buffer {
  let msg = Buffer.from(message, 'utf8');
  if (msg.length > MAX_STRING) msg = msg.subarray(0, MAX_STRING);
  const tail = offset === undefined ? 0 : 8;
  const b = chunk(c, type, done, 6 + msg.length + tail, 6 + msg.length + tail);
  b.writeUInt32BE(error, CHUNK_HEADER_SIZE);
  b.writeUInt16BE(msg.length, CHUNK_HEADER_SIZE + 4);
  msg.copy(b, CHUNK_HEADER_SIZE + 6);
  if (offset !== undefined) writeU64(b, offset, CHUNK_HEADER_SIZE + 6 + msg.length);
  return b;
}

export interface WireExtent { length: number; flags: number }

export function chunkBlockStatus(c: Cookie, done: boolean, contextId: number, extents: readonly WireExtent[]): Buffer {
  const n = extents.length;
  const b = chunk(c, ReplyType.BLOCK_STATUS, done, 4 + 8 * n, 4 + 8 * n);
  b.writeUInt32BE(contextId, CHUNK_HEADER_SIZE);
  let p = CHUNK_HEADER_SIZE + 4;
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

/** Decodes the payload of a chunk of type `type`; throws NbdProtocolError when its length does not fit the layout. */
export function parseChunkPayload(type: number, p: Buffer): ChunkPayload {
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
      if (p.length < 12 || (p.length - 4) % 8 !== 0) bad(type, `length ${p.length}, expected 4 + 8 per extent (at least one)`);
      const extents: WireExtent[] = [];
      for (let at = 4; at < p.length; at += 8) extents.push({ length: p.readUInt32BE(at), flags: p.readUInt32BE(at + 4) });
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
