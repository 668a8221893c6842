import { execFile } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { BlockError } from '../../src/util/errors.ts';
import { blockdevOptionsType, BlockdevRef, BlockdevRefOrNull, OnOffAuto } from '../../src/blockdev/options.ts';
import { NbdServerOptions } from '../../src/qapi/block-export.ts';
import { BlockExportOptions } from '../helpers/exports.ts';
import { fromJson, fromKeyval, fromOptionText } from '../../src/qapi/visit.ts';
import { parseKeyval } from '../../src/qapi/keyval.ts';
import { arr, enm, obj, opt, ref, req, type ObjectType, type TypeRef } from '../../src/qapi/types.ts';
import type { Driver } from '../../src/blockdev/driver.ts';

const QSD = '/usr/bin/qemu-storage-daemon';

/** A graph with stub drivers carrying the options qsd 7.2 has for them. */
function stubGraph(): BlockGraph {
  const g = new BlockGraph();
  const stub = (name: string, options: ObjectType): void =>
    g.register({ name, kind: 'protocol', options, open: async () => ({}) } as Driver);
  stub('null-co', obj('BlockdevOptionsNull', [opt('size', 'int'), opt('latency-ns', 'uint64'), opt('read-zeroes', 'bool')]));
  stub('file', obj('BlockdevOptionsFile', [
    req('filename', 'str'), opt('pr-manager', 'str'), opt('locking', OnOffAuto),
    opt('aio', enm('BlockdevAioOptions', ['threads', 'native', 'io_uring'])), opt('aio-max-batch', 'int'),
    opt('drop-cache', 'bool'), opt('x-check-cache-dropped', 'bool'),
  ]));
  stub('raw', obj('BlockdevOptionsRaw', [req('file', BlockdevRef), opt('offset', 'int'), opt('size', 'int')]));
  stub('qcow2', obj('BlockdevOptionsQcow2', [req('file', BlockdevRef), opt('backing', BlockdevRefOrNull)]));
  return g;
}

const graph = stubGraph();
const OPTIONS: Record<string, { type: TypeRef; implied?: string }> = {
  blockdev: { type: blockdevOptionsType(graph), implied: 'driver' },
  'nbd-server': { type: NbdServerOptions },
  export: { type: BlockExportOptions, implied: 'type' },
};

function ours(option: string, text: string): string {
  const o = OPTIONS[option]!;
  try {
    return `OK ${JSON.stringify(fromOptionText(o.type, text, o.implied))}`;
  } catch (e) {
    if (!(e instanceof BlockError)) throw e;
    expect(e.code).toBe('EINVAL');
    return e.message;
  }
}

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    return (e as Error).message;
  }
  throw new Error('expected an error');
}

