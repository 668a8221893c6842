/**
 * Extended headers in the src/nbd-protocol codecs (NetworkBlockDevice/nbd
 * doc/proto.md, extension-ext-header): 32-byte requests with 64-bit lengths
 * and NBD_CMD_FLAG_PAYLOAD_LEN, 32-byte reply chunks echoing the request's
 * offset, NBD_REPLY_TYPE_BLOCK_STATUS_EXT. Crafted bytes as the spec lays
 * them out, every split of the input, and malformed input refused.
 */
import { describe, it, expect } from 'vitest';
import { Cmd, CmdFlag, ReplyFlag, ReplyType, STATE_HOLE, STATE_ZERO } from '../../src/nbd-protocol/constants.ts';
import { NbdProtocolError } from '../../src/nbd-protocol/errors.ts';
import { RequestFramer, type Frame } from '../../src/nbd-protocol/request-framer.ts';
import { buildRequest, cookieFrom, type RequestHeader } from '../../src/nbd-protocol/requests.ts';
import {
  chunkBlockStatus, chunkDataHeader, chunkError, chunkErrorOffset, chunkHole, chunkNone, parseChunkPayload, readReplyHeaderSize,
  writeReadReplyHeader, type ReplyTo,
} from '../../src/nbd-protocol/replies.ts';
import { ReplyDecoder, type DecodedReply } from '../../src/nbd-protocol/reply-decoder.ts';
import { decodeEverySplit } from '../helpers/split.ts';

const hex = (s: string) => Buffer.from(s.replace(/[\s|]/g, ''), 'hex');
const ext = (cookie: bigint, offset: number): ReplyTo => ({ ...cookieFrom(cookie), offset, extended: true });

function frames(bytes: Buffer, opts: ConstructorParameters<typeof RequestFramer>[0]): Frame[][] {
  return decodeEverySplit(bytes, () => {
    const f = new RequestFramer(opts);
    return { push: (b: Buffer) => f.push(b), drain: () => { const out: Frame[] = []; for (let x = f.next(); x; x = f.next()) out.push(x); return out; } };
  });
}

describe('extended requests', () => {
  const write: RequestHeader = { ...cookieFrom(0x0102030405060708n), flags: CmdFlag.PAYLOAD_LEN | CmdFlag.FUA, type: Cmd.WRITE, offset: 2 ** 40, length: 5, extended: true };

  it('laid out as in proto.md: magic 0x21e41c71, flags, type, cookie, offset, 64-bit length', () => {
    expect(buildRequest(write)).toEqual(hex('21e41c71 | 0021 | 0001 | 0102030405060708 | 0000010000000000 | 0000000000000005'));
    const trim: RequestHeader = { ...cookieFrom(9n), flags: 0, type: Cmd.TRIM, offset: 0, length: 5 * 2 ** 30, extended: true };
    expect(buildRequest(trim)).toEqual(hex('21e41c71 | 0000 | 0004 | 0000000000000009 | 0000000000000000 | 0000000140000000'));
    // compact requests are unchanged: 28 bytes, 32-bit length
    expect(buildRequest({ ...write, extended: undefined, flags: 0 })).toHaveLength(28);
  });

  it('framed whatever the chunking: a payload exactly with PAYLOAD_LEN, 64-bit effect lengths', () => {
    const reqs: { req: RequestHeader; data?: Buffer }[] = [
      { req: write, data: Buffer.from('hello') },
      { req: { ...cookieFrom(2n), flags: CmdFlag.REQ_ONE, type: Cmd.BLOCK_STATUS, offset: 4096, length: 2 ** 33 + 512, extended: true } },
      { req: { ...cookieFrom(3n), flags: CmdFlag.NO_HOLE, type: Cmd.WRITE_ZEROES, offset: 2 ** 32, length: 2 ** 34, extended: true } },
      // a payload on a command that has no payload form: framed (the server then refuses it), the stream stays in sync
      { req: { ...cookieFrom(4n), flags: CmdFlag.PAYLOAD_LEN, type: Cmd.FLUSH, offset: 0, length: 3, extended: true }, data: Buffer.from('xyz') },
      // a WRITE without PAYLOAD_LEN carries nothing: its length is an effect length
      { req: { ...cookieFrom(5n), flags: 0, type: Cmd.WRITE, offset: 0, length: 4096, extended: true } },
      { req: { ...cookieFrom(6n), flags: 0, type: Cmd.DISC, offset: 0, length: 0, extended: true } },
    ];
    const stream = Buffer.concat(reqs.flatMap((r) => (r.data ? [buildRequest(r.req), r.data] : [buildRequest(r.req)])));
    const expected = reqs.map((r) => ({ kind: 'request', req: r.req, payload: r.data }));
    for (const got of frames(stream, { extended: true })) expect(got).toEqual(expected);
  });

  it('a compact request under extended headers is a bad magic, and framing stops', () => {
    const stream = Buffer.concat([buildRequest({ ...cookieFrom(1n), flags: 0, type: Cmd.READ, offset: 0, length: 512 }), Buffer.alloc(64)]);
    for (const got of frames(stream, { extended: true })) {
      expect(got).toHaveLength(1);
      expect(got[0]).toMatchObject({ kind: 'bad-magic', magic: 0x25609513 });
    }
  });

  it('an extended request without extended headers is a bad magic', () => {
    const stream = buildRequest({ ...cookieFrom(1n), flags: 0, type: Cmd.READ, offset: 0, length: 512, extended: true });
    for (const got of frames(stream, {})) expect(got).toEqual([expect.objectContaining({ kind: 'bad-magic', magic: 0x21e41c71 })]);
  });

  it('a payload length over the limit ends framing at once (nothing after the header is taken)', () => {
    const big: RequestHeader = { ...cookieFrom(7n), flags: CmdFlag.PAYLOAD_LEN, type: Cmd.WRITE, offset: 0, length: 2 ** 40, extended: true };
    const stream = Buffer.concat([buildRequest(big), Buffer.alloc(100)]);
    for (const got of frames(stream, { extended: true, maxPayload: 1 << 20 })) {
      expect(got).toEqual([{ kind: 'payload-too-big', req: big }]);
    }
    const f = new RequestFramer({ extended: true, maxPayload: 1 << 20 });
    f.push(stream);
    f.next();
    expect(f.next()).toBeUndefined();
  });
});

