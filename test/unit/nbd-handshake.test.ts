/** The negotiation state machine, driven with bytes and no socket. */
import { describe, it, expect, beforeAll } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { ExportRegistry } from '../helpers/exports.ts';
import { Handshake, HANDSHAKE_STATES, OPTION_BUFFER_LIMIT, type HandshakeState, type HandshakeStep } from '../../src/nbd/handshake.ts';
import type { NegotiationEnv } from '../../src/nbd/options.ts';
import { IHAVEOPT, Info, Opt, REPLY_MAGIC, Rep, TxFlag } from '../../src/nbd-protocol/constants.ts';
import { memDriver } from '../helpers/nbd.ts';

let env: NegotiationEnv;
let registry: ExportRegistry;

beforeAll(async () => {
  const graph = new BlockGraph();
  graph.register(memDriver());
  await graph.add({ driver: 'mem', 'node-name': 'disk', size: 1 << 20 });
  await graph.add({ driver: 'mem', 'node-name': 'aligned', size: 1 << 20, align: 512 });
  registry = new ExportRegistry();
  registry.add(graph, { id: 'e0', nodeName: 'disk', writable: true, description: 'the disk', allocationDepth: true });
  registry.add(graph, { id: 'e1', nodeName: 'disk', name: 'ro' });
  registry.add(graph, { id: 'e2', nodeName: 'aligned' });
  env = { findExport: (n) => registry.byName(n), listExports: () => registry.list(), multiConn: true };
});

const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; };
const u16 = (n: number) => { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; };
const str = (s: string) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);

function option(opt: number, data: Buffer = Buffer.alloc(0), length = data.length): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(length, 12);
  return Buffer.concat([h, data]);
}
const infoData = (name: string, reqs: number[] = []) => Buffer.concat([str(name), u16(reqs.length), ...reqs.map(u16)]);
const metaData = (name: string, queries: string[]) => Buffer.concat([str(name), u32(queries.length), ...queries.map(str)]);

interface Reply { opt: number; type: number; payload: Buffer }
function parseReplies(b: Buffer): Reply[] {
  const out: Reply[] = [];
  for (let p = 0; p < b.length;) {
    expect(b.readBigUInt64BE(p)).toBe(REPLY_MAGIC);
    const len = b.readUInt32BE(p + 16);
    out.push({ opt: b.readUInt32BE(p + 8), type: b.readUInt32BE(p + 12), payload: b.subarray(p + 20, p + 20 + len) });
    p += 20 + len;
  }
  return out;
}

/**
 * Runs a whole negotiation; returns the replies (not the greeting), the
 * outcome, and what transmission gets: the handshake's leftover plus any
 * later pieces (which the connection hands to the framer).
 */
function negotiate(input: Buffer, pieces: number[] = []): { replies: Buffer; done?: HandshakeStep['done']; hs: Handshake; after: string } {
  const hs = new Handshake(env);
  const sent: Buffer[] = [];
  let done: HandshakeStep['done'];
  let at = 0;
  let after = '';
  for (const cut of [...pieces, input.length]) {
    const piece = input.subarray(at, cut);
    at = cut;
    if (done) { after += piece.toString(); continue; }
    const step = hs.push(piece);
    sent.push(...step.send);
    done = step.done;
    if (done?.kind === 'transmission') after += done.rest.toString();
  }
  return { replies: Buffer.concat(sent), done, hs, after };
}

const FIXED = u32(1);
const FIXED_NOZ = u32(3);

