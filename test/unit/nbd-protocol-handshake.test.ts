/**
 * src/nbd-protocol handshake and option codecs, both directions: crafted bytes
 * laid out as doc/proto.md says, build → parse round trips, every decoder fed
 * its input split at every byte, and malformed input rejected with a clear error.
 */
import { describe, it, expect } from 'vitest';
import { ByteQueue } from '../../src/nbd-protocol/byte-queue.ts';
import { FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, Info, MAX_PAYLOAD, Opt, Rep } from '../../src/nbd-protocol/constants.ts';
import { NbdProtocolError } from '../../src/nbd-protocol/errors.ts';
import {
  buildClientFlags, buildExportNameReply, buildGreeting, decodeClientFlags, decodeExportNameReply, decodeGreeting, parseGreeting,
} from '../../src/nbd-protocol/handshake.ts';
import {
  BadOptionMagic, OptionDataReader, buildExportNameData, buildInfoRequestData, buildMetaContextRequestData, buildOptionRequest,
  decodeOptionHeader, decodeOptionRequest, parseExportNameData, parseInfoRequestData, parseMetaContextRequestData,
} from '../../src/nbd-protocol/option-requests.ts';
import {
  buildInfoPayload, buildMetaContextPayload, buildOptionError, buildOptionReply, buildServerPayload, decodeOptionReply,
  isErrorReply, parseErrorPayload, parseInfoPayload, parseMetaContextPayload, parseServerPayload, type InfoItem, type OptionReply,
} from '../../src/nbd-protocol/option-replies.ts';
import { decodeEverySplit } from '../helpers/split.ts';

const hex = (s: string) => Buffer.from(s.replace(/[\s|]/g, ''), 'hex');
const IHAVEOPT_HEX = '49484156454f5054';
const REPLY_MAGIC_HEX = '0003e889045565a9';

/** A decoder over a ByteQueue, as the split helper wants it. */
function queueDecoder<T>(decode: (q: ByteQueue) => T | undefined) {
  return () => {
    const q = new ByteQueue();
    return { push: (b: Buffer) => q.push(b), drain: () => { const out: T[] = []; for (let m = decode(q); m !== undefined; m = decode(q)) out.push(m); return out; } };
  };
}

function expectEverySplit<T>(bytes: Buffer, decode: (q: ByteQueue) => T | undefined, expected: T[]): void {
  for (const got of decodeEverySplit(bytes, queueDecoder(decode))) expect(got).toEqual(expected);
}

describe('ByteQueue', () => {
  it('reads in place within a chunk and from a copy across chunks', () => {
    const q = new ByteQueue(8);
    const a = Buffer.from('abcdef');
    q.push(a);
    q.push(Buffer.from('ghij'));
    const r1 = q.read(4);
    expect(r1).toBe(a);
    expect(q.at).toBe(0);
    const r2 = q.read(4); // 'efgh' spans chunks
    expect(r2.toString('latin1', q.at, q.at + 4)).toBe('efgh');
    expect(q.length).toBe(2);
    expect(q.peek(2).toString('latin1', q.at, q.at + 2)).toBe('ij');
    expect(q.length).toBe(2);
    expect(q.take(2).toString()).toBe('ij');
    expect(q.length).toBe(0);
  });

  it('view() is a view only within one chunk; take() copies across; skip() and retain()', () => {
    const q = new ByteQueue();
    const a = Buffer.from('0123');
    q.push(a);
    q.push(Buffer.from('4567'));
    const v = q.view(2)!;
    expect(v.buffer).toBe(a.buffer);
    expect(q.view(4)).toBeUndefined();
    expect(q.length).toBe(6);
    expect(q.take(4).toString()).toBe('2345');
    q.retain();
    a.fill(0);
    expect(q.discard(10)).toBe(2);
    q.push(Buffer.from('xy'));
    q.clear();
    expect(q.length).toBe(0);
  });
});

