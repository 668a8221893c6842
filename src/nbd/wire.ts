/**
 * Encoders for what the server sends: option replies during negotiation,
 * simple replies and structured reply chunks during transmission. Headers
 * are small fresh buffers; payloads are passed through untouched so the
 * caller can write header and data corked together without copying data.
 */
import {
  CHUNK_HEADER_SIZE, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, NBDMAGIC, REPLY_MAGIC, ReplyFlag, ReplyType,
  SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_SIZE, STRUCTURED_REPLY_MAGIC,
} from '../nbd-protocol/constants.ts';
import type { Cookie } from './framer.ts';

/** The 18-byte newstyle greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export function greeting(): Buffer {
  const b = Buffer.alloc(18);
  NBDMAGIC.copy(b, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

/** One option reply: header and payload in one buffer (negotiation is not the data path). */
export function optionReply(option: number, type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + payload.length);
  b.writeBigUInt64BE(REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(payload.length, 16);
  payload.copy(b, 20);
  return b;
}

/** An error option reply with qsd's human-readable message as payload. */
export function optionError(option: number, type: number, message: string): Buffer {
  return optionReply(option, type, Buffer.from(message, 'utf8'));
}

/** A 32-bit length-prefixed string. */
export function lenString(s: string | Buffer): Buffer {
  const body = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
  const b = Buffer.alloc(4 + body.length);
  b.writeUInt32BE(body.length, 0);
  body.copy(b, 4);
  return b;
}

/** Writes a 64-bit offset (a safe integer) without going through BigInt, which allocates. */
function writeU64(b: Buffer, value: number, at: number): void {
  b.writeUInt32BE(Math.floor(value / 0x100000000), at);
  b.writeUInt32BE(value >>> 0, at + 4);
}

// Reply headers are written in full below, so they may come from Node's
// small-buffer pool (allocUnsafe) instead of a fresh zero-filled allocation.
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

function writeChunkHeader(b: Buffer, c: Cookie, type: number, done: boolean, length: number): void {
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

export function chunkError(c: Cookie, error: number, message: string): Buffer {
  let msg = Buffer.from(message, 'utf8');
  if (msg.length > 4096) msg = msg.subarray(0, 4096);
  const b = chunk(c, ReplyType.ERROR, true, 6 + msg.length, 6 + msg.length);
  b.writeUInt32BE(error, CHUNK_HEADER_SIZE);
  b.writeUInt16BE(msg.length, CHUNK_HEADER_SIZE + 4);
  msg.copy(b, CHUNK_HEADER_SIZE + 6);
  return b;
}

export interface WireExtent { length: number; flags: number }

export function chunkBlockStatus(c: Cookie, done: boolean, contextId: number, extents: WireExtent[]): Buffer {
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
