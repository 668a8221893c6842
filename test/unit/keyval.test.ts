import { describe, expect, it } from 'vitest';
import { JsonNumber, parseKeyval, parseKeyvalHelp, parseOptionText, parseQemuJson } from '../../src/qapi/keyval.ts';
import { strtosz } from '../../src/qapi/visit.ts';
import { BlockError } from '../../src/util/errors.ts';

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    expect((e as BlockError).code).toBe('EINVAL');
    return (e as Error).message;
  }
  throw new Error('expected an error');
}

describe('parseKeyval', () => {
  const ok: [string, string | undefined, unknown][] = [
    ['', undefined, {}],
    ['a=1', undefined, { a: '1' }],
    ['a=1,', undefined, { a: '1' }],
    ['a=', undefined, { a: '' }],
    ['a=x,,y,b=2', undefined, { a: 'x,y', b: '2' }],
    ['a=x,,,b=2', undefined, { a: 'x,', b: '2' }],
    ['a=1=2', undefined, { a: '1=2' }],
    ['a=1,a=2', undefined, { a: '2' }],
    ['a.b=1,a.c=2', undefined, { a: { b: '1', c: '2' } }],
    ['a.b.c=1', undefined, { a: { b: { c: '1' } } }],
    ['a.0=x,a.1=y', undefined, { a: ['x', 'y'] }],
    ['a.1=y,a.0=x', undefined, { a: ['x', 'y'] }],
    ['a.0.b=x,a.0.c=y,a.1.b=z', undefined, { a: [{ b: 'x', c: 'y' }, { b: 'z' }] }],
    ['a.0.0=x,a.0.1=y', undefined, { a: [['x', 'y']] }],
    ['a_b-c=1', undefined, { 'a_b-c': '1' }],
    ['__com.redhat_x=1', undefined, { '__com.redhat_x': '1' }],
    ['x.__org.qemu_y=1', undefined, { x: { '__org.qemu_y': '1' } }],
    ['null-co,size=1', 'driver', { driver: 'null-co', size: '1' }],
    ['null.co', 'driver', { driver: 'null.co' }],
    ['driver=null-co,size=1', 'driver', { driver: 'null-co', size: '1' }],
    ['nbd,id=e', 'type', { type: 'nbd', id: 'e' }],
    ['x,type=y', 'type', { type: 'y' }],
    ['a=' + 'x'.repeat(300), undefined, { a: 'x'.repeat(300) }],
    ['a'.repeat(127) + '=1', undefined, { ['a'.repeat(127)]: '1' }],
    ['constructor=1,toString.x=2', undefined, { constructor: '1', toString: { x: '2' } }],
  ];
  it.each(ok)('%j (implied %s)', (text, implied, expected) => {
    expect(parseKeyval(text, implied)).toEqual(expected);
  });

  const bad: [string, string | undefined, string][] = [
    ['size', undefined, "Expected '=' after parameter 'size'"],
    ['a=1,b', undefined, "Expected '=' after parameter 'b'"],
    ['a.b', undefined, "Expected '=' after parameter 'a.b'"],
    ['size=1,null-co', 'driver', "Expected '=' after parameter 'null-co'"],
    ['inet,addr.host=x', undefined, "Expected '=' after parameter 'inet'"],
    ['=1', undefined, "Invalid parameter ''"],
    [',driver=x', 'driver', "Invalid parameter ''"],
    ['null,,co,size=1', 'driver', "Invalid parameter ''"],
    ['a..b=1', undefined, "Invalid parameter 'a..b'"],
    ['a.=1', undefined, "Invalid parameter 'a.'"],
    ['1a=1', undefined, "Invalid parameter '1a'"],
    ['0=1', undefined, "Invalid parameter '0'"],
    ['_x=1', undefined, "Invalid parameter '_x'"],
    ['a.0x=1', undefined, "Invalid parameter 'a.0x'"],
    ['a b=1', undefined, "Invalid parameter 'a b'"],
    ['a'.repeat(128) + '=1', undefined, `Parameter '${'a'.repeat(128)}' is too long`],
    ['x.' + 'a'.repeat(130) + '=1', undefined, `Parameter fragment '${'a'.repeat(130)}' is too long`],
    ['a.b=1,a=2', undefined, "Parameters 'a.*' used inconsistently"],
    ['a=2,a.b=1', undefined, "Parameters 'a.*' used inconsistently"],
    ['a.b.c=2,a.b=1', undefined, "Parameters 'a.b.*' used inconsistently"],
    ['size=1,size.a=1', undefined, "Parameters 'size.*' used inconsistently"],
    ['a.0=x,a.b=1', undefined, "Parameters 'a.*' used inconsistently"],
    ['x.a.0=x,x.a.b=1', undefined, "Parameters 'x.a.*' used inconsistently"],
    ['a.1=x', undefined, "Parameter 'a.0' missing"],
    ['a.2=1,a.0=1', undefined, "Parameter 'a.1' missing"],
    ['a.99999999999=1', undefined, "Parameter 'a.0' missing"],
    ['x.a.0=1,x.a.2=1', undefined, "Parameter 'x.a.1' missing"],
    ['help', 'driver', 'Help is not available for this option'],
    ['?', 'driver', 'Help is not available for this option'],
    ['null-co,help', 'driver', 'Help is not available for this option'],
    ['help,a.1=x', undefined, 'Help is not available for this option'],
    ['help,x', undefined, "Expected '=' after parameter 'x'"],
    ['driver=null-co,helpx', undefined, "Expected '=' after parameter 'helpx'"],
  ];
  it.each(bad)('%j (implied %s) fails', (text, implied, message) => {
    expect(errorOf(() => parseKeyval(text, implied))).toBe(message);
  });

  it('reports a help request when help is wanted', () => {
    expect(parseKeyvalHelp('null-co,help', 'driver')).toEqual({ dict: {}, help: true });
    expect(parseKeyvalHelp('help=1')).toEqual({ dict: { help: '1' }, help: false });
  });
});