describe('greeting, client flags, EXPORT_NAME reply', () => {
  const greeting = hex(`4e42444d41474943 | ${IHAVEOPT_HEX} | 0003`);

  it('greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags', () => {
    expect(buildGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)).toEqual(greeting);
    expect(parseGreeting(greeting)).toEqual({ handshakeFlags: 3 });
    expectEverySplit(Buffer.concat([greeting, hex('ff')]), decodeGreeting, [{ handshakeFlags: 3 }]);
  });

  it('refuses what is not a newstyle greeting', () => {
    expect(() => parseGreeting(hex(`4e42444d41474945 ${IHAVEOPT_HEX} 0003`))).toThrow(/bad greeting magic: not an NBD server/);
    expect(() => parseGreeting(hex('4e42444d41474943 0000420281861253 0000'))).toThrow(/oldstyle negotiation is not supported/);
    expect(() => parseGreeting(hex('4e42444d41474943 1111111111111111 0000'))).toThrow(NbdProtocolError);
  });

  it('client flags: 32 bits', () => {
    expect(buildClientFlags(3)).toEqual(hex('00000003'));
    expectEverySplit(hex('00000001 80000002'), decodeClientFlags, [1, 0x80000002]);
  });

  it('EXPORT_NAME reply: u64 size, u16 flags, 124 zeroes unless NO_ZEROES', () => {
    const info = { size: 2 ** 40 + 512, transmissionFlags: 0x1ed };
    const short = hex('0000010000000200 01ed');
    expect(buildExportNameReply(info, true)).toEqual(short);
    const long = buildExportNameReply(info, false);
    expect(long).toEqual(Buffer.concat([short, Buffer.alloc(124)]));
    expectEverySplit(Buffer.concat([short, short]), (q) => decodeExportNameReply(q, true), [info, info]);
    expectEverySplit(long, (q) => decodeExportNameReply(q, false), [info]);
  });
});