describe('extended replies', () => {
  it('chunk headers as in proto.md: magic 0x6e8a278c, flags, type, cookie, request offset, 64-bit length', () => {
    expect(chunkNone(ext(0xaabbn, 4096))).toEqual(hex('6e8a278c | 0001 | 0000 | 000000000000aabb | 0000000000001000 | 0000000000000000'));
    expect(chunkHole(ext(1n, 8192), false, 12288, 4096)).toEqual(hex(
      '6e8a278c | 0000 | 0002 | 0000000000000001 | 0000000000002000 | 000000000000000c | 0000000000003000 | 00001000'));
    // OFFSET_DATA: the header's offset is the request's, the payload's the data's
    expect(chunkDataHeader(ext(1n, 8192), true, 16384, 3)).toEqual(hex(
      '6e8a278c | 0001 | 0001 | 0000000000000001 | 0000000000002000 | 000000000000000b | 0000000000004000'));
    expect(chunkError(ext(2n, 0), 22, 'no')).toEqual(hex(
      '6e8a278c | 0001 | 8001 | 0000000000000002 | 0000000000000000 | 0000000000000008 | 00000016 | 0002 | 6e6f'));
    expect(chunkErrorOffset(ext(2n, 512), false, 5, '', 1024)).toEqual(hex(
      '6e8a278c | 0000 | 8002 | 0000000000000002 | 0000000000000200 | 000000000000000e | 00000005 | 0000 | 0000000000000400'));
  });

  it('BLOCK_STATUS_EXT: context id, descriptor count, then 64-bit lengths and 64-bit status', () => {
    const b = chunkBlockStatus(ext(3n, 0), true, 1, [{ length: 6 * 2 ** 30, flags: STATE_HOLE | STATE_ZERO }, { length: 4096, flags: 0 }]);
    expect(b).toEqual(hex(
      '6e8a278c | 0001 | 0006 | 0000000000000003 | 0000000000000000 | 0000000000000028 | 00000001 | 00000002' +
      '| 0000000180000000 | 0000000000000003 | 0000000000001000 | 0000000000000000'));
    // compact: BLOCK_STATUS, 32-bit fields
    expect(chunkBlockStatus(cookieFrom(3n), true, 1, [{ length: 4096, flags: 3 }])).toEqual(hex(
      '668e33ef | 0001 | 0005 | 0000000000000003 | 0000000c | 00000001 | 00001000 | 00000003'));
  });

  it('a READ reply header in front of its data: 40 bytes under extended headers', () => {
    expect(readReplyHeaderSize(true, true)).toBe(40);
    const b = Buffer.alloc(40 + 2);
    writeReadReplyHeader(b, true, ext(4n, 65536), 65536, 2);
    b.write('hi', 40);
    expect(b).toEqual(hex('6e8a278c | 0001 | 0001 | 0000000000000004 | 0000000000010000 | 000000000000000a | 0000000000010000 | 6869'));
  });

  const wire = [
    chunkDataHeader(ext(10n, 0), false, 0, 4), Buffer.from('abcd'),
    chunkHole(ext(10n, 0), true, 4, 4096),
    chunkBlockStatus(ext(11n, 2 ** 33), true, 0, [{ length: 2 ** 35, flags: STATE_HOLE }]),
    chunkErrorOffset(ext(12n, 512), false, 5, 'bad sector', 1024),
    chunkError(ext(12n, 512), 22, 'reading from file failed'),
    chunkNone(ext(13n, 7)),
  ];
  const chunk = (ck: bigint, offset: number, flags: number, c: unknown): DecodedReply =>
    ({ kind: 'chunk', ...cookieFrom(ck), flags, done: (flags & ReplyFlag.DONE) !== 0, chunk: c, offset } as DecodedReply);
  const expected: DecodedReply[] = [
    chunk(10n, 0, 0, { type: ReplyType.OFFSET_DATA, offset: 0, data: Buffer.from('abcd') }),
    chunk(10n, 0, ReplyFlag.DONE, { type: ReplyType.OFFSET_HOLE, offset: 4, length: 4096 }),
    chunk(11n, 2 ** 33, ReplyFlag.DONE, { type: ReplyType.BLOCK_STATUS_EXT, contextId: 0, extents: [{ length: 2 ** 35, flags: STATE_HOLE, flagsHi: 0 }] }),
    chunk(12n, 512, 0, { type: ReplyType.ERROR_OFFSET, error: 5, message: 'bad sector', offset: 1024 }),
    chunk(12n, 512, ReplyFlag.DONE, { type: ReplyType.ERROR, error: 22, message: 'reading from file failed' }),
    chunk(13n, 7, ReplyFlag.DONE, { type: ReplyType.NONE }),
  ];

  it('what the server builds, a client decodes, whatever the chunking', () => {
    const results = decodeEverySplit(Buffer.concat(wire), () => {
      const d = new ReplyDecoder({ readLength: () => { throw new Error('never asked under extended headers'); }, extended: true });
      return { push: (b: Buffer) => d.push(b), drain: () => { const out: DecodedReply[] = []; for (let x = d.next(); x; x = d.next()) out.push(x); return out; } };
    });
    for (const got of results) expect(got).toEqual(expected);
  });

  const decodeExt = (b: Buffer, maxPayload?: number) => {
    const d = new ReplyDecoder({ readLength: () => 0, extended: true, maxPayload });
    d.push(b);
    return d.next();
  };

  it('refuses simple and structured replies under extended headers', () => {
    expect(() => decodeExt(hex('67446698 00000000 0000000000000001 0000000000000000 0000000000000000'))).toThrow(/invalid reply magic 0x67446698/);
    expect(() => decodeExt(chunkNone(cookieFrom(1n)))).toThrow(/invalid reply magic 0x668e33ef/);
  });

  it('refuses an extended chunk without extended headers', () => {
    const d = new ReplyDecoder({ readLength: () => 0 });
    d.push(chunkNone(ext(1n, 0)));
    expect(() => d.next()).toThrow(/invalid reply magic 0x6e8a278c/);
  });

  it('refuses a 64-bit length over the limit as soon as the header is in', () => {
    const h = hex('6e8a278c 0001 0001 0000000000000001 0000000000000000 0000000100000008');
    expect(() => decodeExt(h)).toThrow(NbdProtocolError);
    expect(() => decodeExt(h)).toThrow(/length 4294967304 over the limit/);
  });

  it('status chunks must match the header style, and the descriptor count the length', () => {
    const compactStatus = Buffer.concat([hex('00000000'), hex('00001000 00000000')]);
    expect(() => parseChunkPayload(ReplyType.BLOCK_STATUS, compactStatus, true)).toThrow(/BLOCK_STATUS under extended headers/);
    const extStatus = hex('00000000 00000001 0000000000001000 0000000000000000');
    expect(parseChunkPayload(ReplyType.BLOCK_STATUS_EXT, extStatus, true)).toEqual({
      type: ReplyType.BLOCK_STATUS_EXT, contextId: 0, extents: [{ length: 4096, flags: 0, flagsHi: 0 }],
    });
    expect(() => parseChunkPayload(ReplyType.BLOCK_STATUS_EXT, extStatus, false)).toThrow(/BLOCK_STATUS_EXT without extended headers/);
    expect(() => parseChunkPayload(ReplyType.BLOCK_STATUS_EXT, hex('00000000 00000002 0000000000001000 0000000000000000'), true))
      .toThrow(/descriptor count 2 does not match length 24/);
    expect(() => parseChunkPayload(ReplyType.BLOCK_STATUS_EXT, hex('00000000 00000000'), true)).toThrow(/at least one/);
    expect(() => parseChunkPayload(ReplyType.BLOCK_STATUS_EXT, hex('00000000 00000001 0000000000001000 00000000'), true)).toThrow(/8 \+ 16 per extent/);
  });

  it('an extended reply header needs the request offset', () => {
    expect(() => chunkNone({ ...cookieFrom(1n), extended: true })).toThrow(/needs the request offset/);
  });
});
