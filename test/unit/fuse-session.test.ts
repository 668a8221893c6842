/**
 * The FUSE codecs and session without a kernel: requests built by hand,
 * replies decoded by hand (struct layouts from include/uapi/linux/fuse.h).
 */
import { describe, it, expect } from 'vitest';
import { decodeRequest } from '../../src/fuse/protocol/requests.ts';
import { Opcode, InitFlag, Fattr } from '../../src/fuse/protocol/constants.ts';
import { FuseSession, type FuseFile } from '../../src/fuse/session.ts';
import { fuseErr } from '../../src/fuse/errors.ts';
import type { FuseAttr } from '../../src/fuse/protocol/replies.ts';

function request(opcode: number, unique: number, body: Buffer = Buffer.alloc(0), nodeid = 1): Buffer {
  const h = Buffer.alloc(40);
  h.writeUInt32LE(40 + body.length, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(BigInt(unique), 8);
  h.writeBigUInt64LE(BigInt(nodeid), 16);
  return Buffer.concat([h, body]);
}

function initBody(minor = 38, flags = 0xffffffff): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32LE(7, 0);
  b.writeUInt32LE(minor, 4);
  b.writeUInt32LE(131072, 8);
  b.writeUInt32LE(flags >>> 0, 12);
  return b;
}

function readBody(offset: number, size: number): Buffer {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeUInt32LE(size, 16);
  return b;
}

function writeBody(offset: number, data: Buffer): Buffer {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeUInt32LE(data.length, 16);
  return Buffer.concat([b, data]);
}

interface Reply { unique: number; error: number; payload: Buffer }

function harness(file: Partial<FuseFile> = {}) {
  const replies: Reply[] = [];
  const reading: boolean[] = [];
  const attr: FuseAttr = { ino: 1, size: 4096, blocks: 8, time: 0, mode: 0o100600, nlink: 1, uid: 0, gid: 0, blksize: 1 };
  const full: FuseFile = {
    getattr: () => attr, setattr: async () => attr, read: async (_o, n) => Buffer.alloc(n, 7), write: async (_o, d) => d.length,
    fsync: async () => {}, flush: async () => {}, fallocate: async () => {}, lseek: async (o) => o, ...file,
  };
  const s = new FuseSession(full, {
    reply: (parts) => {
      const b = Buffer.concat(parts);
      expect(b.readUInt32LE(0)).toBe(b.length);
      replies.push({ unique: Number(b.readBigUInt64LE(8)), error: b.readInt32LE(4), payload: b.subarray(16) });
      return 0;
    },
    setReading: (a) => reading.push(a),
  }, undefined, { maxWrite: 1 << 20, maxPages: 256, attrValid: 1, maxInFlight: 4, maxInFlightBytes: 1 << 30 });
  return { s, replies, reading };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('FUSE request decoding', () => {
  it('decodes READ, WRITE and SETATTR; a body too short for its struct is EINVAL; an offset above 2^53 too', () => {
    expect(decodeRequest(request(Opcode.READ, 5, readBody(4096, 512)))).toMatchObject({ header: { unique: 5n, opcode: Opcode.READ }, req: { op: 'read', offset: 4096, size: 512 } });
    const w = decodeRequest(request(Opcode.WRITE, 6, writeBody(8, Buffer.from('abc'))));
    expect(w).toMatchObject({ req: { op: 'write', offset: 8 } });
    expect((w as { req: { data: Buffer } }).req.data.toString()).toBe('abc');
    const sa = Buffer.alloc(88);
    sa.writeUInt32LE(Fattr.SIZE | Fattr.FH, 0);
    sa.writeBigUInt64LE(12345n, 16);
    sa.writeUInt32LE(0o100644, 68);
    expect(decodeRequest(request(Opcode.SETATTR, 7, sa))).toMatchObject({ req: { op: 'setattr', valid: Fattr.SIZE | Fattr.FH, size: 12345, mode: 0o100644 } });
    expect(decodeRequest(request(Opcode.READ, 8, Buffer.alloc(10)))).toMatchObject({ errno: 'EINVAL' });
    const big = readBody(0, 1);
    big.writeBigUInt64LE(1n << 60n, 8);
    expect(decodeRequest(request(Opcode.READ, 9, big))).toMatchObject({ errno: 'EINVAL' });
    expect(decodeRequest(Buffer.alloc(39))).toBeUndefined();
  });
});

describe('FUSE session', () => {
  it('answers EIO before INIT, negotiates INIT (its flags only, max_write, max_pages)', async () => {
    const { s, replies } = harness();
    s.handle(request(Opcode.GETATTR, 1, Buffer.alloc(16)));
    s.handle(request(Opcode.INIT, 2, initBody()));
    expect(replies[0]).toMatchObject({ unique: 1, error: -5 });
    const init = replies[1].payload;
    expect(replies[1].error).toBe(0);
    expect([init.readUInt32LE(0), init.readUInt32LE(4)]).toEqual([7, 31]);
    const flags = init.readUInt32LE(12);
    expect(flags & InitFlag.ASYNC_READ).toBeTruthy();
    expect(flags & InitFlag.MAX_PAGES).toBeTruthy();
    expect(flags & InitFlag.WRITEBACK_CACHE).toBe(0);
    expect(flags & InitFlag.POSIX_LOCKS).toBe(0);
    expect(init.readUInt32LE(20)).toBe(1 << 20);
    expect(init.readUInt16LE(28)).toBe(256);
    // A kernel without MAX_PAGES gets no max_pages.
    const old = harness();
    old.s.handle(request(Opcode.INIT, 1, initBody(26, InitFlag.ASYNC_READ)));
    expect(old.replies[0].payload.readUInt32LE(12)).toBe(InitFlag.ASYNC_READ);
    expect(old.replies[0].payload.readUInt16LE(28)).toBe(0);
  });

  it('LOOKUP is ENOENT, an unknown opcode ENOSYS, FORGET and INTERRUPT get no reply, a refusal its errno', async () => {
    const { s, replies } = harness({ fallocate: async () => { throw fuseErr('EOPNOTSUPP'); } });
    s.handle(request(Opcode.INIT, 1, initBody()));
    s.handle(request(Opcode.LOOKUP, 2, Buffer.from('x\0')));
    s.handle(request(Opcode.GETXATTR, 3, Buffer.alloc(8)));
    s.handle(request(Opcode.FORGET, 4, Buffer.alloc(8)));
    s.handle(request(Opcode.INTERRUPT, 5, Buffer.alloc(8)));
    s.handle(request(Opcode.FALLOCATE, 6, Buffer.alloc(32)));
    await tick();
    expect(replies.slice(1).map((r) => [r.unique, r.error])).toEqual([[2, -2], [3, -38], [6, -95]]);
  });

  it('keeps many requests in flight, answers them as they complete, and pauses reading above its limit', async () => {
    const waits: (() => void)[] = [];
    const { s, replies, reading } = harness({ read: (_o, n) => new Promise((r) => waits.push(() => r(Buffer.alloc(n, 1)))) });
    s.handle(request(Opcode.INIT, 1, initBody()));
    for (let i = 0; i < 5; i++) s.handle(request(Opcode.READ, 10 + i, readBody(i * 4096, 4096)));
    expect(s.pending).toBe(5);
    expect(reading).toEqual([false]);
    waits[3](); waits[1]();
    await tick();
    expect(replies.slice(1).map((r) => r.unique)).toEqual([13, 11]);
    expect(replies[1].payload.length).toBe(4096);
    waits[0](); waits[2](); waits[4]();
    await s.idle();
    expect(reading).toEqual([false, true]);
    expect(replies.length).toBe(6);
  });
});