describe('option requests', () => {
  const info = { name: 'disk0', requests: [Info.NAME, Info.BLOCK_SIZE] };
  const meta = { exportName: 'e', queries: ['base:allocation', 'qemu:dirty-bitmap:'] };
  const options: { option: number; data: Buffer }[] = [
    { option: Opt.STRUCTURED_REPLY, data: Buffer.alloc(0) },
    { option: Opt.LIST, data: Buffer.alloc(0) },
    { option: Opt.STARTTLS, data: Buffer.alloc(0) },
    { option: Opt.LIST_META_CONTEXT, data: buildMetaContextRequestData(meta) },
    { option: Opt.SET_META_CONTEXT, data: buildMetaContextRequestData({ exportName: 'e', queries: [] }) },
    { option: Opt.INFO, data: buildInfoRequestData(info) },
    { option: Opt.GO, data: buildInfoRequestData({ name: '', requests: [] }) },
    { option: Opt.EXPORT_NAME, data: buildExportNameData('ünïcode') },
    { option: Opt.ABORT, data: Buffer.alloc(0) },
  ];
  const stream = Buffer.concat(options.map((o) => buildOptionRequest(o.option, o.data)));

  it('GO laid out as in proto.md: header, name length, name, info request count, requests', () => {
    const bytes = hex(`${IHAVEOPT_HEX} | 00000007 | 0000000f | 00000005 | 6469736b30 | 0002 | 0001 0003`);
    expect(buildOptionRequest(Opt.GO, buildInfoRequestData(info))).toEqual(bytes);
    const q = new ByteQueue();
    q.push(bytes);
    const o = decodeOptionRequest(q)!;
    expect(o.option).toBe(Opt.GO);
    expect(parseInfoRequestData(o.data, o.option)).toEqual(info);
  });

  it('SET_META_CONTEXT laid out as in proto.md: name, query count, length-prefixed queries', () => {
    const bytes = hex('00000001 65 | 00000002 | 0000000f 626173653a616c6c6f636174696f6e | 00000012 71656d753a64697274792d6269746d61703a');
    expect(buildMetaContextRequestData(meta)).toEqual(bytes);
    expect(parseMetaContextRequestData(bytes, Opt.SET_META_CONTEXT)).toEqual(meta);
  });

  it('round-trips every option, whatever the chunking', () => {
    expectEverySplit(stream, (q) => decodeOptionRequest(q), options);
    const parsed = options.map((o) => {
      if (o.option === Opt.INFO || o.option === Opt.GO) return parseInfoRequestData(o.data, o.option);
      if (o.option === Opt.LIST_META_CONTEXT || o.option === Opt.SET_META_CONTEXT) return parseMetaContextRequestData(o.data, o.option);
      if (o.option === Opt.EXPORT_NAME) return parseExportNameData(o.data);
      return o.data.length;
    });
    expect(parsed).toEqual([0, 0, 0, meta, { exportName: 'e', queries: [] }, info, { name: '', requests: [] }, 'ünïcode', 0]);
  });

  it('headers alone decode at every split, leaving the data queued', () => {
    const one = buildOptionRequest(Opt.INFO, buildInfoRequestData(info));
    expectEverySplit(one.subarray(0, 16), decodeOptionHeader, [{ option: Opt.INFO, length: one.length - 16 }]);
  });

  it('rejects a bad magic and an oversize length as soon as the header is in', () => {
    const q = new ByteQueue();
    q.push(hex('4948415645 4f5055 00000001 00000000'));
    expect(() => decodeOptionHeader(q)).toThrow(BadOptionMagic);
    expect(() => decodeOptionRequest(q)).toThrow(/bad option magic 0x49484156454f5055/);
    const big = new ByteQueue();
    big.push(hex(`${IHAVEOPT_HEX} 00000001 02000001`));
    expect(() => decodeOptionRequest(big)).toThrow(`option 1 data length ${MAX_PAYLOAD + 1} over the limit of ${MAX_PAYLOAD}`);
    expect(decodeOptionRequest(big, MAX_PAYLOAD + 1)).toBeUndefined();
  });

  it('malformed data gives qemu\'s texts', () => {
    const go = Opt.GO;
    expect(() => parseInfoRequestData(hex('00000005 6469'), go)).toThrow('Inconsistent lengths in option go');
    expect(() => parseInfoRequestData(hex('00001001'), go)).toThrow('Invalid name length: 4097');
    expect(() => parseInfoRequestData(hex('00000002 6100 0000'), go)).toThrow('Unexpected embedded NUL in option go');
    expect(() => parseInfoRequestData(hex('00000000 0001'), go)).toThrow('Inconsistent lengths in option go');
    expect(() => parseInfoRequestData(hex('00000000 0000 ff'), go)).toThrow("option 'go' has unexpected length");
    expect(() => parseMetaContextRequestData(hex('00000000 00000001 00000004 6162'), Opt.LIST_META_CONTEXT)).toThrow('Inconsistent lengths in option list meta context');
    expect(() => parseExportNameData(Buffer.alloc(4097))).toThrow(NbdProtocolError);
    // A query over 4096 bytes is skipped, not refused (qemu).
    const long = Buffer.alloc(4097, 0x61);
    const data = Buffer.concat([hex('00000000 00000002 00001001'), long, hex('00000002 6162')]);
    expect(parseMetaContextRequestData(data, Opt.SET_META_CONTEXT)).toEqual({ exportName: '', queries: ['ab'] });
    const r = new OptionDataReader(hex('0001'), go);
    expect(r.u16()).toBe(1);
    expect(() => r.u16()).toThrow(NbdProtocolError);
  });
});

