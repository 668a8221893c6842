/**
 * src/nbd-protocol transmission codecs: requests (built by a client, framed by
 * the server) and replies (built by the server, decoded by a client):
 * crafted bytes as doc/proto.md lays them out, round trips, every split, and
 * malformed replies rejected with a clear error.
 */
import { describe, it, expect } from 'vitest';
import { Cmd, CmdFlag, ReplyFlag, ReplyType, STATE_HOLE, STATE_ZERO } from '../../src/nbd-protocol/constants.ts';
import { NbdProtocolError } from '../../src/nbd-protocol/errors.ts';
import { RequestFramer, type Frame } from '../../src/nbd-protocol/request-framer.ts';
import { buildRequest, cookieFrom, cookieOf, type Cookie, type RequestHeader } from '../../src/nbd-protocol/requests.ts';
import {
  chunkBlockStatus, chunkDataHeader, chunkError, chunkErrorOffset, chunkHole, chunkNone, parseChunkPayload, readReplyHeaderSize,
  simpleReply, writeReadReplyHeader,
} from '../../src/nbd-protocol/replies.ts';
import { ReplyDecoder, type DecodedReply } from '../../src/nbd-protocol/reply-decoder.ts';
import { decodeEverySplit } from '../helpers/split.ts';

const hex = (s: string) => Buffer.from(s.replace(/[\s|]/g, ''), 'hex');
const c = (v: bigint): Cookie => cookieFrom(v);

describe('requests', () => {
  const reqs: { req: RequestHeader; data?: Buffer }[] = [
    { req: { ...c(1n), flags: 0, type: Cmd.READ, offset: 4096, length: 512 } },
    { req: { ...c(0xfedcba9876543210n), flags: CmdFlag.FUA, type: Cmd.WRITE, offset: 2 ** 40, length: 5 }, data: Buffer.from('hello') },
    { req: { ...c(3n), flags: CmdFlag.REQ_ONE, type: Cmd.BLOCK_STATUS, offset: 0, length: 65536 } },
    { req: { ...c(4n), flags: 0, type: Cmd.DISC, offset: 0, length: 0 } },
  ];

  it('laid out as in proto.md: magic, flags, type, cookie, offset, length', () => {
    expect(buildRequest(reqs[1].req)).toEqual(hex('25609513 | 0001 | 0001 | fedcba9876543210 | 0000010000000000 | 00000005'));
    expect(cookieOf(reqs[1].req)).toBe(0xfedcba9876543210n);
  });

  it('what a client builds, the server frames, whatever the chunking', () => {
    const stream = Buffer.concat(reqs.flatMap((r) => (r.data ? [buildRequest(r.req), r.data] : [buildRequest(r.req)])));
    const expected = reqs.map((r) => ({ kind: 'request', req: r.req, payload: r.data }));
    const results = decodeEverySplit(stream, () => {
      const f = new RequestFramer();
      return { push: (b: Buffer) => f.push(b), drain: () => { const out: Frame[] = []; for (let x = f.next(); x; x = f.next()) out.push(x); return out; } };
    });
    for (const got of results) expect(got).toEqual(expected);
  });
});

