/**
 * Transmission requests (doc/proto.md "Request message"). Compact, 28 bytes:
 *
 *   u32 magic 0x25609513 | u16 command flags | u16 type | u64 cookie | u64 offset | u32 length
 *
 * followed by `length` bytes of data for NBD_CMD_WRITE only. Extended
 * (once NBD_OPT_EXTENDED_HEADERS was acknowledged), 32 bytes:
 *
 *   u32 magic 0x21e41c71 | u16 command flags | u16 type | u64 cookie | u64 offset | u64 length
 *
 * followed by `length` bytes of payload exactly when the flags have
 * NBD_CMD_FLAG_PAYLOAD_LEN (WRITE always has it); without it `length` is
 * the effect length and may use all 64 bits.
 */
import { EXTENDED_REQUEST_MAGIC, EXTENDED_REQUEST_SIZE, REQUEST_MAGIC, REQUEST_SIZE } from './constants.ts';
import { readU64, writeU64 } from './bytes.ts';

/**
 * A request's 64-bit cookie ("handle") as its two big-endian 32-bit halves:
 * it is only ever copied back into replies, and a BigInt per request cost as
 * much as the rest of parsing the header.
 */
export interface Cookie {
  cookieHi: number;
  cookieLo: number;
}

/** The cookie as one number, for logs and tests. */
export function cookieOf(c: Cookie): bigint {
  return (BigInt(c.cookieHi) << 32n) | BigInt(c.cookieLo);
}

/** The halves of a 64-bit cookie. */
export function cookieFrom(v: bigint): Cookie {
  return { cookieHi: Number((v >> 32n) & 0xffffffffn), cookieLo: Number(v & 0xffffffffn) };
}

export interface RequestHeader extends Cookie {
  flags: number;
  type: number;
  /** May be imprecise above 2^53; such offsets are past the end of any export anyway. */
  offset: number;
  /** Up to 2^32-1 in a compact request; 64-bit (imprecise above 2^53) in an extended one. */
  length: number;
  /**
   * The request came in (or goes out as) an extended header: its replies
   * then use extended reply headers, which echo `offset`.
   */
  extended?: boolean;
}

/** The magic of the request header at `at` (the caller compares it with REQUEST_MAGIC). */
export function requestMagic(b: Buffer, at: number): number {
  return b.readUInt32BE(at);
}

/** The fields after the magic of the request header at `at`, read in place. */
export function readRequestHeader(b: Buffer, at: number): RequestHeader {
  return {
    flags: b.readUInt16BE(at + 4),
    type: b.readUInt16BE(at + 6),
    cookieHi: b.readUInt32BE(at + 8),
    cookieLo: b.readUInt32BE(at + 12),
    offset: b.readUInt32BE(at + 16) * 2 ** 32 + b.readUInt32BE(at + 20),
    length: b.readUInt32BE(at + 24),
  };
}

/** The fields after the magic of the extended request header at `at`, read in place. */
export function readExtendedRequestHeader(b: Buffer, at: number): RequestHeader {
  return {
    flags: b.readUInt16BE(at + 4),
    type: b.readUInt16BE(at + 6),
    cookieHi: b.readUInt32BE(at + 8),
    cookieLo: b.readUInt32BE(at + 12),
    offset: readU64(b, at + 16),
    length: readU64(b, at + 24),
    extended: true,
  };
}

/** Bytes of a request header: 32 when `req.extended`, else 28. */
export function requestHeaderSize(req: { extended?: boolean }): number {
  return req.extended ? EXTENDED_REQUEST_SIZE : REQUEST_SIZE;
}

/** Writes a request header (with its magic) at `at`: an extended one when `req.extended`. */
export function writeRequestHeader(b: Buffer, at: number, req: RequestHeader): void {
  if (req.extended) {
    b.writeUInt32BE(EXTENDED_REQUEST_MAGIC, at);
    b.writeUInt16BE(req.flags, at + 4);
    b.writeUInt16BE(req.type, at + 6);
    b.writeUInt32BE(req.cookieHi, at + 8);
    b.writeUInt32BE(req.cookieLo, at + 12);
    writeU64(b, req.offset, at + 16);
    writeU64(b, req.length, at + 24);
    return;
  }
  b.writeUInt32BE(REQUEST_MAGIC, at);
  b.writeUInt16BE(req.flags, at + 4);
  b.writeUInt16BE(req.type, at + 6);
  b.writeUInt32BE(req.cookieHi, at + 8);
  b.writeUInt32BE(req.cookieLo, at + 12);
  writeU64(b, req.offset, at + 16);
  b.writeUInt32BE(req.length, at + 24);
}

/** A request header; a WRITE's data goes on the wire right after it (the caller writes it, uncopied). */
export function buildRequest(req: RequestHeader): Buffer {
  const b = Buffer.allocUnsafe(requestHeaderSize(req));
  writeRequestHeader(b, 0, req);
  return b;
}
