/**
 * QMP's input stream (src/qmp/json-stream.ts): QEMU's streaming JSON.
 *
 * Input: JSON texts (as JSON.stringify writes them) separated by random
 * whitespace, with random bytes and QEMU-dialect fragments mixed in, cut
 * into pieces anywhere; small limits now and then so the message-size, token
 * and nesting limits are hit.
 *
 * Properties: nothing throws; each message is a value or an error text of
 * QEMU's ("JSON parse error, ...", "JSON ... limit ..."); the messages do not
 * depend on how the stream was cut; a stream of valid texts alone gives
 * exactly those values back (bar QEMU's refusals of \u0000 and lone surrogates).
 */
import fc from 'fast-check';
import { JsonStreamParser, DEFAULT_LIMITS, type JsonLimits, type JsonMessage } from '../../../src/qmp/json-stream.ts';
import { JsonNumber } from '../../../src/qapi/keyval.ts';
import { splitAt, type FuzzTarget } from '../harness.ts';

const FRAGMENTS = ["{'execute':'x'}", '{"a":', '[', ']', '}', '{', "'\\'", '"\\u0000"', '"\\ud800"', '\xc0\x80', '@', '1e', '-', 'nul', '0x1', '"\x01"', ',,'];

const pieceArb = fc.oneof(
  { weight: 6, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((v) => ({ json: v as unknown, raw: undefined as Uint8Array | undefined })) },
  { weight: 1, arbitrary: fc.constantFrom(...FRAGMENTS).map((s) => ({ json: undefined as unknown, raw: new Uint8Array(Buffer.from(s, 'latin1')) })) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 12 }).map((b) => ({ json: undefined as unknown, raw: b })) },
);

export interface QmpJsonInput {
  pieces: { json: unknown; raw?: Uint8Array }[];
  spaces: number[];
  cuts: number[];
  smallLimits: boolean;
}

const SMALL: JsonLimits = { maxMessageBytes: 200, maxTokens: 40, maxNesting: 6 };

function parseAll(chunks: Buffer[], limits: JsonLimits): JsonMessage[] {
  const p = new JsonStreamParser(limits);
  const out: JsonMessage[] = [];
  for (const c of chunks) {
    p.push(c);
    for (let m = p.next(); m; m = p.next()) out.push(m);
  }
  return out;
}

/** The parsed value in JSON.parse's terms (JsonNumber is a number). */
function plain(v: unknown): unknown {
  if (v instanceof JsonNumber) return v.value;
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') {
    if (Object.getPrototypeOf(v) !== Object.prototype && Object.getPrototypeOf(v) !== null) throw new Error('a parsed object has a foreign prototype');
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  }
  return v;
}

const show = (m: JsonMessage[]) => JSON.stringify(m.map((x) => ('error' in x ? { error: x.error } : { value: plain(x.value) })));

export const qmpJson: FuzzTarget<QmpJsonInput> = {
  name: 'qmp-json',
  about: 'QMP JSON stream: valid texts, QEMU-dialect fragments, random bytes, cuts, message/token/nesting limits',
  runs: 300,
  arbitrary: () => fc.record({
    pieces: fc.array(pieceArb, { maxLength: 6 }),
    spaces: fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 6 }),
    cuts: fc.array(fc.nat(), { maxLength: 16 }),
    smallLimits: fc.boolean(),
  }),
  check(x) {
    const texts = x.pieces.map((p, i) => Buffer.concat([
      p.raw ? Buffer.from(p.raw) : Buffer.from(JSON.stringify(p.json)),
      Buffer.from(' \n\t'.slice(0, x.spaces[i] ?? 1) || ' '),
    ]));
    const stream = Buffer.concat(texts);
    const limits = x.smallLimits ? SMALL : DEFAULT_LIMITS;
    const whole = parseAll([stream], limits);
    for (const m of whole) {
      if ('error' in m && !/^JSON (parse error, |nesting depth limit exceeded|token (size|count) limit exceeded)|^JSON .*limit/.test(m.error)) {
        throw new Error(`error text not QEMU's: ${m.error}`);
      }
    }
    const cut = parseAll(splitAt(stream, x.cuts), limits);
    if (show(cut) !== show(whole)) throw new Error(`messages depend on the cuts:\n ${show(whole)}\n ${show(cut)}`);
    if (x.smallLimits || x.pieces.some((p) => p.raw)) return;
    // Valid texts only: the same values back, one message each.
    const want = x.pieces.map((p) => p.json);
    if (whole.length !== want.length) throw new Error(`${want.length} texts gave ${whole.length} messages: ${show(whole)}`);
    whole.forEach((m, i) => {
      const text = JSON.stringify(want[i]);
      if ('error' in m) {
        if (/\\u0000|\\ud[89a-f][0-9a-f]{2}/i.test(text)) return; // QEMU refuses these too
        throw new Error(`valid JSON refused: ${text}: ${m.error}`);
      }
      if (JSON.stringify(plain(m.value)) !== JSON.stringify(JSON.parse(text))) {
        throw new Error(`value differs: ${text} gave ${JSON.stringify(plain(m.value))}`);
      }
    });
  },
};
