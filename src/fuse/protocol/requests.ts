/**
 * Decoding of the requests the kernel sends on /dev/fuse: a 40-byte
 * fuse_in_header, then the opcode's argument struct (and WRITE's data).
 * Pure: a Buffer in, a typed request or an errno out. A request too short
 * for its struct is EINVAL (the session answers it so); an opcode blockd
 * does not decode is `other` (answered ENOSYS, as libfuse does for an
 * operation a file system leaves out).
 */
import { IN_HEADER_SIZE, Opcode } from './constants.ts';

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: bigint;
  uid: number;
  gid: number;
  pid: number;
}

export type FuseRequest =
  | { op: 'init'; major: number; minor: number; maxReadahead: number; flags: number; flags2: number }
  | { op: 'lookup'; name: string }
  | { op: 'forget' }
  | { op: 'getattr'; getattrFlags: number; fh: bigint }
  | { op: 'setattr'; valid: number; size: number; mode: number; uid: number; gid: number }
  | { op: 'open'; flags: number }
  | { op: 'release' }
  | { op: 'read'; offset: number; size: number }
  | { op: 'write'; offset: number; data: Buffer }
  | { op: 'statfs' }
  | { op: 'fsync'; datasync: boolean }
  | { op: 'flush' }
  | { op: 'fallocate'; offset: number; length: number; mode: number }
  | { op: 'lseek'; offset: number; whence: number }
  | { op: 'interrupt'; target: bigint }
  | { op: 'destroy' }
  | { op: 'other' };

export type Decoded =
  | { header: InHeader; req: FuseRequest }
  | { header: InHeader; errno: 'EINVAL' };

/** Byte offsets are u64 on the wire; one above 2^53 cannot be a JS number and is refused. */
function u64(buf: Buffer, at: number): number | undefined {
  const v = buf.readBigUInt64LE(at);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
}

export function decodeHeader(buf: Buffer): InHeader | undefined {
  if (buf.length < IN_HEADER_SIZE) return undefined;
  return {
    len: buf.readUInt32LE(0),
    opcode: buf.readUInt32LE(4),
    unique: buf.readBigUInt64LE(8),
    nodeid: buf.readBigUInt64LE(16),
    uid: buf.readUInt32LE(24),
    gid: buf.readUInt32LE(28),
    pid: buf.readUInt32LE(32),
  };
}

/** One request as read from the device (a read returns exactly one). undefined: not even a header. */
export function decodeRequest(buf: Buffer): Decoded | undefined {
  const header = decodeHeader(buf);
  if (!header) return undefined;
  const body = buf.subarray(IN_HEADER_SIZE, Math.min(buf.length, Math.max(header.len, IN_HEADER_SIZE)));
  const req = decodeBody(header.opcode, body);
  return req ? { header, req } : { header, errno: 'EINVAL' };
}

function decodeBody(opcode: number, b: Buffer): FuseRequest | undefined {
  const need = (n: number) => b.length >= n;
  switch (opcode) {
    case Opcode.INIT:
      if (!need(8)) return undefined;
      return {
        op: 'init', major: b.readUInt32LE(0), minor: b.readUInt32LE(4),
        maxReadahead: need(12) ? b.readUInt32LE(8) : 0, flags: need(16) ? b.readUInt32LE(12) : 0, flags2: need(20) ? b.readUInt32LE(16) : 0,
      };
    case Opcode.LOOKUP: {
      const end = b.indexOf(0);
      return { op: 'lookup', name: b.toString('utf8', 0, end < 0 ? b.length : end) };
    }
    case Opcode.FORGET:
    case Opcode.BATCH_FORGET:
      return { op: 'forget' };
    case Opcode.GETATTR:
      // Before 7.9 GETATTR had no argument.
      return { op: 'getattr', getattrFlags: need(4) ? b.readUInt32LE(0) : 0, fh: need(16) ? b.readBigUInt64LE(8) : 0n };
    case Opcode.SETATTR: {
      if (!need(88)) return undefined;
      const size = u64(b, 16);
      if (size === undefined) return undefined;
      return { op: 'setattr', valid: b.readUInt32LE(0), size, mode: b.readUInt32LE(68), uid: b.readUInt32LE(76), gid: b.readUInt32LE(80) };
    }
    case Opcode.OPEN:
      return need(4) ? { op: 'open', flags: b.readUInt32LE(0) } : undefined;
    case Opcode.RELEASE:
      return { op: 'release' };
    case Opcode.READ: {
      if (!need(24)) return undefined;
      const offset = u64(b, 8);
      return offset === undefined ? undefined : { op: 'read', offset, size: b.readUInt32LE(16) };
    }
    case Opcode.WRITE: {
      // fuse_write_in is 40 bytes since 7.9 (24 before); the data follows it.
      if (!need(40)) return undefined;
      const offset = u64(b, 8);
      const size = b.readUInt32LE(16);
      if (offset === undefined || b.length < 40 + size) return undefined;
      return { op: 'write', offset, data: b.subarray(40, 40 + size) };
    }
    case Opcode.STATFS:
      return { op: 'statfs' };
    case Opcode.FSYNC:
      return need(12) ? { op: 'fsync', datasync: (b.readUInt32LE(8) & 1) !== 0 } : undefined;
    case Opcode.FLUSH:
      return { op: 'flush' };
    case Opcode.FALLOCATE: {
      if (!need(28)) return undefined;
      const offset = u64(b, 8);
      const length = u64(b, 16);
      if (offset === undefined || length === undefined) return undefined;
      return { op: 'fallocate', offset, length, mode: b.readUInt32LE(24) };
    }
    case Opcode.LSEEK: {
      if (!need(20)) return undefined;
      const offset = u64(b, 8);
      return offset === undefined ? undefined : { op: 'lseek', offset, whence: b.readUInt32LE(16) };
    }
    case Opcode.INTERRUPT:
      return need(8) ? { op: 'interrupt', target: b.readBigUInt64LE(0) } : undefined;
    case Opcode.DESTROY:
      return { op: 'destroy' };
    default:
      return { op: 'other' };
  }
}

/** Requests the kernel expects no reply to. */
export function isNoReply(opcode: number): boolean {
  return opcode === Opcode.FORGET || opcode === Opcode.BATCH_FORGET || opcode === Opcode.INTERRUPT;
}