describe('fromKeyval / fromJson: values', () => {
  const B = OPTIONS.blockdev!.type;
  it('converts keyval strings per schema', () => {
    expect(fromOptionText(B, 'null-co,node-name=n,size=0x10,latency-ns=010,read-zeroes=yes,cache.direct=on,cache.no-flush=n,discard=unmap,detect-zeroes=unmap', 'driver'))
      .toEqual({ driver: 'null-co', 'node-name': 'n', size: 16, 'latency-ns': 8, 'read-zeroes': true, cache: { direct: true, 'no-flush': false }, discard: 'unmap', 'detect-zeroes': 'unmap' });
    expect(fromOptionText(B, 'driver=null-co,size= +5,read-only=off,force-share=true,auto-read-only=false', 'driver'))
      .toEqual({ driver: 'null-co', size: 5, 'read-only': false, 'force-share': true, 'auto-read-only': false });
  });

  it('wraps negative uint64 values like strtoull', () => {
    expect(fromOptionText(B, 'driver=null-co,latency-ns=-1')).toEqual({ driver: 'null-co', 'latency-ns': 2 ** 64 });
    expect(fromOptionText(B, '{"driver":"null-co","latency-ns":-1}')).toEqual({ driver: 'null-co', 'latency-ns': 2 ** 64 });
  });

  it('visits BlockdevRef: a string references, an object defines inline (recursively)', () => {
    expect(fromOptionText(B, 'driver=raw,file=base')).toEqual({ driver: 'raw', file: 'base' });
    expect(fromOptionText(B, 'driver=raw,file.driver=raw,file.offset=512,file.file.driver=file,file.file.filename=/x,file.file.locking=off'))
      .toEqual({ driver: 'raw', file: { driver: 'raw', offset: 512, file: { driver: 'file', filename: '/x', locking: 'off' } } });
    expect(fromOptionText(B, '{"driver":"qcow2","file":"f","backing":null}')).toEqual({ driver: 'qcow2', file: 'f', backing: null });
    expect(fromOptionText(B, 'driver=qcow2,file=f,backing=')).toEqual({ driver: 'qcow2', file: 'f', backing: '' });
  });

  it('visits the CLI schemas', () => {
    expect(fromOptionText(NbdServerOptions, 'addr.type=inet,addr.host=::,addr.port=10809,addr.ipv6=on,max-connections=4'))
      .toEqual({ addr: { type: 'inet', host: '::', port: '10809', ipv6: true }, 'max-connections': 4 });
    expect(fromOptionText(NbdServerOptions, '{"addr":{"type":"unix","path":"/s"},"handshake-max-seconds":5}'))
      .toEqual({ addr: { type: 'unix', path: '/s' }, 'handshake-max-seconds': 5 });
    expect(fromOptionText(BlockExportOptions, 'nbd,id=e,node-name=n,writable=on,bitmaps.0=a,bitmaps.1.node=x,bitmaps.1.name=y,allocation-depth=on', 'type'))
      .toEqual({ type: 'nbd', id: 'e', 'node-name': 'n', writable: true, bitmaps: ['a', { node: 'x', name: 'y' }], 'allocation-depth': true });
  });

  it('takes plain JS values for JSON (as from JSON.parse)', () => {
    expect(fromJson(B, { driver: 'null-co', size: 1024, cache: { direct: false } })).toEqual({ driver: 'null-co', size: 1024, cache: { direct: false } });
    expect(errorOf(() => fromJson(B, { driver: 'null-co', size: 1.5 }))).toBe("Invalid parameter type for 'size', expected: integer");
    expect(errorOf(() => fromJson(B, { driver: 'null-co', size: 2 ** 64 }))).toBe("Invalid parameter type for 'size', expected: integer");
  });

  const T = obj('T', [
    opt('i8', 'int8'), opt('u8', 'uint8'), opt('i32', 'int32'), opt('sz', 'size'), opt('num', 'number'),
    opt('list', arr('int')), opt('e', arr(enm('E', ['a', 'b']))), opt('any', 'any'), opt('nul', 'null'),
  ]);
  const good: [string, unknown][] = [
    ['sz=1.5k,num=-2.5e1', { sz: 1536, num: -25 }],
    ['sz=0x100,num=0x10', { sz: 256, num: 16 }],
    ['i8=-128,u8=255,i32=2147483647', { i8: -128, u8: 255, i32: 2147483647 }],
    ['list.0=1,list.1=0x2', { list: [1, 2] }],
    ['any.x=1,any.y.0=2', { any: { x: '1', y: ['2'] } }],
  ];
  it.each(good)('keyval %j', (text, expected) => {
    expect(fromKeyval(T, parseKeyval(text))).toEqual(expected);
  });
  const bad: [string, string][] = [
    ['i8=128', "Parameter 'i8' expects int8_t"],
    ['u8=-1', "Parameter 'u8' expects uint8_t"],
    ['i32=x', "Parameter 'i32' expects integer"],
    ['sz=1.5', "Parameter 'sz' expects size"],
    ['sz=16E', "Parameter 'sz' expects size"],
    ['num=inf', "Invalid parameter type for 'num', expected: number"],
    ['num=1e999', "Invalid parameter type for 'num', expected: number"],
    ['list.0=x', "Parameter 'list.0' expects integer"],
    ['list.0=1,list.1=x', "Parameter 'list.1' expects integer"],
    ['list=1', "Invalid parameter type for 'list', expected: array"],
    ['e.0=c', "Parameter 'null' does not accept value 'c'"],
    ['nul=', "Invalid parameter type for 'nul', expected: null"],
  ];
  it.each(bad)('keyval %j fails', (text, message) => {
    expect(errorOf(() => fromKeyval(T, parseKeyval(text)))).toBe(message);
  });
  const badJson: [unknown, string][] = [
    [{ i8: 200 }, "Parameter 'i8' expects int8_t"],
    [{ u8: -1 }, "Parameter 'u8' expects uint8_t"],
    [{ sz: 'x' }, "Parameter 'sz' expects uint64"],
    [{ sz: 1.5 }, "Parameter 'sz' expects uint64"],
    [{ num: '1' }, "Invalid parameter type for 'num', expected: number"],
    [{ list: [1, 'x'] }, "Invalid parameter type for 'list[1]', expected: integer"],
    [{ list: {} }, "Invalid parameter type for 'list', expected: array"],
    [{ nul: 0 }, "Invalid parameter type for 'nul', expected: null"],
  ];
  it.each(badJson)('json %j fails', (value, message) => {
    expect(errorOf(() => fromJson(T, value))).toBe(message);
  });

  it('names the root <anonymous> when it is not an object', () => {
    expect(errorOf(() => fromJson(T, 5))).toBe("Invalid parameter type for '<anonymous>', expected: object");
  });

  it('resolves refs through the enclosing type, then the given types', () => {
    const Node: ObjectType = obj('Node', [req('v', 'int'), opt('next', ref('Node'))]);
    expect(fromJson(Node, { v: 1, next: { v: 2, next: { v: 3 } } })).toEqual({ v: 1, next: { v: 2, next: { v: 3 } } });
    expect(errorOf(() => fromJson(Node, { v: 1, next: { v: 2, next: {} } }))).toBe("Parameter 'next.next.v' is missing");
    const Holder = obj('Holder', [req('n', ref('Node'))]);
    expect(fromJson(Holder, { n: { v: 1 } }, { types: { Node } })).toEqual({ n: { v: 1 } });
    expect(() => fromJson(Holder, { n: { v: 1 } })).toThrow(/cannot be resolved/);
  });
});