describe('replies', () => {
  const readData = Buffer.from('0123456789abcdef');
  /** The client's table of requests in flight: cookie → READ length. */
  const reads = new Map<bigint, number>([[10n, readData.length], [11n, 4]]);
  const readLength = (k: Cookie) => reads.get(cookieOf(k)) ?? 0;

  const readReply = (() => {
    const b = Buffer.alloc(readReplyHeaderSize(false) + readData.length);
    writeReadReplyHeader(b, false, c(10n), 0, readData.length);
    readData.copy(b, 16);
    return b;
  })();
  const structuredRead = (() => {
    const b = Buffer.alloc(readReplyHeaderSize(true) + 4);
    writeReadReplyHeader(b, true, c(12n), 8192, 4);
    b.write('wxyz', 28);
    return b;
  })();
  const wire = [
    readReply,
    simpleReply(c(11n), 5), // an error to a READ: no data follows
    simpleReply(c(20n), 0), // a FLUSH
    structuredRead,
    chunkDataHeader(c(13n), false, 100, 3), Buffer.from('abc'),
    chunkHole(c(13n), false, 103, 4096),
    chunkBlockStatus(c(14n), false, 0, [{ length: 4096, flags: STATE_HOLE | STATE_ZERO }, { length: 512, flags: 0 }]),
    chunkBlockStatus(c(14n), true, 2, [{ length: 0xffffffff, flags: 1 }]),
    chunkErrorOffset(c(13n), false, 5, 'bad sector', 4200),
    chunkError(c(13n), 22, 'reading from file failed'),
    chunkNone(c(15n)),
  ];
  const chunkOf = (ck: bigint, flags: number, chunk: unknown): DecodedReply =>
    ({ kind: 'chunk', ...c(ck), flags, done: (flags & ReplyFlag.DONE) !== 0, chunk } as DecodedReply);
  const expected: DecodedReply[] = [
    { kind: 'simple', ...c(10n), error: 0, data: readData },
    { kind: 'simple', ...c(11n), error: 5, data: undefined },
    { kind: 'simple', ...c(20n), error: 0, data: undefined },
    chunkOf(12n, 1, { type: ReplyType.OFFSET_DATA, offset: 8192, data: Buffer.from('wxyz') }),
    chunkOf(13n, 0, { type: ReplyType.OFFSET_DATA, offset: 100, data: Buffer.from('abc') }),
    chunkOf(13n, 0, { type: ReplyType.OFFSET_HOLE, offset: 103, length: 4096 }),
    chunkOf(14n, 0, { type: ReplyType.BLOCK_STATUS, contextId: 0, extents: [{ length: 4096, flags: 3 }, { length: 512, flags: 0 }] }),
    chunkOf(14n, 1, { type: ReplyType.BLOCK_STATUS, contextId: 2, extents: [{ length: 0xffffffff, flags: 1 }] }),
    chunkOf(13n, 0, { type: ReplyType.ERROR_OFFSET, error: 5, message: 'bad sector', offset: 4200 }),
    chunkOf(13n, 1, { type: ReplyType.ERROR, error: 22, message: 'reading from file failed' }),
    chunkOf(15n, 1, { type: ReplyType.NONE }),
  ];

  function decoder() {
    const d = new ReplyDecoder({ readLength });
    return { push: (b: Buffer) => d.push(b), drain: () => { const out: DecodedReply[] = []; for (let r = d.next(); r; r = d.next()) out.push(r); return out; } };
  }

  it('laid out as in proto.md', () => {
    expect(simpleReply(c(0x0102030405060708n), 22)).toEqual(hex('67446698 | 00000016 | 0102030405060708'));
    expect(chunkHole(c(7n), true, 4096, 512)).toEqual(hex('668e33ef | 0001 | 0002 | 0000000000000007 | 0000000c | 0000000000001000 | 00000200'));
    expect(chunkDataHeader(c(7n), false, 1, 2)).toEqual(hex('668e33ef 0000 0001 0000000000000007 0000000a 0000000000000001'));
    expect(chunkBlockStatus(c(7n), true, 1, [{ length: 4096, flags: 2 }])).toEqual(
      hex('668e33ef 0001 0005 0000000000000007 0000000c | 00000001 | 00001000 00000002'));
    expect(chunkError(c(7n), 5, 'x')).toEqual(hex('668e33ef 0001 8001 0000000000000007 00000007 | 00000005 | 0001 | 78'));
    expect(chunkErrorOffset(c(7n), true, 5, 'x', 9)).toEqual(hex('668e33ef 0001 8002 0000000000000007 0000000f | 00000005 0001 78 | 0000000000000009'));
    expect(chunkNone(c(7n))).toEqual(hex('668e33ef 0001 0000 0000000000000007 00000000'));
  });

  it('what the server builds, a client decodes, whatever the chunking', () => {
    const stream = Buffer.concat(wire);
    for (const got of decodeEverySplit(stream, decoder)) expect(got).toEqual(expected);
  });

  it('an error chunk message is cut to 4096 bytes', () => {
    const p = chunkError(c(1n), 5, 'm'.repeat(5000));
    expect(parseChunkPayload(ReplyType.ERROR, p.subarray(20))).toMatchObject({ error: 5, message: 'm'.repeat(4096) });
  });

  it('unknown types: errors keep the error layout, others their bytes', () => {
    expect(parseChunkPayload(0x8005, hex('00000005 0002 6869 ff'))).toEqual({ type: 0x8005, error: 5, message: 'hi' });
    expect(parseChunkPayload(9, hex('0102'))).toEqual({ type: 9, unknown: hex('0102') });
  });

  it('rejects bad magic, oversize chunks and payloads that do not fit their type', () => {
    const d = new ReplyDecoder({ readLength });
    d.push(hex('67446699 00000000 0000000000000001'));
    expect(() => d.next()).toThrow('invalid reply magic 0x67446699');
    const big = new ReplyDecoder({ readLength, maxPayload: 1024 });
    big.push(hex('668e33ef 0001 0001 0000000000000001 00000401'));
    expect(() => big.next()).toThrow(new NbdProtocolError('structured reply chunk length 1025 over the limit of 1024'));
    const cases: [number, string, RegExp][] = [
      [ReplyType.NONE, '00', /type 0: length 1, expected 0/],
      [ReplyType.OFFSET_DATA, '0000000000000000', /type 1: length 8, expected more than 8/],
      [ReplyType.OFFSET_HOLE, '0000000000000000 000001', /type 2: length 11, expected 12/],
      [ReplyType.OFFSET_HOLE, '0000000000000000 00000000', /type 2: hole of length 0/],
      [ReplyType.BLOCK_STATUS, '00000000 00001000', /type 5: length 8, expected 4 \+ 8 per extent/],
      [ReplyType.BLOCK_STATUS, '00000000 00001000 00000000 00', /type 5: length 13/],
      [ReplyType.ERROR, '00000005 00', /type 32769: length 5, expected at least 6/],
      [ReplyType.ERROR, '00000000 0000', /error value 0/],
      [ReplyType.ERROR, '00000005 0003 6869', /length 8 does not fit a message of 3 bytes/],
      [ReplyType.ERROR_OFFSET, '00000005 0002 6869 00000000', /length 12 does not fit a message of 2 bytes/],
      [ReplyType.ERROR, '00000005 1001', /message length 4097 over 4096/],
    ];
    for (const [type, payload, msg] of cases) expect(() => parseChunkPayload(type, hex(payload)), `${type} ${payload}`).toThrow(msg);
  });
});