describe('option replies', () => {
  const items: InfoItem[] = [
    { type: Info.EXPORT, size: 2 ** 33 + 1, transmissionFlags: 0x4ed },
    { type: Info.NAME, name: 'disk0' },
    { type: Info.DESCRIPTION, description: 'a désc' },
    { type: Info.BLOCK_SIZE, minimum: 512, preferred: 4096, maximum: 32 << 20 },
    { type: 77, unknown: hex('0102') },
  ];
  const replies: OptionReply[] = [
    { option: Opt.STRUCTURED_REPLY, type: Rep.ACK, payload: Buffer.alloc(0) },
    { option: Opt.LIST, type: Rep.SERVER, payload: buildServerPayload('disk0', 'the first disk') },
    { option: Opt.LIST, type: Rep.SERVER, payload: buildServerPayload('', '') },
    ...items.map((i) => ({ option: Opt.GO, type: Rep.INFO, payload: buildInfoPayload(i) })),
    { option: Opt.SET_META_CONTEXT, type: Rep.META_CONTEXT, payload: buildMetaContextPayload(2, 'qemu:dirty-bitmap:b0') },
    { option: Opt.STARTTLS, type: Rep.ERR_POLICY, payload: Buffer.from('TLS not configured') },
    { option: 99, type: Rep.ERR_UNSUP, payload: Buffer.alloc(0) },
  ];
  const stream = Buffer.concat(replies.map((r) => buildOptionReply(r.option, r.type, r.payload)));

  it('laid out as in proto.md: magic, option, type, length, payload', () => {
    expect(buildOptionReply(Opt.GO, Rep.ACK)).toEqual(hex(`${REPLY_MAGIC_HEX} 00000007 00000001 00000000`));
    expect(buildOptionReply(Opt.GO, Rep.INFO, buildInfoPayload(items[3]))).toEqual(
      hex(`${REPLY_MAGIC_HEX} 00000007 00000003 0000000e | 0003 00000200 00001000 02000000`));
    expect(buildOptionReply(Opt.GO, Rep.INFO, buildInfoPayload(items[0]))).toEqual(
      hex(`${REPLY_MAGIC_HEX} 00000007 00000003 0000000c | 0000 0000000200000001 04ed`));
    expect(buildServerPayload('ab', 'c')).toEqual(hex('00000002 6162 63'));
    expect(buildMetaContextPayload(1, 'x')).toEqual(hex('00000001 78'));
    expect(buildOptionError(Opt.STARTTLS, Rep.ERR_POLICY, 'no')).toEqual(hex(`${REPLY_MAGIC_HEX} 00000005 80000002 00000002 6e6f`));
  });

  it('round-trips every reply and payload, whatever the chunking', () => {
    expectEverySplit(stream, (q) => decodeOptionReply(q), replies);
    expect(parseServerPayload(replies[1].payload)).toEqual({ name: 'disk0', description: 'the first disk' });
    expect(parseServerPayload(replies[2].payload)).toEqual({ name: '', description: '' });
    expect(items.map((_, i) => parseInfoPayload(replies[3 + i].payload))).toEqual(items);
    expect(parseMetaContextPayload(replies[8].payload)).toEqual({ id: 2, name: 'qemu:dirty-bitmap:b0' });
    expect(isErrorReply(replies[9].type) && parseErrorPayload(replies[9].payload)).toBe('TLS not configured');
    expect(isErrorReply(Rep.ACK)).toBe(false);
  });

  it('rejects bad magic, oversize lengths and payloads too short for their layout', () => {
    const q = new ByteQueue();
    q.push(hex('0003e889045565aa 00000001 00000001 00000000'));
    expect(() => decodeOptionReply(q)).toThrow('bad option reply magic 0x3e889045565aa');
    const big = new ByteQueue();
    big.push(hex(`${REPLY_MAGIC_HEX} 00000001 00000001 00000101`));
    expect(() => decodeOptionReply(big, 256)).toThrow('option reply length 257 over the limit of 256');
    expect(() => parseServerPayload(hex('000000'))).toThrow(/too short for its name length/);
    expect(() => parseServerPayload(hex('00000005 6162'))).toThrow('NBD_REP_SERVER name length 5 over the 2 bytes left');
    expect(() => parseInfoPayload(hex('00'))).toThrow(/too short for its type/);
    expect(() => parseInfoPayload(hex('0000 0000000000000001'))).toThrow('NBD_REP_INFO NBD_INFO_EXPORT of 10 bytes, expected 12');
    expect(() => parseInfoPayload(hex('0003 00000200 00001000'))).toThrow('NBD_REP_INFO NBD_INFO_BLOCK_SIZE of 10 bytes, expected 14');
    expect(() => parseMetaContextPayload(hex('000000'))).toThrow(/too short for its id/);
  });
});
