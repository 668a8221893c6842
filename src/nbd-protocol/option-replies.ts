/**
 * Option replies, what a server sends during fixed newstyle negotiation
 * (doc/proto.md "Option reply types", "NBD_REP_INFO"):
 *
 *   header (20):  u64 0x3e889045565a9 | u32 option | u32 reply type | u32 length   + payload:
 *     ACK            nothing
 *     SERVER         u32 name length, name, then a description (the rest)
 *     INFO           u16 info type, then by type:
 *                      EXPORT       u64 size, u16 transmission flags
 *                      NAME         the name (the rest)
 *                      DESCRIPTION  the description (the rest)
 *                      BLOCK_SIZE   u32 minimum, u32 preferred, u32 maximum
 *     META_CONTEXT   u32 context id, name (the rest)
 *     ERR_*          (bit 31 set) an optional message for humans (the whole payload)
 */
import { Info, MAX_PAYLOAD, REPLY_MAGIC } from './constants.ts';
import type { ByteQueue } from './byte-queue.ts';
import { EMPTY, readU64, writeU64 } from './bytes.ts';
import { NbdProtocolError } from './errors.ts';

export const OPTION_REPLY_HEADER_SIZE = 20;

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export interface OptionReply {
  option: number;
  type: number;
  payload: Buffer;
}

/** One option reply: header and payload in one buffer (negotiation is not the data path). */
export function buildOptionReply(option: number, type: number, payload: Buffer = EMPTY): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + payload.length);
  b.writeBigUInt64BE(REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(payload.length, 16);
  payload.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** An error reply with a human-readable message as payload. */
export function buildOptionError(option: number, type: number, message: string): Buffer {
  return buildOptionReply(option, type, Buffer.from(message, 'utf8'));
}

export function isErrorReply(type: number): boolean {
  return type >= 2 ** 31;
}

/** The option reply header at `at`; throws on a bad magic. */
export function readOptionReplyHeader(b: Buffer, at: number): OptionReplyHeader {
  const magic = b.readBigUInt64BE(at);
  if (magic !== REPLY_MAGIC) throw new NbdProtocolError(`bad option reply magic 0x${magic.toString(16)}`);
  return { option: b.readUInt32BE(at + 8), type: b.readUInt32BE(at + 12), length: b.readUInt32BE(at + 16) };
}

/** The next whole option reply; a payload longer than `maxLength` throws as soon as the header is here. */
export function decodeOptionReply(q: ByteQueue, maxLength = MAX_PAYLOAD): OptionReply | undefined {
  if (q.length < OPTION_REPLY_HEADER_SIZE) return undefined;
  const h = readOptionReplyHeader(q.peek(OPTION_REPLY_HEADER_SIZE), q.at);
  if (h.length > maxLength) throw new NbdProtocolError(`option reply length ${h.length} over the limit of ${maxLength}`);
  if (q.length < OPTION_REPLY_HEADER_SIZE + h.length) return undefined;
  q.discard(OPTION_REPLY_HEADER_SIZE);
  return { option: h.option, type: h.type, payload: q.take(h.length) };
}

// ---- SERVER ----

export function buildServerPayload(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function parseServerPayload(p: Buffer): { name: string; description: string } {
  if (p.length < 4) throw new NbdProtocolError(`NBD_REP_SERVER of ${p.length} bytes: too short for its name length`);
  const len = p.readUInt32BE(0);
  if (len > p.length - 4) throw new NbdProtocolError(`NBD_REP_SERVER name length ${len} over the ${p.length - 4} bytes left`);
  return { name: p.toString('utf8', 4, 4 + len), description: p.toString('utf8', 4 + len) };
}

// ---- INFO ----

export type InfoItem =
  | { type: typeof Info.EXPORT; size: number; transmissionFlags: number }
  | { type: typeof Info.NAME; name: string }
  | { type: typeof Info.DESCRIPTION; description: string }
  | { type: typeof Info.BLOCK_SIZE; minimum: number; preferred: number; maximum: number }
  /** An info type this codec does not know (clients ignore those): its bytes after the type. */
  | { type: number; unknown: Buffer };

export function buildInfoPayload(item: InfoItem): Buffer {
  let body: Buffer;
  if ('unknown' in item) body = item.unknown;
  else if (item.type === Info.EXPORT) {
    body = Buffer.alloc(10);
    writeU64(body, item.size, 0);
    body.writeUInt16BE(item.transmissionFlags, 8);
  } else if (item.type === Info.NAME) body = Buffer.from(item.name, 'utf8');
  else if (item.type === Info.DESCRIPTION) body = Buffer.from(item.description, 'utf8');
  else {
    body = Buffer.alloc(12);
    body.writeUInt32BE(item.minimum, 0);
    body.writeUInt32BE(item.preferred, 4);
    body.writeUInt32BE(item.maximum, 8);
  }
  const b = Buffer.alloc(2 + body.length);
  b.writeUInt16BE(item.type, 0);
  body.copy(b, 2);
  return b;
}

export function parseInfoPayload(p: Buffer): InfoItem {
  if (p.length < 2) throw new NbdProtocolError(`NBD_REP_INFO of ${p.length} bytes: too short for its type`);
  const type = p.readUInt16BE(0);
  const exact = (n: number, what: string) => {
    if (p.length !== 2 + n) throw new NbdProtocolError(`NBD_REP_INFO ${what} of ${p.length} bytes, expected ${2 + n}`);
  };
  switch (type) {
    case Info.EXPORT:
      exact(10, 'NBD_INFO_EXPORT');
      return { type, size: readU64(p, 2), transmissionFlags: p.readUInt16BE(10) };
    case Info.NAME:
      return { type, name: p.toString('utf8', 2) };
    case Info.DESCRIPTION:
      return { type, description: p.toString('utf8', 2) };
    case Info.BLOCK_SIZE:
      exact(12, 'NBD_INFO_BLOCK_SIZE');
      return { type, minimum: p.readUInt32BE(2), preferred: p.readUInt32BE(6), maximum: p.readUInt32BE(10) };
    default:
      return { type, unknown: p.subarray(2) };
  }
}

// ---- META_CONTEXT ----

export function buildMetaContextPayload(id: number, name: string): Buffer {
  const b = Buffer.alloc(4 + Buffer.byteLength(name));
  b.writeUInt32BE(id, 0);
  b.write(name, 4, 'utf8');
  return b;
}

export function parseMetaContextPayload(p: Buffer): { id: number; name: string } {
  if (p.length < 4) throw new NbdProtocolError(`NBD_REP_META_CONTEXT of ${p.length} bytes: too short for its id`);
  return { id: p.readUInt32BE(0), name: p.toString('utf8', 4) };
}

// ---- errors ----

/** The message of an error reply ('' when it has none). */
export function parseErrorPayload(p: Buffer): string {
  return p.toString('utf8');
}
