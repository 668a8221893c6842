/**
 * Encoding of replies to /dev/fuse: a 16-byte fuse_out_header (total
 * length, negative errno or 0, the request's unique id), then the
 * opcode's out struct or READ's data. Pure.
 */
import { FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, OUT_HEADER_SIZE } from './constants.ts';

/** What GETATTR and SETATTR answer (struct fuse_attr). */
export interface FuseAttr {
  ino: number;
  size: number;
  blocks: number;
  /** Seconds since the epoch; atime, mtime and ctime alike (qsd uses one "now"). */
  time: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  blksize: number;
}

export function outHeader(unique: bigint, error: number, payloadLength: number): Buffer {
  const h = Buffer.alloc(OUT_HEADER_SIZE);
  h.writeUInt32LE(OUT_HEADER_SIZE + payloadLength, 0);
  h.writeInt32LE(error === 0 ? 0 : -Math.abs(error), 4);
  h.writeBigUInt64LE(unique, 8);
  return h;
}

/** An error reply (errno as a positive number). */
export function errorReply(unique: bigint, errno: number): Buffer[] {
  return [outHeader(unique, errno, 0)];
}

/** A success reply with `payload` (may be empty). */
export function okReply(unique: bigint, ...payload: Buffer[]): Buffer[] {
  const len = payload.reduce((n, b) => n + b.length, 0);
  return [outHeader(unique, 0, len), ...payload];
}

/** struct fuse_attr_out: validity, then the attributes. */
export function attrOut(attr: FuseAttr, validSeconds: number): Buffer {
  const b = Buffer.alloc(104);
  b.writeBigUInt64LE(BigInt(Math.floor(validSeconds)), 0);
  b.writeUInt32LE(Math.round((validSeconds % 1) * 1e9), 8);
  const a = 16;
  b.writeBigUInt64LE(BigInt(attr.ino), a);
  b.writeBigUInt64LE(BigInt(attr.size), a + 8);
  b.writeBigUInt64LE(BigInt(attr.blocks), a + 16);
  for (const at of [24, 32, 40]) b.writeBigUInt64LE(BigInt(attr.time), a + at);
  b.writeUInt32LE(attr.mode, a + 60);
  b.writeUInt32LE(attr.nlink, a + 64);
  b.writeUInt32LE(attr.uid, a + 68);
  b.writeUInt32LE(attr.gid, a + 72);
  b.writeUInt32LE(attr.blksize, a + 80);
  return b;
}

export interface InitReply {
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  timeGran: number;
  maxPages: number;
}

/** struct fuse_init_out (64 bytes; the kernel reads what the minor version has). */
export function initOut(r: InitReply): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
  b.writeUInt32LE(Math.min(r.minor, FUSE_KERNEL_MINOR_VERSION), 4);
  b.writeUInt32LE(r.maxReadahead, 8);
  b.writeUInt32LE(r.flags >>> 0, 12);
  b.writeUInt16LE(r.maxBackground, 16);
  b.writeUInt16LE(r.congestionThreshold, 18);
  b.writeUInt32LE(r.maxWrite, 20);
  b.writeUInt32LE(r.timeGran, 24);
  b.writeUInt16LE(r.maxPages, 28);
  return b;
}

/** struct fuse_open_out. */
export function openOut(fh: bigint, openFlags: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(fh, 0);
  b.writeUInt32LE(openFlags, 8);
  return b;
}

/** struct fuse_write_out. */
export function writeOut(size: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(size, 0);
  return b;
}

/** struct fuse_lseek_out. */
export function lseekOut(offset: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(offset), 0);
  return b;
}

export interface StatfsReply {
  blocks: number; bfree: number; bavail: number; files: number; ffree: number; bsize: number; namelen: number; frsize: number;
}

/** struct fuse_statfs_out (struct fuse_kstatfs). */
export function statfsOut(s: StatfsReply): Buffer {
  const b = Buffer.alloc(80);
  b.writeBigUInt64LE(BigInt(s.blocks), 0);
  b.writeBigUInt64LE(BigInt(s.bfree), 8);
  b.writeBigUInt64LE(BigInt(s.bavail), 16);
  b.writeBigUInt64LE(BigInt(s.files), 24);
  b.writeBigUInt64LE(BigInt(s.ffree), 32);
  b.writeUInt32LE(s.bsize, 40);
  b.writeUInt32LE(s.namelen, 44);
  b.writeUInt32LE(s.frsize, 48);
  return b;
}
