/**
 * QMP's JSON, both directions, as QEMU 7.2 does it: the streaming parser
 * (input split at every byte boundary, several messages per chunk, no
 * newlines needed, error recovery, limits, QEMU's texts) and the writer
 * (QDict key order, %.17g doubles, escapes, pretty printing).
 */
import { describe, it, expect } from 'vitest';
import { JsonStreamParser, type JsonMessage } from '../../src/qmp/json-stream.ts';
import { toQmpJson, formatDouble, qdictOrder } from '../../src/qmp/json-writer.ts';
import { JsonNumber } from '../../src/qapi/keyval.ts';

function parseAll(input: string | Buffer, limits?: ConstructorParameters<typeof JsonStreamParser>[0]): JsonMessage[] {
  const p = new JsonStreamParser(limits);
  p.push(typeof input === 'string' ? Buffer.from(input) : input);
  const out: JsonMessage[] = [];
  for (let m = p.next(); m; m = p.next()) out.push(m);
  return out;
}

/** Feeds the input in two pieces split at every position, and byte by byte: the result must not change. */
function parseSplit(input: string): JsonMessage[] {
  const whole = parseAll(input);
  const buf = Buffer.from(input);
  for (let cut = 0; cut <= buf.length; cut++) {
    const p = new JsonStreamParser();
    const out: JsonMessage[] = [];
    p.push(buf.subarray(0, cut));
    for (let m = p.next(); m; m = p.next()) out.push(m);
    p.push(buf.subarray(cut));
    for (let m = p.next(); m; m = p.next()) out.push(m);
    expect(out, `split at ${cut}`).toEqual(whole);
  }
  const p = new JsonStreamParser();
  const out: JsonMessage[] = [];
  for (const b of buf) {
    p.push(Buffer.from([b]));
    for (let m = p.next(); m; m = p.next()) out.push(m);
  }
  expect(out).toEqual(whole);
  return whole;
}

const err = (e: string) => ({ error: `JSON parse error, ${e}` });

describe('streaming parser', () => {
  it('splits messages by balanced brackets, with or without newlines', () => {
    expect(parseSplit('{"execute":"a"}{"execute":"b","id":[1,{"x":null}]}\n  {"execute":"c"}')).toEqual([
      { value: { execute: 'a' } }, { value: { execute: 'b', id: [1, { x: null }] } }, { value: { execute: 'c' } },
    ]);
  });

  it('gives a top-level scalar or stray closer as a message of its own', () => {
    expect(parseSplit('1 "s" null ] }')).toEqual([
      { value: 1 }, { value: 's' }, { value: null }, err('expecting value'), err('expecting value'),
    ]);
  });

  it("reports QEMU's parse errors", () => {
    const cases: [string, string][] = [
      ['{"a" 1}', 'missing : in object pair'],
      ['{1:2}', 'key is not a string in object'],
      ['{"a":1 "b":2}', 'expected separator in dict'],
      ['["a" "b"]', 'expected separator in list'],
      ['[1,]', 'expecting value'],
      ['{"a":1,"a":2}', 'duplicate key'],
      ['{"a":tru}', "invalid keyword 'tru'"],
      ['{"a":"\\q"}', 'invalid escape sequence in string'],
      ['{"a":"\\u12"}', '\\u12" is not a valid Unicode character'],
      ['{"a":"\\ud800"}', '\\ud800 is not a valid Unicode character'],
      ['{"a":"\\uffff"}', '\\uffff is not a valid Unicode character'],
      ['{"a":"\\ufdd0"}', '\\ufdd0 is not a valid Unicode character'],
    ];
    for (const [input, e] of cases) expect(parseSplit(input), input).toEqual([err(e)]);
  });

  it('reports a lexical error with the stray text and resynchronises at the next structural character', () => {
    // After "01" the rest of the object is read as separate messages, as QEMU does.
    expect(parseSplit('{"id":01,"x":1}')).toEqual([
      err("stray '01'"), err('expecting value'), { value: 'x' }, err('expecting value'), { value: 1 }, err('expecting value'),
    ]);
    expect(parseSplit('{"a": @ "skipped" 7 {"ok":true}')).toEqual([err("stray '@'"), { value: { ok: true } }]);
    expect(parseSplit('{"a":-}')).toEqual([err("stray '-}'")]);
    expect(parseSplit('{"a":1.}')).toEqual([err("stray '1.}'")]);
    expect(parseSplit('{"a":%d}')).toEqual([err("stray '%'"), err('expecting value')]);
    expect(parseAll(Buffer.from('{"a":"x\x01y"}\n{"b":2}'))).toEqual([err("stray '\"x\x01'"), err('expecting value'), { value: { b: 2 } }]);
    expect(parseAll(Buffer.from([0x40, 0xff, 0x7b, 0x7d]))).toEqual([err("stray '@'"), err("stray '\ufffd'"), { value: {} }]);
  });

  it("accepts QEMU's dialect: single quotes, \\' and modified UTF-8", () => {
    expect(parseSplit("{'a':'it\\'s \"q\"'}")).toEqual([{ value: { a: 'it\'s "q"' } }]);
    expect(parseAll(Buffer.from([0x22, 0xc0, 0x80, 0xc3, 0xa9, 0x22]))).toEqual([{ value: '\u0000é' }]);
    expect(parseAll(Buffer.from([0x22, 0xed, 0xa0, 0x80, 0x22]))).toEqual([err('invalid UTF-8 sequence in string')]);
    expect(parseAll(Buffer.from([0x22, 0xc3, 0x22]))).toEqual([err('invalid UTF-8 sequence in string')]);
    expect(parseSplit('"\\ud83d\\ude00 \\u00e9"')).toEqual([{ value: '😀 é' }]);
  });

  it('keeps numbers as QEMU types them', () => {
    const [m] = parseAll('[1, -0, 1.5, 1e3, 9007199254740993, 18446744073709551615, 18446744073709551616, -9223372036854775809]');
    const v = (m as { value: unknown[] }).value;
    expect(v[0]).toBe(1);
    expect(v[1]).toBe(0);
    expect(v[2]).toBe(1.5);
    expect(v[3]).toEqual(new JsonNumber('double', 1000));
    expect(v[4]).toEqual(new JsonNumber('int', 9007199254740992, 9007199254740993n));
    expect(v[5]).toEqual(new JsonNumber('uint', 18446744073709552000, 18446744073709551615n));
    expect((v[6] as JsonNumber).kind).toBe('double');
    expect((v[7] as JsonNumber).kind).toBe('double');
  });

  it('enforces the nesting limit as QEMU does, then goes on', () => {
    const out = parseAll(`${'['.repeat(1030)}${']'.repeat(1030)}{"ok":1}`);
    expect(out[0]).toEqual({ error: 'JSON nesting depth limit exceeded' });
    expect(out[1]).toEqual({ value: [[[[[]]]]] });
    expect(out.slice(2, -1).every((m) => 'error' in m && m.error === 'JSON parse error, expecting value')).toBe(true);
    expect(out.length).toBe(2 + 1025 + 1);
    expect(out.at(-1)).toEqual({ value: { ok: 1 } });
  });

  it('cuts off an oversized message without buffering it', () => {
    const limits = { maxMessageBytes: 1000, maxTokens: 100, maxNesting: 10 };
    const big = `{"a":"${'x'.repeat(5000)}"}{"ok":1}`;
    const p = new JsonStreamParser(limits);
    p.push(Buffer.from(big));
    const first = p.next();
    expect(first).toEqual({ error: 'JSON token size limit exceeded' });
    const rest: JsonMessage[] = [];
    for (let m = p.next(); m; m = p.next()) rest.push(m);
    expect(rest.at(-1)).toEqual({ value: { ok: 1 } });
    expect(parseAll(`[${'1,'.repeat(200)}1]`, limits)[0]).toEqual({ error: 'JSON token count limit exceeded' });
  });

  it('consumes input only as far as asked', () => {
    const p = new JsonStreamParser();
    p.push(Buffer.from('{"a":1}{"b":2}{"c":3}'));
    expect(p.next()).toEqual({ value: { a: 1 } });
    expect(p.bufferedBytes).toBe(14);
  });
});

