/**
 * NBD fixed-newstyle negotiation (src/nbd/handshake.ts and the option
 * handlers behind it), bytes in and bytes out, no socket.
 *
 * Input: client flags, then options (known and unknown numbers; data that is
 * well-formed, random, or whose declared length disagrees with it; now and
 * then a bad IHAVEOPT magic), then whatever a client sends after it, fed in
 * pieces cut anywhere.
 *
 * Properties:
 * - nothing throws; every byte sent is a well-formed option reply (magic,
 *   the option it answers, a payload of the declared length), except the
 *   NBD_OPT_EXPORT_NAME reply that ends a negotiation;
 * - the outcome does not depend on how the input was cut;
 * - a client that disconnects after any byte got a prefix of what it would
 *   have got with the whole input (nothing sent that depends on bytes not
 *   yet received), and the handshake never decided more than it had bytes for.
 */
import fc from 'fast-check';
import { BlockGraph } from '../../../src/blockdev/graph.ts';
import { Handshake, type HandshakeStep } from '../../../src/nbd/handshake.ts';
import type { NegotiationEnv } from '../../../src/nbd/options.ts';
import { IHAVEOPT, Opt, REPLY_MAGIC } from '../../../src/nbd-protocol/constants.ts';
import { ExportRegistry } from '../../helpers/exports.ts';
import { nullDriver } from '../../../src/blockdev/drivers/null.ts';
import { splitAt, u16, u32, type FuzzTarget } from '../harness.ts';

let env: NegotiationEnv | undefined;

const NAMES = ['', 'disk', 'ro', 'nope', 'a'.repeat(300)];
const CONTEXTS = ['base:allocation', 'qemu:allocation-depth', 'qemu:dirty-bitmap:b0', 'qemu:', 'base:', 'x:y', ''];

const str = (s: string) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);
const nameArb = fc.oneof(fc.constantFrom(...NAMES), fc.string({ maxLength: 20 }));

/** Option data as a client would build it (well-formed), or not. */
const dataArb = fc.oneof(
  { weight: 2, arbitrary: fc.tuple(nameArb, fc.array(fc.integer({ min: 0, max: 6 }), { maxLength: 4 }))
    .map(([n, reqs]) => Buffer.concat([str(n), u16(reqs.length), ...reqs.map(u16)])) },
  { weight: 2, arbitrary: fc.tuple(nameArb, fc.array(fc.oneof(fc.constantFrom(...CONTEXTS), fc.string({ maxLength: 12 })), { maxLength: 4 }))
    .map(([n, qs]) => Buffer.concat([str(n), u32(qs.length), ...qs.map(str)])) },
  { weight: 1, arbitrary: nameArb.map((n) => Buffer.from(n)) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 48 }).map((b) => Buffer.from(b)) },
  { weight: 1, arbitrary: fc.constant(Buffer.alloc(0)) },
);

const optionArb = fc.record({
  option: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...Object.values(Opt).filter((o) => o !== Opt.STARTTLS), Opt.STARTTLS) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) }),
  data: dataArb,
  /** Declared length minus the real one (0 most of the time). */
  lengthSkew: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -8, max: 8 }) },
    { weight: 1, arbitrary: fc.constant(2 ** 31) }),
  badMagic: fc.oneof({ weight: 30, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
});

export interface HandshakeInput {
  clientFlags: number;
  options: { option: number; data: Buffer; lengthSkew: number; badMagic: boolean }[];
  trailer: Uint8Array;
  cuts: number[];
}

function encodeInput(x: HandshakeInput): Buffer {
  const parts = [u32(x.clientFlags)];
  for (const o of x.options) {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(o.badMagic ? IHAVEOPT ^ 1n : IHAVEOPT, 0);
    h.writeUInt32BE(o.option >>> 0, 8);
    h.writeUInt32BE(Math.max(0, Math.min(0xffffffff, Buffer.from(o.data).length + o.lengthSkew)), 12);
    parts.push(h, Buffer.from(o.data));
  }
  parts.push(Buffer.from(x.trailer));
  return Buffer.concat(parts);
}

interface Run { sent: Buffer; done?: HandshakeStep['done']; upgrade: boolean }