describe('parseQemuJson', () => {
  it('parses QEMU JSON, single quotes and escapes included', () => {
    expect(parseQemuJson(`{'a"':1, "b": "\\u00e9\\ud83d\\ude00\\'\\/", "c": [true, false, null, {}], "d": -0}`))
      .toEqual({ 'a"': 1, b: 'é😀\'/', c: [true, false, null, {}], d: 0 });
    expect(parseQemuJson('  {"a":1}  \n')).toEqual({ a: 1 });
  });

  it('keeps integral floats and big integers apart from plain numbers', () => {
    const v = parseQemuJson('{"a":1.0,"b":1e3,"c":18446744073709551615,"d":-9223372036854775808,"e":1.5,"f":9007199254740993}') as Record<string, unknown>;
    expect(v.a).toEqual(new JsonNumber('double', 1));
    expect(v.b).toEqual(new JsonNumber('double', 1000));
    expect(v.c).toEqual(new JsonNumber('uint', 18446744073709551615, 18446744073709551615n));
    expect(v.d).toEqual(new JsonNumber('int', -9223372036854775808, -9223372036854775808n));
    expect(v.e).toBe(1.5);
    expect((v.f as JsonNumber).big).toBe(9007199254740993n);
    expect(JSON.stringify(v.a)).toBe('1');
  });

  it('does not let "__proto__" touch the prototype', () => {
    const v = parseQemuJson('{"__proto__":{"x":1}}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Object.keys(v)).toEqual(['__proto__']);
  });

  const bad: [string, string][] = [
    ['{', 'JSON parse error, premature EOI'],
    ['{"a"', 'JSON parse error, premature EOI'],
    ['{"a":', 'JSON parse error, premature EOI'],
    ['{"a":1', 'JSON parse error, premature EOI'],
    ['{"a":{}', 'JSON parse error, premature EOI'],
    ['{"a":[[[[1]]]]', 'JSON parse error, premature EOI'],
    ['{"a":1 "b":2}', 'JSON parse error, expected separator in dict'],
    ['{"a":true1}', 'JSON parse error, expected separator in dict'],
    ['{"a":[1]]}', 'JSON parse error, expected separator in dict'],
    ['{"a":[1 2]}', 'JSON parse error, expected separator in list'],
    ['{"a":[1,]}', 'JSON parse error, expecting value'],
    ['{"a":[}', 'JSON parse error, expecting value'],
    ['{"a":]}', 'JSON parse error, expecting value'],
    ['{"a":}}', 'JSON parse error, expecting value'],
    ['{"a":1,}', 'JSON parse error, expecting value'],
    ['{"driver" "x"}', 'JSON parse error, missing : in object pair'],
    ['{1:2}', 'JSON parse error, key is not a string in object'],
    ['{"a":1,"a":2}', 'JSON parse error, duplicate key'],
    ['{"a":nul}', "JSON parse error, invalid keyword 'nul'"],
    ['{"a":tru}', "JSON parse error, invalid keyword 'tru'"],
    ['{"a":"x\\q"}', 'JSON parse error, invalid escape sequence in string'],
    ['{"a":"\\u12"}', 'JSON parse error, \\u12" is not a valid Unicode character'],
    ['{"a":"\\u00e9\\u12G4"}', 'JSON parse error, \\u12G4 is not a valid Unicode character'],
    ['{"a":"\\ud800"}', 'JSON parse error, \\ud800 is not a valid Unicode character'],
    ['{"a":"\\udc00"}', 'JSON parse error, \\udc00 is not a valid Unicode character'],
    ['{"a":"\\ud83dx"}', 'JSON parse error, \\ud83d is not a valid Unicode character'],
    ['{"a":01}', "JSON parse error, stray '01'"],
    ['{"a":-}', "JSON parse error, stray '-}'"],
    ['{"a":-', "JSON parse error, stray '-'"],
    ['{"a":1.}', "JSON parse error, stray '1.}'"],
    ['{"a":1.', "JSON parse error, stray '1.'"],
    ['{"a":1e}', "JSON parse error, stray '1e}'"],
    ['{"a":.5}', "JSON parse error, stray '.'"],
    ['{"a":+1}', "JSON parse error, stray '+'"],
    ['{"a":@}', "JSON parse error, stray '@'"],
    ['{"a":1 @}', "JSON parse error, stray '@'"],
    ['{"a":%d}', "JSON parse error, stray '%'"],
    ['{"a":Infinity}', "JSON parse error, stray 'I'"],
    ['{"a":"x', `JSON parse error, stray '"x'`],
    ['{"a":"x\\', `JSON parse error, stray '"x\\'`],
    ["{\"a\":'x", "JSON parse error, stray ''x'"],
    ['{"a":1}}', 'Expecting at most one JSON value'],
    ['{"a":1} {"b":2}', 'Expecting at most one JSON value'],
    ['{"a":1}]', 'Expecting at most one JSON value'],
    ['{"a":1}x', 'Expecting at most one JSON value'],
    ['{"a":1}  @', 'Expecting at most one JSON value'],
    ['{"a":' + '['.repeat(1024) + ']'.repeat(1024) + '}', 'JSON nesting depth limit exceeded'],
  ];
  it.each(bad)('%j fails', (text, message) => {
    expect(errorOf(() => parseQemuJson(text))).toBe(message);
  });

  it('allows 1024 levels of nesting', () => {
    expect(() => parseQemuJson('{"a":' + '['.repeat(1023) + ']'.repeat(1023) + '}')).not.toThrow();
  });
});

describe('parseOptionText', () => {
  it('takes JSON only when the text starts with {', () => {
    expect(parseOptionText('{"driver":"x"}', 'driver')).toEqual({ json: true, value: { driver: 'x' } });
    expect(parseOptionText(' {"driver":"x"}', 'driver')).toEqual({ json: false, value: { driver: ' {"driver":"x"}' } });
    expect(parseOptionText('[1]', 'driver')).toEqual({ json: false, value: { driver: '[1]' } });
  });
});

describe('strtosz', () => {
  const cases: [string, bigint | undefined][] = [
    ['0', 0n], ['1', 1n], ['1k', 1024n], ['1K', 1024n], ['1b', 1n], ['1B', 1n],
    ['1M', 1n << 20n], ['1G', 1n << 30n], ['1T', 1n << 40n], ['1P', 1n << 50n], ['1E', 1n << 60n],
    ['1.5k', 1536n], ['1.k', 1024n], ['1.5G', 3n << 29n], ['0.5k', 512n], ['1.0', 1n],
    ['1.0000001k', 1024n], ['08k', 8192n], [' 1k', 1024n], ['+1k', 1024n],
    ['0x10', 16n], ['0x1k', 1024n], ['15E', 15n << 60n], ['18446744073709551615', 2n ** 64n - 1n],
    ['1.5', undefined], ['0.5', undefined], ['1e3', undefined], ['1.5e1k', undefined], ['1k ', undefined],
    ['-1k', undefined], ['-0', undefined], ['1kB', undefined], ['.5k', undefined], ['1Z', undefined],
    ['16E', undefined], ['18446744073709551616', undefined], ['', undefined], ['k', undefined],
    ['0x', undefined], ['0x1.5k', undefined], ['00x10', undefined],
  ];
  it.each(cases)('%j → %s', (text, expected) => {
    expect(strtosz(text)).toBe(expected);
  });
});
