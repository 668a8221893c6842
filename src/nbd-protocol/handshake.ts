/**
 * The fixed-size messages of the handshake (doc/proto.md "Newstyle negotiation"):
 *
 *   greeting (S, 18):          "NBDMAGIC" | u64 IHAVEOPT | u16 handshake flags
 *   client flags (C, 4):       u32 client flags
 *   EXPORT_NAME reply (S):     u64 export size | u16 transmission flags | 124 zero bytes unless NO_ZEROES
 *
 * Each has a builder, an in-place parser and a decode*(queue) that takes the
 * message from a ByteQueue once it is all there (undefined before).
 */
import { IHAVEOPT, NBDMAGIC } from './constants.ts';
import type { ByteQueue } from './byte-queue.ts';
import { readU64, writeU64 } from './bytes.ts';
import { NbdProtocolError } from './errors.ts';

export const GREETING_SIZE = 18;
export const CLIENT_FLAGS_SIZE = 4;
/** The EXPORT_NAME reply without (10) and with (134) its 124 zero bytes. */
export const EXPORT_NAME_REPLY_SIZE = 10;
export const EXPORT_NAME_REPLY_ZEROES_SIZE = 134;
/** The oldstyle greeting's second magic, recognised only to say why it is refused. */
const CLISERV_MAGIC = 0x00420281861253n;

export function buildGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(GREETING_SIZE);
  NBDMAGIC.copy(b, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** The handshake flags of the greeting at `at`; throws unless it is a newstyle greeting. */
export function parseGreeting(b: Buffer, at = 0): { handshakeFlags: number } {
  if (!b.subarray(at, at + 8).equals(NBDMAGIC)) throw new NbdProtocolError('bad greeting magic: not an NBD server');
  const magic = b.readBigUInt64BE(at + 8);
  if (magic === CLISERV_MAGIC) throw new NbdProtocolError('oldstyle negotiation is not supported');
  if (magic !== IHAVEOPT) throw new NbdProtocolError(`bad greeting magic 0x${magic.toString(16)}`);
  return { handshakeFlags: b.readUInt16BE(at + 16) };
}

export function decodeGreeting(q: ByteQueue): { handshakeFlags: number } | undefined {
  if (q.length < GREETING_SIZE) return undefined;
  const b = q.peek(GREETING_SIZE);
  const g = parseGreeting(b, q.at);
  q.discard(GREETING_SIZE);
  return g;
}

export function buildClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(CLIENT_FLAGS_SIZE);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

export function parseClientFlags(b: Buffer, at = 0): number {
  return b.readUInt32BE(at);
}

export function decodeClientFlags(q: ByteQueue): number | undefined {
  if (q.length < CLIENT_FLAGS_SIZE) return undefined;
  const b = q.read(CLIENT_FLAGS_SIZE);
  return parseClientFlags(b, q.at);
}

export interface ExportInfo {
  size: number;
  transmissionFlags: number;
}

export function buildExportNameReply(info: ExportInfo, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? EXPORT_NAME_REPLY_SIZE : EXPORT_NAME_REPLY_ZEROES_SIZE);
  writeU64(b, info.size, 0);
  b.writeUInt16BE(info.transmissionFlags, 8);
  return b;
}

export function parseExportNameReply(b: Buffer, at = 0): ExportInfo {
  return { size: readU64(b, at), transmissionFlags: b.readUInt16BE(at + 8) };
}

/** The EXPORT_NAME reply; `noZeroes`: whether both sides agreed on NBD_FLAG_(C_)NO_ZEROES. */
export function decodeExportNameReply(q: ByteQueue, noZeroes: boolean): ExportInfo | undefined {
  const size = noZeroes ? EXPORT_NAME_REPLY_SIZE : EXPORT_NAME_REPLY_ZEROES_SIZE;
  if (q.length < size) return undefined;
  const b = q.peek(EXPORT_NAME_REPLY_SIZE);
  const info = parseExportNameReply(b, q.at);
  q.discard(size);
  return info;
}