function run(pieces: Buffer[]): Run {
  const hs = new Handshake(env!);
  const sent: Buffer[] = [];
  let done: HandshakeStep['done'];
  let upgrade = false;
  for (const p of pieces) {
    if (upgrade) break;
    // Once transmission began, later pieces go where the handshake's leftover goes (the framer).
    if (done) { if (done.kind === 'transmission') done = { ...done, rest: Buffer.concat([done.rest, p]) }; continue; }
    const step = hs.push(p);
    sent.push(...step.send);
    done = step.done;
    upgrade = step.upgrade === true;
  }
  return { sent: Buffer.concat(sent), done, upgrade };
}

function checkReplies(r: Run): void {
  const b = r.sent;
  for (let p = 0; p < b.length;) {
    if (b.length - p >= 8 && b.readBigUInt64BE(p) === REPLY_MAGIC) {
      if (b.length - p < 20) throw new Error(`truncated option reply at ${p}`);
      const len = b.readUInt32BE(p + 16);
      if (p + 20 + len > b.length) throw new Error(`option reply at ${p} declares ${len} bytes, ${b.length - p - 20} follow`);
      p += 20 + len;
      continue;
    }
    // NBD_OPT_EXPORT_NAME's reply: size (8) + flags (2) [+ 124 zeroes], only as the last thing, ending negotiation.
    const rest = b.length - p;
    if ((rest === 10 || rest === 134) && r.done?.kind === 'transmission') return;
    throw new Error(`bytes at ${p} are not an option reply (${b.subarray(p, p + 16).toString('hex')})`);
  }
}

const summary = (r: Run) => ({
  sent: r.sent.toString('hex'), upgrade: r.upgrade, kind: r.done?.kind,
  reason: r.done?.kind === 'close' ? r.done.reason : undefined,
  rest: r.done?.kind === 'transmission' ? r.done.rest.toString('hex') : undefined,
});

export const nbdHandshake: FuzzTarget<HandshakeInput> = {
  name: 'nbd-handshake',
  about: 'NBD option phase: client flags, options (valid/invalid headers, lengths, data), cuts, disconnects at every byte',
  runs: 300,
  async setup() {
    const graph = new BlockGraph();
    graph.register(nullDriver);
    await graph.add({ driver: 'null-co', 'node-name': 'disk', size: 1 << 20 });
    const registry = new ExportRegistry();
    registry.add(graph, { id: 'e0', nodeName: 'disk', writable: true, description: 'the disk', allocationDepth: true });
    registry.add(graph, { id: 'e1', nodeName: 'disk', name: 'ro' });
    env = { findExport: (n) => registry.byName(n), listExports: () => registry.list(), multiConn: true };
  },
  arbitrary: () => fc.record({
    clientFlags: fc.oneof({ weight: 10, arbitrary: fc.constantFrom(1, 3) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) }),
    options: fc.array(optionArb, { maxLength: 8 }),
    trailer: fc.uint8Array({ maxLength: 40 }),
    cuts: fc.array(fc.nat(), { maxLength: 12 }),
  }),
  check(x) {
    if (!env) throw new Error('nbd-handshake: setup() not run');
    const input = encodeInput(x);
    const whole = run([input]);
    checkReplies(whole);
    const cut = run(splitAt(input, x.cuts));
    if (JSON.stringify(summary(cut)) !== JSON.stringify(summary(whole))) {
      throw new Error(`outcome depends on the cuts: ${JSON.stringify(summary(whole))} vs ${JSON.stringify(summary(cut))}`);
    }
    // Disconnect after every byte (all of them for short inputs, a sample for long ones).
    const step = Math.max(1, Math.floor(input.length / 64));
    for (let n = 0; n < input.length; n += step) {
      const part = run([input.subarray(0, n)]);
      if (!whole.sent.subarray(0, part.sent.length).equals(part.sent)) throw new Error(`after ${n} bytes the replies are not a prefix of the whole run's`);
      if (part.done?.kind === 'transmission' && whole.done?.kind !== 'transmission') throw new Error(`after ${n} bytes transmission began; with all of them it did not`);
    }
  },
};