describe('writer', () => {
  it("orders keys as QEMU's QDict iterates them", () => {
    expect(qdictOrder(['return', 'id'])).toEqual(['return', 'id']);
    expect(qdictOrder(['error', 'id'])).toEqual(['id', 'error']);
    expect(qdictOrder(['class', 'desc'])).toEqual(['class', 'desc']);
    // 'micro' and 'minor' share a bucket: the later-inserted comes first.
    expect(qdictOrder(['major', 'minor', 'micro'])).toEqual(['micro', 'minor', 'major']);
    expect(toQmpJson({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'p' }, capabilities: ['oob'] } }))
      .toBe('{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "p"}, "capabilities": ["oob"]}}');
    expect(toQmpJson({ event: 'E', data: { id: 'x' }, timestamp: { seconds: 1, microseconds: 2 } }))
      .toBe('{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "E", "data": {"id": "x"}}');
  });

  it("prints doubles as %.17g and QEMU's integer kinds exactly", () => {
    expect(formatDouble(0.1)).toBe('0.10000000000000001');
    expect(formatDouble(1e-5)).toBe('1.0000000000000001e-05');
    expect(formatDouble(1500)).toBe('1500');
    expect(formatDouble(-0)).toBe('-0');
    expect(formatDouble(18446744073709552000)).toBe('1.8446744073709552e+19');
    expect(formatDouble(-9223372036854775808)).toBe('-9.2233720368547758e+18');
    expect(formatDouble(Infinity)).toBe('inf');
    expect(toQmpJson([new JsonNumber('uint', 0, 18446744073709551615n), new JsonNumber('double', 1000), 12n])).toBe('[18446744073709551615, 1000, 12]');
  });

  it('escapes as QEMU does', () => {
    expect(toQmpJson('a"\\/\b\f\n\r\t\u0001\u007f é€😀')).toBe('"a\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u007F \\u00E9\\u20AC\\uD83D\\uDE00"');
  });

  it('pretty-prints with four spaces, closing empty containers on their own line', () => {
    expect(toQmpJson({ return: {} }, true)).toBe('{\n    "return": {\n    }\n}');
    // As qsd printed {"id": [1, {"a": []}, {}]} on a pretty=on monitor.
    expect(toQmpJson({ return: {}, id: [1, { a: [] }, {}] }, true)).toBe(
      '{\n    "return": {\n    },\n    "id": [\n        1,\n        {\n            "a": [\n            ]\n        },\n        {\n        }\n    ]\n}',
    );
  });

  it('round-trips through the parser', () => {
    const v = { execute: 'x', arguments: { s: 'é\n"', n: [1, -2, 0.5, true, false, null], o: { k: {} } } };
    expect(parseAll(toQmpJson(v))).toEqual([{ value: v }]);
    expect(parseAll(toQmpJson(v, true))).toEqual([{ value: v }]);
  });
});
