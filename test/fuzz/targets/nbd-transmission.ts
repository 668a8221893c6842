/**
 * The NBD transmission phase's input side: the request framer
 * (src/nbd-protocol/request-framer.ts) and request validation
 * (src/nbd/validate.ts), compact and extended headers.
 *
 * Input: requests with any command, flags, cookie, 64-bit offset and length
 * (writes carry their payload, some longer than the framer's payload limit),
 * now and then a bad magic; cut into pieces anywhere; fed also the way the
 * socket does it (one reused buffer, `transient`, overwritten after each read).
 *
 * Properties: frames come out exactly as the requests went in (fields,
 * payloads, the over-limit ones discarded in step) up to the first bad magic
 * or over-limit extended payload, which ends framing; the result is the same
 * however the stream was cut and however it was fed; validation of every
 * frame returns a rejection or null and never throws.
 */
import fc from 'fast-check';
import { RequestFramer, type Frame } from '../../../src/nbd-protocol/request-framer.ts';
import { buildRequest, cookieOf, type RequestHeader } from '../../../src/nbd-protocol/requests.ts';
import { Cmd, CmdFlag, EXTENDED_REQUEST_MAGIC, NbdErrno, REQUEST_MAGIC } from '../../../src/nbd-protocol/constants.ts';
import { checkRequest } from '../../../src/nbd/validate.ts';
import { splitAt, type FuzzTarget } from '../harness.ts';

const MAX_PAYLOAD = 48; // the framer's limit here, so over-limit payloads stay small

const reqArb = fc.record({
  type: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...Object.values(Cmd)) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
  flags: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 4, arbitrary: fc.constantFrom(...Object.values(CmdFlag)) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
  cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  offset: fc.oneof(fc.integer({ min: 0, max: 1 << 21 }), fc.constantFrom(2 ** 53 - 1, 2 ** 32, 2 ** 40 + 7)),
  length: fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 2 * MAX_PAYLOAD }) },
    { weight: 1, arbitrary: fc.constantFrom(0xffffffff, 2 ** 25, 2 ** 25 + 1) }),
  badMagic: fc.oneof({ weight: 25, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  fill: fc.integer({ min: 0, max: 255 }),
});

export interface TransmissionInput {
  extended: boolean;
  requests: { type: number; flags: number; cookie: bigint; offset: number; length: number; badMagic: boolean; fill: number }[];
  cuts: number[];
}

const hasPayload = (r: TransmissionInput['requests'][number], extended: boolean) =>
  extended ? (r.flags & CmdFlag.PAYLOAD_LEN) !== 0 : r.type === Cmd.WRITE;

/** The stream, and the frames a correct framer must yield from it. */
function build(x: TransmissionInput): { stream: Buffer; expected: unknown[] } {
  const parts: Buffer[] = [];
  const expected: unknown[] = [];
  for (const r of x.requests) {
    // A payload is sent only when it is small enough to build here (lengths beyond 2*MAX_PAYLOAD are headers only, and end the stream).
    const withPayload = hasPayload(r, x.extended);
    if (withPayload && r.length > 2 * MAX_PAYLOAD && !r.badMagic && !(x.extended && r.length > MAX_PAYLOAD)) break;
    const req: RequestHeader = { extended: x.extended, type: r.type, flags: r.flags, cookieHi: Number(r.cookie >> 32n), cookieLo: Number(r.cookie & 0xffffffffn), offset: r.offset, length: r.length };
    const h = buildRequest(req);
    if (r.badMagic) h.writeUInt32BE((x.extended ? EXTENDED_REQUEST_MAGIC : REQUEST_MAGIC) ^ 0x100, 0);
    parts.push(h);
    const key = { type: r.type, flags: r.flags, cookie: r.cookie.toString(), offset: r.offset, length: r.length };
    if (r.badMagic) { expected.push({ kind: 'bad-magic', ...key }); break; }
    if (!withPayload) { expected.push({ kind: 'request', ...key }); continue; }
    if (x.extended && r.length > MAX_PAYLOAD) { expected.push({ kind: 'payload-too-big', ...key }); break; }
    const payload = Buffer.alloc(r.length, r.fill);
    parts.push(payload);
    expected.push(r.length > MAX_PAYLOAD ? { kind: 'request', ...key, discarded: true } : { kind: 'request', ...key, payload: payload.toString('hex') });
  }
  return { stream: Buffer.concat(parts), expected };
}

function describeFrame(f: Frame): unknown {
  const key = { type: f.req.type, flags: f.req.flags, cookie: cookieOf(f.req).toString(), offset: f.req.offset, length: f.req.length };
  if (f.kind !== 'request') return { kind: f.kind, ...key };
  if (f.discarded) return { kind: 'request', ...key, discarded: true };
  return f.payload ? { kind: 'request', ...key, payload: Buffer.from(f.payload).toString('hex') } : { kind: 'request', ...key };
}

function frame(pieces: Buffer[], extended: boolean, transient: boolean): Frame[] {
  const fr = new RequestFramer({ maxPayload: MAX_PAYLOAD, extended, transient });
  const out: Frame[] = [];
  const socketBuffer = Buffer.alloc(4096);
  for (const p of pieces) {
    let chunk = p;
    if (transient) { p.copy(socketBuffer); chunk = socketBuffer.subarray(0, p.length); }
    fr.push(chunk);
    for (let f = fr.next(); f; f = fr.next()) {
      // Payload views die with the socket buffer: keep what the frame says now, as a server uses it at once.
      out.push(f.kind === 'request' && f.payload ? { ...f, payload: Buffer.from(f.payload) } : f);
    }
    if (transient) { fr.retainUnconsumed(); socketBuffer.fill(0xa5); }
  }
  return out;
}

const ERRNOS = new Set<number>(Object.values(NbdErrno));

export const nbdTransmission: FuzzTarget<TransmissionInput> = {
  name: 'nbd-transmission',
  about: 'NBD transmission phase: request headers (compact/extended), payloads, limits, cuts, reused socket buffers, validation',
  runs: 400,
  arbitrary: () => fc.record({
    extended: fc.boolean(),
    requests: fc.array(reqArb, { maxLength: 10 }),
    cuts: fc.array(fc.nat(), { maxLength: 16 }),
  }),
  check(x) {
    const { stream, expected } = build(x);
    const want = JSON.stringify(expected);
    for (const [pieces, transient] of [[[stream], false], [splitAt(stream, x.cuts), false], [splitAt(stream, x.cuts), true]] as const) {
      const frames = frame(pieces as Buffer[], x.extended, transient);
      const got = JSON.stringify(frames.map(describeFrame));
      if (got !== want) throw new Error(`frames differ (${pieces.length} pieces, transient ${transient}):\n want ${want}\n got  ${got}`);
      for (const f of frames) {
        for (const ctx of [
          { size: 1 << 20, readOnly: false, structured: true, extended: x.extended, metaContexts: 1 },
          { size: 0, readOnly: true, structured: false, metaContexts: 0, specErrnos: true },
        ]) {
          const rej = checkRequest(f.req, ctx);
          if (rej !== null && (!ERRNOS.has(rej.errno) || rej.errno === 0 || !rej.reason)) throw new Error(`bad rejection ${JSON.stringify(rej)}`);
        }
      }
    }
  },
};