/**
 * Bad arguments whose message comes from option parsing/validation in qsd
 * (so blockd's parser must produce the very same text).
 */
const SIDE_BY_SIDE: [string, string][] = [
  // --blockdev, key=value
  ['blockdev', ''],
  ['blockdev', 'size=1'],
  ['blockdev', 'driver=null-co,size=abc'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,discard=foo'],
  ['blockdev', 'driver=null-co,read-only=maybe'],
  ['blockdev', 'driver=file'],
  ['blockdev', 'driver=nope'],
  ['blockdev', 'nope,node-name=n'],
  ['blockdev', 'null.co'],
  ['blockdev', 'driver=null-co,node-name=n,size=1048576,bogus=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1M,bogus=1'],
  ['blockdev', 'driver=null-co,node-name=n,bogus=1,size=1M'],
  ['blockdev', 'driver=null-co,size'],
  ['blockdev', 'size=1,null-co'],
  ['blockdev', 'null,,co,size=1'],
  ['blockdev', ',driver=null-co'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,,'],
  ['blockdev', 'driver=null-co,node-name=n,size=5 '],
  ['blockdev', 'driver=null-co,node-name=n,size='],
  ['blockdev', 'driver=null-co,node-name=n,size=9223372036854775808'],
  ['blockdev', 'driver=null-co,node-name=n,size=1e3'],
  ['blockdev', 'driver=null-co,node-name=n,size=1.0'],
  ['blockdev', 'driver=null-co,node-name=n,size=0b1'],
  ['blockdev', 'driver=null-co,node-name=n,size=08'],
  ['blockdev', 'driver=null-co,node-name=n,read-zeroes=TRUE'],
  ['blockdev', 'driver=null-co,node-name=n,read-zeroes='],
  ['blockdev', 'driver=null-co,node-name=n,size=1,latency-ns=18446744073709551616'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,latency-ns=x'],
  ['blockdev', 'driver=null-co,cache.direct=on,cache=x'],
  ['blockdev', 'driver=null-co,cache=x,cache.direct=on'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,cache.direct=x'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,cache.bogus=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,cache.bogus=1,discard=x'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,cache=on'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,cache.0=on'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,cache.direct.x=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,detect-zeroes=always'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,size.a=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,a.1=x'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,a.2=1,a.0=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,a.0=x,a.b=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,a.b=1,a=2'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,a.b.c=2,a.b=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,a..b=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,1a=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,0=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,_x=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,a.0x=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,a_b=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,__com.redhat_x=1'],
  ['blockdev', 'driver=null-co,node-name=n,size=1,a.b.0.c=1'],
  ['blockdev', `driver=null-co,node-name=n,size=1,${'a'.repeat(130)}=1`],
  ['blockdev', `driver=null-co,node-name=n,size=1,x.${'a'.repeat(130)}=1`],
  ['blockdev', 'help'],
  ['blockdev', '?'],
  ['blockdev', 'null-co,help'],
  ['blockdev', 'help,x'],
  ['blockdev', 'driver=raw,node-name=r'],
  ['blockdev', 'driver=raw,node-name=r,file.0=x'],
  ['blockdev', 'driver=raw,node-name=r,file.filename=/x'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=raw,file.file.driver=nope'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=raw,file.file.driver=file'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=file,file.filename=/x,file.locking=maybe'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=file,file.filename=/x,file.aio=posix'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=file,file.filename=/x,file.aio-max-batch=x'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=file,file.filename=/x,file.cache.direct=x'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=file,file.filename.x=1'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=file,file.filename=/x,file.bogus=1'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=file,file.filename=/x,offset=x'],
  ['blockdev', 'driver=raw,node-name=r,file.driver=file,file.filename=/x,file.bogus=1,offset=x'],
  // --blockdev, JSON
  ['blockdev', '{}'],
  ['blockdev', '{"size":1}'],
  ['blockdev', '{"driver":"null-co","size":"x"}'],
  ['blockdev', '{"driver":"null-co","size":1,"bogus":1}'],
  ['blockdev', '{"driver":"null-co","read-only":"on"}'],
  ['blockdev', '{"driver":"nope"}'],
  ['blockdev', '{"driver":1}'],
  ['blockdev', '{"driver":"null-co","discard":"x"}'],
  ['blockdev', '{"driver":"null-co","discard":1}'],
  ['blockdev', '{"driver":"null-co","node-name":null}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1.0}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1e3}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":18446744073709551615}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1,"latency-ns":1.5}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1,"latency-ns":"x"}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1,"latency-ns":18446744073709551616}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1,"latency-ns":-9223372036854775809}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1,"read-zeroes":null}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1,"cache":{"direct":1}}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1,"cache":{"direct":{}}}'],
  ['blockdev', '{"driver":"null-co","node-name":"n","size":1,"cache":[]}'],
  ['blockdev', '{"driver":"raw","node-name":"r"}'],
  ['blockdev', '{"driver":"raw","node-name":"r","file":1}'],
  ['blockdev', '{"driver":"raw","node-name":"r","file":null}'],
  ['blockdev', '{"driver":"raw","node-name":"r","file":[1]}'],
  ['blockdev', '{"driver":"raw","node-name":"r","file":{"driver":"raw","file":1}}'],
  ['blockdev', '{"driver":"raw","node-name":"r","file":{"driver":"raw","file":{"driver":"file"}}}'],
  ['blockdev', '{"driver":"raw","node-name":"r","file":{"driver":"raw","file":{"driver":"file","filename":"/x","bogus":1}}}'],
  ['blockdev', '{"driver":"qcow2","node-name":"q","file":"f","backing":1}'],
  ['blockdev', '{"driver":'],
  ['blockdev', '{"driver":"null-co"} x'],
  ['blockdev', '{"driver":"null-co","driver":"file"}'],
  ['blockdev', '{"driver":nul}'],
  ['blockdev', '{"driver" "x"}'],
  ['blockdev', '{1:2}'],
  ['blockdev', '{"a":1,}'],
  ['blockdev', '{"a":[1 2]}'],
  ['blockdev', '{"a":]}'],
  ['blockdev', '{"a":[1]]}'],
  ['blockdev', '{"a":"x\\q"}'],
  ['blockdev', '{"a":"\\u12"}'],
  ['blockdev', '{"a":"\\udc00"}'],
  ['blockdev', '{"a":01}'],
  ['blockdev', '{"a":-}'],
  ['blockdev', '{"a":1.'],
  ['blockdev', '{"a":@}'],
  ['blockdev', '{"a":"x'],
  ['blockdev', '{"a":1}}'],
  ['blockdev', '[1]'],
  ['blockdev', ' {"driver":"null-co"}'],
  ['blockdev', '{"a":' + '['.repeat(1100) + ']'.repeat(1100) + '}'],
  // --nbd-server
  ['nbd-server', ''],
  ['nbd-server', 'help'],
  ['nbd-server', 'addr.type=inet,addr.host=127.0.0.1'],
  ['nbd-server', 'addr.type=inet'],
  ['nbd-server', 'addr.type=bogus'],
  ['nbd-server', 'addr.host=x'],
  ['nbd-server', 'inet,addr.host=x'],
  ['nbd-server', 'addr=x'],
  ['nbd-server', 'addr.type=vsock'],
  ['nbd-server', 'addr.type=fd'],
  ['nbd-server', 'addr.type=inet,addr.host=h,addr.port=1,addr.to=70000'],
  ['nbd-server', 'addr.type=inet,addr.host=h,addr.port=1,addr.to=-1'],
  ['nbd-server', 'addr.type=inet,addr.host=h,addr.port=1,addr.numeric=2'],
  ['nbd-server', 'addr.type=unix,addr.path=/nonexistent/x.sock,max-connections=abc'],
  ['nbd-server', 'addr.type=unix,addr.path=/nonexistent/x.sock,max-connections=-1'],
  ['nbd-server', 'addr.type=unix,addr.path=/nonexistent/x.sock,max-connections=4294967296'],
  ['nbd-server', 'addr.type=unix,addr.path=/nonexistent/x.sock,addr.abstract=x'],
  ['nbd-server', 'addr.type=unix,addr.path=/nonexistent/x.sock,addr.bogus=x'],
  ['nbd-server', 'addr.type=unix,addr.path=/nonexistent/x.sock,bogus=x'],
  ['nbd-server', 'addr.type=unix,addr.path.x=1'],
  ['nbd-server', 'addr.type=unix,addr.path=/nonexistent/x.sock,tls-creds.x=1'],
  ['nbd-server', '{"addr":{"type":"inet"}}'],
  ['nbd-server', '{"addr":{"type":"inet","host":"h","port":1}}'],
  ['nbd-server', '{"addr":{"type":"inet","host":"h","port":"1","to":70000}}'],
  ['nbd-server', '{"addr":{"type":"inet","host":"h","port":"1","to":"x"}}'],
  ['nbd-server', '{"addr":{"type":"inet","host":"h","port":"1"},"max-connections":-1}'],
  ['nbd-server', '{"addr":{"type":"inet","host":"h","port":"1"},"max-connections":"x"}'],
  ['nbd-server', '{"addr":{"type":"unix","path":"/nonexistent/x.sock","tight":"yes"}}'],
  ['nbd-server', '{"addr":"x"}'],
  // --export
  ['export', ''],
  ['export', 'help'],
  ['export', 'nbd'],
  ['export', 'nbd,id=e'],
  ['export', 'type=nbd,id=e'],
  ['export', 'nbdx,id=e'],
  ['export', 'nbd,id=e,node-name=n,writable=maybe'],
  ['export', 'nbd,id=e,node-name=n,bitmaps=x'],
  ['export', 'nbd,id=e,node-name=n,bitmaps.0.node=x'],
  ['export', 'nbd,id=e,node-name=n,bitmaps.0=a,bitmaps.1.node=x'],
  ['export', 'nbd,id=e,node-name=n,bitmaps.0.node=x,bitmaps.0.name=y,bitmaps.0.z=1'],
  ['export', 'nbd,id=e,node-name=n,bitmaps.0.0=x'],
  ['export', 'nbd,id=e,node-name=n,bitmaps.1=x'],
  ['export', 'nbd,id=e,node-name=n,allocation-depth=x'],
  ['export', 'nbd,id=e,node-name=n,iothread.x=1'],
  ['export', 'nbd,id=e,node-name=n,bogus=1'],
  ['export', '{"type":"nbd","id":"e"}'],
  ['export', '{"type":"nbd","id":"e","node-name":"n","bitmaps":[1]}'],
  ['export', '{"type":"nbd","id":"e","node-name":"n","bitmaps":{}}'],
  ['export', '{"type":"nbd","id":"e","node-name":"n","bitmaps":[{"node":"a"}]}'],
  ['export', '{"type":"nbd","id":"e","node-name":"n","bitmaps":["a",{"node":"a","name":1}]}'],
  ['export', '{"type":"nbd","id":"e","node-name":"n","bitmaps":[{"node":"a","name":"b","c":1}]}'],
  ['export', '{"type":"nbd","id":"e","node-name":"n","writethrough":"on"}'],
];

/** Runs qsd with one bad option; resolves to its message without the "qemu-storage-daemon: --opt arg: " prefix. */
function qsdMessage(option: string, arg: string): Promise<string> {
  return new Promise((resolve) => {
    execFile(QSD, [`--${option}`, arg], { timeout: 3000, encoding: 'utf8' }, (err, _stdout, stderr) => {
      const prefix = `qemu-storage-daemon: --${option} ${arg}: `;
      const line = stderr.split('\n').find((l) => l.startsWith(prefix));
      if (line !== undefined) resolve(line.slice(prefix.length));
      else resolve(`<qsd gave no error line: ${err?.message ?? 'exit 0'}; stderr: ${stderr}>`);
    });
  });
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
  return out;
}

describe('side by side with qemu-storage-daemon 7.2', () => {
  it('qemu-storage-daemon is installed (this comparison must not be skipped)', async () => {
    const version = await new Promise<string>((resolve, reject) =>
      execFile(QSD, ['--version'], { timeout: 3000 }, (err, stdout) => (err ? reject(err) : resolve(stdout))));
    expect(version).toMatch(/qemu-storage-daemon version/);
  });

  it('reports the same message for every bad option', async () => {
    const results = await mapLimit(SIDE_BY_SIDE, 4, async ([option, arg]) => ({
      option, arg, qsd: await qsdMessage(option, arg), blockd: ours(option, arg),
    }));
    if (process.env.SHOW_SIDE_BY_SIDE) for (const r of results) console.log(`--${r.option} ${r.arg.slice(0, 80)}\n  qsd:    ${r.qsd.slice(0, 150)}\n  blockd: ${r.blockd.slice(0, 150)}`);
    const mismatches = results.filter((r) => r.qsd !== r.blockd);
    expect(mismatches).toEqual([]);
  }, 120_000);
});