describe('handshake state machine', () => {
  it('is a table: every move names a known state, and only closed is terminal', () => {
    const states = Object.keys(HANDSHAKE_STATES) as HandshakeState[];
    for (const s of states) for (const n of HANDSHAKE_STATES[s].next) expect(states).toContain(n);
    expect(HANDSHAKE_STATES.closed.next).toEqual([]);
    expect(HANDSHAKE_STATES.transmission.next).toEqual(['closed']);
    for (const s of states) if (s !== 'closed') expect(HANDSHAKE_STATES[s].next).toContain('closed');
  });

  it('sends the fixed newstyle greeting with NO_ZEROES', () => {
    const g = new Handshake(env).greeting();
    expect(g.subarray(0, 8).toString()).toBe('NBDMAGIC');
    expect(g.readBigUInt64BE(8)).toBe(IHAVEOPT);
    expect(g.readUInt16BE(16)).toBe(3);
    expect(g.length).toBe(18);
  });

  it('refuses input once negotiation is over, naming the state', () => {
    const { hs } = negotiate(Buffer.concat([FIXED, option(Opt.ABORT)]));
    expect(hs.state).toBe('closed');
    expect(() => hs.push(Buffer.alloc(1))).toThrow(/state 'closed'/);
  });

  const go = Buffer.concat([
    FIXED_NOZ,
    option(Opt.STRUCTURED_REPLY),
    option(Opt.LIST),
    option(Opt.SET_META_CONTEXT, metaData('disk', ['base:allocation', 'qemu:allocation-depth'])),
    option(Opt.GO, infoData('disk', [Info.NAME, Info.BLOCK_SIZE])),
    Buffer.from('after'),
  ]);

  it('negotiates GO with structured replies and contexts; bytes after GO are handed on', () => {
    const { replies, done, hs } = negotiate(go);
    expect(hs.state).toBe('transmission');
    expect(done?.kind).toBe('transmission');
    if (done?.kind !== 'transmission') return;
    expect(done.rest.toString()).toBe('after');
    expect(done.negotiated.exp.name).toBe('disk');
    expect(done.negotiated.structured).toBe(true);
    expect(done.negotiated.contexts.map((c) => [c.name, c.id])).toEqual([['base:allocation', 0], ['qemu:allocation-depth', 1]]);
    expect(done.negotiated.honoursBlockSize).toBe(true);
    const r = parseReplies(replies).map((x) => [x.opt, x.type, x.type === Rep.INFO ? x.payload.readUInt16BE(0) : x.payload.length]);
    expect(r).toEqual([
      [Opt.STRUCTURED_REPLY, Rep.ACK, 0],
      [Opt.LIST, Rep.SERVER, 4 + 4 + 8], [Opt.LIST, Rep.SERVER, 4 + 2], [Opt.LIST, Rep.SERVER, 4 + 7], [Opt.LIST, Rep.ACK, 0],
      [Opt.SET_META_CONTEXT, Rep.META_CONTEXT, 4 + 15], [Opt.SET_META_CONTEXT, Rep.META_CONTEXT, 4 + 21], [Opt.SET_META_CONTEXT, Rep.ACK, 0],
      [Opt.GO, Rep.INFO, Info.NAME], [Opt.GO, Rep.INFO, Info.DESCRIPTION], [Opt.GO, Rep.INFO, Info.BLOCK_SIZE], [Opt.GO, Rep.INFO, Info.EXPORT],
      [Opt.GO, Rep.ACK, 0],
    ]);
    const exportInfo = parseReplies(replies).find((x) => x.type === Rep.INFO && x.payload.readUInt16BE(0) === Info.EXPORT)!.payload;
    expect(Number(exportInfo.readBigUInt64BE(2))).toBe(1 << 20);
    expect(exportInfo.readUInt16BE(10)).toBe(TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_CACHE |
      TxFlag.CAN_MULTI_CONN | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO | TxFlag.SEND_DF);
  });

  it('gives the same result for every split of the input into two pieces', () => {
    const whole = negotiate(go);
    for (let i = 0; i <= go.length; i++) {
      const r = negotiate(go, [i]);
      expect(r.replies.equals(whole.replies), `split at ${i}`).toBe(true);
      expect(r.done?.kind).toBe('transmission');
      expect(r.after).toBe('after');
    }
  });

  it('gives the same result fed one byte at a time', () => {
    const whole = negotiate(go);
    const r = negotiate(go, Array.from({ length: go.length }, (_, i) => i));
    expect(r.replies.equals(whole.replies)).toBe(true);
  });

  it('EXPORT_NAME: size, flags and 124 zero bytes unless the client set NO_ZEROES', () => {
    const a = negotiate(Buffer.concat([FIXED, option(Opt.EXPORT_NAME, Buffer.from('ro'))]));
    expect(a.replies.length).toBe(134);
    expect(a.replies.readUInt16BE(8) & TxFlag.READ_ONLY).toBeTruthy();
    expect(a.replies.readUInt16BE(8) & TxFlag.SEND_DF).toBe(0);
    expect(a.replies.subarray(10).equals(Buffer.alloc(124))).toBe(true);
    const b = negotiate(Buffer.concat([FIXED_NOZ, option(Opt.EXPORT_NAME, Buffer.from('ro'))]));
    expect(b.replies.length).toBe(10);
    expect(b.done?.kind).toBe('transmission');
  });

  it('EXPORT_NAME of an unknown export closes the connection (there is no way to answer)', () => {
    const r = negotiate(Buffer.concat([FIXED, option(Opt.EXPORT_NAME, Buffer.from('nope'))]));
    expect(r.done).toEqual({ kind: 'close', reason: 'export not found', clean: false });
  });

  it('old (non-fixed) newstyle clients may only send EXPORT_NAME', () => {
    expect(negotiate(Buffer.concat([u32(0), option(Opt.EXPORT_NAME, Buffer.from('disk'))])).done?.kind).toBe('transmission');
    const r = negotiate(Buffer.concat([u32(0), option(Opt.LIST)]));
    expect(r.done?.kind).toBe('close');
    expect(r.replies.length).toBe(0);
  });

  const closes: [string, Buffer, RegExp][] = [
    ['unknown client flags', u32(0x80000001), /Unknown client flags 0x80000000 received/],
    ['a bad option magic', Buffer.concat([FIXED, Buffer.from('NOTMAGIC\0\0\0\x07\0\0\0\0')]), /Bad magic received/],
    ['option data over 32 MiB', Buffer.concat([FIXED, option(Opt.LIST, Buffer.alloc(0), (32 << 20) + 1)]), /is larger than max len/],
    ['an export name over 4096 bytes', Buffer.concat([FIXED, option(Opt.EXPORT_NAME, Buffer.alloc(0), 4097)]), /Bad length received/],
  ];
  for (const [what, input, reason] of closes) {
    it(`closes on ${what}`, () => {
      const r = negotiate(input);
      expect(r.done?.kind).toBe('close');
      if (r.done?.kind === 'close') expect(r.done.reason).toMatch(reason);
    });
  }

  it('ABORT: acknowledged, then a clean close', () => {
    const r = negotiate(Buffer.concat([FIXED, option(Opt.ABORT)]));
    expect(parseReplies(r.replies).map((x) => x.type)).toEqual([Rep.ACK]);
    expect(r.done).toEqual({ kind: 'close', reason: 'client sent NBD_OPT_ABORT', clean: true });
  });

  const errors: [string, Buffer, number, string][] = [
    ['INFO for an unknown export', option(Opt.INFO, infoData('nope')), Rep.ERR_UNKNOWN, "export 'nope' not present"],
    ['GO for a long unknown name (shortened as qsd)', option(Opt.GO, infoData('x'.repeat(100))), Rep.ERR_UNKNOWN, `export '${'x'.repeat(80)}...' not present`],
    ['INFO with a truncated request list', option(Opt.INFO, Buffer.concat([str('disk'), u16(2), u16(1)])), Rep.ERR_INVALID, 'Inconsistent lengths in option info'],
    ['INFO with trailing bytes', option(Opt.INFO, Buffer.concat([infoData('disk'), Buffer.from('zz')])), Rep.ERR_INVALID, "option 'info' has unexpected length"],
    ['GO with a NUL in the name', option(Opt.GO, infoData('di\0sk')), Rep.ERR_INVALID, 'Unexpected embedded NUL in option go'],
    ['GO with a name length over 4096', option(Opt.GO, Buffer.concat([u32(5000), Buffer.alloc(5000, 0x61), u16(0)])), Rep.ERR_INVALID, 'Invalid name length: 5000'],
    ['INFO without BLOCK_SIZE on an aligned export', option(Opt.INFO, infoData('aligned')), Rep.ERR_BLOCK_SIZE_REQD, 'request NBD_INFO_BLOCK_SIZE to use this export'],
    ['LIST with data', option(Opt.LIST, Buffer.from('x')), Rep.ERR_INVALID, "option 'list' has unexpected length"],
    ['STRUCTURED_REPLY with data', option(Opt.STRUCTURED_REPLY, Buffer.from('x')), Rep.ERR_INVALID, "option 'structured reply' has unexpected length"],
    ['STARTTLS without TLS', option(Opt.STARTTLS), Rep.ERR_POLICY, 'TLS not configured'],
    ['SET_META_CONTEXT before STRUCTURED_REPLY', option(Opt.SET_META_CONTEXT, metaData('disk', [])), Rep.ERR_INVALID,
      "request option 'set meta context' when structured reply is not negotiated"],
    ['LIST_META_CONTEXT for an unknown export', option(Opt.LIST_META_CONTEXT, metaData('nope', [])), Rep.ERR_UNKNOWN, "export 'nope' not present"],
    ['EXTENDED_HEADERS with data', option(Opt.EXTENDED_HEADERS, Buffer.from('x')), Rep.ERR_INVALID, "option 'extended headers' has unexpected length"],
    ['an unknown option with data', option(0x1234, Buffer.alloc(1000, 7)), Rep.ERR_UNSUP, 'Unsupported option 4660 (<unknown>)'],
    ['INFO with more than 1 MiB of data', option(Opt.INFO, Buffer.alloc(OPTION_BUFFER_LIMIT + 1)), Rep.ERR_TOO_BIG, "option 'info' too big"],
  ];
  for (const [what, opt, type, message] of errors) {
    it(`answers ${what} with an error reply and carries on`, () => {
      const r = negotiate(Buffer.concat([FIXED, opt, option(Opt.GO, infoData('ro'))]));
      const err = parseReplies(r.replies).find((x) => x.type !== Rep.INFO)!;
      expect(err.type).toBe(type);
      expect(err.payload.toString()).toBe(message);
      expect(r.done?.kind).toBe('transmission');
    });
  }

  it('STRUCTURED_REPLY twice: the second is refused', () => {
    const r = negotiate(Buffer.concat([FIXED, option(Opt.STRUCTURED_REPLY), option(Opt.STRUCTURED_REPLY)]));
    const replies = parseReplies(r.replies);
    expect(replies.map((x) => x.type)).toEqual([Rep.ACK, Rep.ERR_INVALID]);
    expect(replies[1].payload.toString()).toBe('structured reply already negotiated');
  });

  describe('NBD_OPT_EXTENDED_HEADERS (QEMU 8.2+ server behaviour)', () => {
    const goRo = option(Opt.GO, infoData('ro'));
    const negotiated = (r: ReturnType<typeof negotiate>) => (r.done?.kind === 'transmission' ? r.done.negotiated : undefined);

    it('acknowledged; implies structured replies (SEND_DF, meta contexts) without STRUCTURED_REPLY', () => {
      const r = negotiate(Buffer.concat([FIXED, option(Opt.EXTENDED_HEADERS), option(Opt.SET_META_CONTEXT, metaData('ro', ['base:allocation'])), goRo]));
      const replies = parseReplies(r.replies);
      expect(replies[0]).toMatchObject({ opt: Opt.EXTENDED_HEADERS, type: Rep.ACK, payload: Buffer.alloc(0) });
      expect(replies.filter((x) => x.type === Rep.META_CONTEXT)).toHaveLength(1);
      const n = negotiated(r)!;
      expect(n).toMatchObject({ extended: true, structured: true });
      expect(n.contexts.map((c) => c.name)).toEqual(['base:allocation']);
      expect(n.transmissionFlags & TxFlag.SEND_DF).toBe(TxFlag.SEND_DF);
      // NBD_FLAG_BLOCK_STATUS_PAYLOAD is not offered (blockd has no payload form of BLOCK_STATUS)
      expect(n.transmissionFlags & TxFlag.BLOCK_STATUS_PAYLOAD).toBe(0);
    });

    it('after STRUCTURED_REPLY it is still acknowledged; STRUCTURED_REPLY after it is EXT_HEADER_REQD', () => {
      const r = negotiate(Buffer.concat([FIXED, option(Opt.STRUCTURED_REPLY), option(Opt.EXTENDED_HEADERS), option(Opt.STRUCTURED_REPLY), goRo]));
      const replies = parseReplies(r.replies);
      expect(replies.slice(0, 3).map((x) => [x.opt, x.type])).toEqual([
        [Opt.STRUCTURED_REPLY, Rep.ACK], [Opt.EXTENDED_HEADERS, Rep.ACK], [Opt.STRUCTURED_REPLY, Rep.ERR_EXT_HEADER_REQD],
      ]);
      expect(replies[2].payload.toString()).toBe('extended headers already negotiated');
      expect(negotiated(r)).toMatchObject({ extended: true, structured: true });
    });

    it('twice: the second is refused with ERR_INVALID', () => {
      const r = negotiate(Buffer.concat([FIXED, option(Opt.EXTENDED_HEADERS), option(Opt.EXTENDED_HEADERS), goRo]));
      const replies = parseReplies(r.replies);
      expect(replies.slice(0, 2).map((x) => x.type)).toEqual([Rep.ACK, Rep.ERR_INVALID]);
      expect(replies[1].payload.toString()).toBe('extended headers already negotiated');
      expect(negotiated(r)?.extended).toBe(true);
    });

    it('EXPORT_NAME after it ends the session (the spec forbids it; QEMU 8.2+ disconnects)', () => {
      const r = negotiate(Buffer.concat([FIXED, option(Opt.EXTENDED_HEADERS), option(Opt.EXPORT_NAME, Buffer.from('ro'))]));
      expect(parseReplies(r.replies).map((x) => x.type)).toEqual([Rep.ACK]);
      expect(r.done).toEqual({ kind: 'close', reason: 'Extended headers already negotiated', clean: false });
    });

    it('not asked for: compact headers, as before', () => {
      const plain = negotiated(negotiate(Buffer.concat([FIXED, goRo])))!;
      expect(plain).toMatchObject({ extended: false, structured: false });
      const structured = negotiated(negotiate(Buffer.concat([FIXED, option(Opt.STRUCTURED_REPLY), goRo])))!;
      expect(structured).toMatchObject({ extended: false, structured: true });
      const byName = negotiate(Buffer.concat([FIXED, option(Opt.EXPORT_NAME, Buffer.from('ro'))]));
      expect(negotiated(byName)).toMatchObject({ extended: false });
    });
  });

  const names = (r: Buffer) => parseReplies(r).filter((x) => x.type === Rep.META_CONTEXT)
    .map((x) => `${x.payload.readUInt32BE(0)}:${x.payload.subarray(4).toString()}`);

  it('LIST_META_CONTEXT: no query lists all, namespace queries list their contexts, ids are 0', () => {
    const list = (queries: string[]) => names(negotiate(Buffer.concat([FIXED, option(Opt.LIST_META_CONTEXT, metaData('disk', queries))])).replies);
    expect(list([])).toEqual(['0:base:allocation', '0:qemu:allocation-depth']);
    expect(list(['qemu:'])).toEqual(['0:qemu:allocation-depth']);
    expect(list(['base:'])).toEqual(['0:base:allocation']);
    expect(list(['qemu:allocation-depth', 'base:allocation'])).toEqual(['0:base:allocation', '0:qemu:allocation-depth']);
    expect(list(['qemu:dirty-bitmap:', 'nope:', 'x-y:z', ':'])).toEqual([]);
    // allocation-depth is offered only by exports that enable it
    expect(names(negotiate(Buffer.concat([FIXED, option(Opt.LIST_META_CONTEXT, metaData('ro', []))])).replies)).toEqual(['0:base:allocation']);
  });

  it('SET_META_CONTEXT: only exact names select; ids are the context ids', () => {
    const set = (queries: string[]) => names(negotiate(Buffer.concat([FIXED, option(Opt.STRUCTURED_REPLY), option(Opt.SET_META_CONTEXT, metaData('disk', queries))])).replies);
    expect(set(['base:', 'qemu:'])).toEqual([]);
    expect(set(['qemu:allocation-depth'])).toEqual(['1:qemu:allocation-depth']);
    expect(set(['base:allocation', 'x'.repeat(5000)])).toEqual(['0:base:allocation']);
  });

  it('contexts chosen for one export do not carry over to GO on another', () => {
    const r = negotiate(Buffer.concat([
      FIXED, option(Opt.STRUCTURED_REPLY), option(Opt.SET_META_CONTEXT, metaData('disk', ['base:allocation'])), option(Opt.GO, infoData('ro')),
    ]));
    expect(r.done?.kind === 'transmission' && r.done.negotiated.contexts).toEqual([]);
  });

  it('a failed SET_META_CONTEXT forgets the earlier selection', () => {
    const r = negotiate(Buffer.concat([
      FIXED, option(Opt.STRUCTURED_REPLY),
      option(Opt.SET_META_CONTEXT, metaData('disk', ['base:allocation'])),
      option(Opt.SET_META_CONTEXT, metaData('nope', ['base:allocation'])),
      option(Opt.GO, infoData('disk')),
    ]));
    expect(r.done?.kind === 'transmission' && r.done.negotiated.contexts).toEqual([]);
  });

  it('block sizes: minimum 1 unless the client asked for block sizes (or used INFO)', () => {
    const sizes = (opt: number, reqs: number[]) => {
      const r = parseReplies(negotiate(Buffer.concat([FIXED, option(opt, infoData('aligned', reqs))])).replies);
      const p = r.find((x) => x.type === Rep.INFO && x.payload.readUInt16BE(0) === Info.BLOCK_SIZE)!.payload;
      return [p.readUInt32BE(2), p.readUInt32BE(6), p.readUInt32BE(10)];
    };
    expect(sizes(Opt.GO, [])).toEqual([1, 4096, 32 << 20]);
    expect(sizes(Opt.GO, [Info.BLOCK_SIZE])).toEqual([512, 4096, 32 << 20]);
    expect(sizes(Opt.INFO, [Info.BLOCK_SIZE])).toEqual([512, 4096, 32 << 20]);
  });

  it('INFO stays in negotiation; GO leaves it', () => {
    const r = negotiate(Buffer.concat([FIXED, option(Opt.INFO, infoData('disk')), option(Opt.INFO, infoData('ro'))]));
    expect(r.done).toBeUndefined();
    expect(r.hs.state).toBe('option-header');
  });
});
