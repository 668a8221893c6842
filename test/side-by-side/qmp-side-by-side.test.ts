/**
 * qemu-storage-daemon and blockd, started with the same arguments, answer
 * the same QMP script byte for byte (QEMU's key order, CR LF, texts and
 * classes), once the few things that must differ are normalised: the
 * "package" string, event timestamps, each daemon's temporary directory and
 * the random part of implicit node names ("#block123").
 *
 * Not compared, on purpose: x-debug-query-block-graph (qsd computes
 * permissions lazily), query-qmp-schema and query-commands (compared as
 * sets in qmp-command-set.test.ts, and type by type below), blockdev-reopen of file nodes, and block_resize of a protocol
 * node under a written raw node (qsd's raw then unshares resize on its file,
 * blockd's raw does not).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { truncateSync, writeFileSync } from 'node:fs';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { RawQmpConnection } from '../../src/qmp/raw-connection.ts';

const running: Running[] = [];
afterAll(async () => { for (const r of running) await r.stop(); });

function args(dir: string): string[] {
  return [
    '--chardev', `socket,id=m,path=${join(dir, 'qmp.sock')},server=on,wait=off`, '--monitor', 'm',
    '--chardev', `socket,id=p,path=${join(dir, 'pretty.sock')},server=on,wait=off`, '--monitor', 'chardev=p,pretty=on',
    '--blockdev', 'null-co,node-name=n0,size=1048576',
    '--blockdev', 'driver=raw,node-name=r0,file=n0',
    '--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'img')}`,
    '--blockdev', 'driver=raw,node-name=fr0,file=f0',
  ];
}

const SCRIPT = String.raw`
{"execute":"query-version"}
{"execute":"nope","id":1}
{"foo":1,"id":2}
{"execute":"qmp_capabilities","id":3}
{"execute":"qmp_capabilities","id":4}
{"execute":"query-version","id":{"a":[1,{}]}}
{"execute":"query-version"}{"execute":"query-version","id":"two in one"}
{"execute":"query-version","id":0.1}
{"execute":"query-version","id":1e-5}
{"execute":"query-version","id":-0.0}
{"execute":"query-version","id":18446744073709551615}
{"execute":"query-version","id":"é€😀\u0001\u007f/"}
{"execute":"query-version","id":01}
{"execute":"query-version","id":"\u12"}
{"execute":"query-version","id":"\ud800"}
{"execute":"query-version", bad}
{"execute":"query-version","id":@}
{'execute':'query-version','id':'single quotes'}
[1,2]
"str"
{"id":5}
{"execute":1}
{"execute":"query-version","arguments":1}
{"execute":"query-version","arguments":{"x":1}}
{"exec-oob":"query-version"}
{"execute":"query-version","control":{}}
{"execute":"query-version","execute":"x"}
{"id":1,"zzz":2,"aaa":1}
{"execute":"nope","id":6}
{"execute":"blockdev-add"}
{"execute":"blockdev-add","arguments":{"driver":"nope"}}
{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"n0"}}
{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"x","bogus":1}}
{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"x","size":"1"}}
{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"1x"}}
{"execute":"blockdev-add","arguments":{"driver":"null-co"}}
{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r9"}}
{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"f9","filename":"/nonexistent"}}
{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r9","file":{"driver":"file","filename":"@DIR@/img"},"size":"x"}}
{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"x1"}}
{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"x2","read-zeroes":true,"size":4096,"latency-ns":3}}
{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r1","file":{"driver":"null-co","size":512}}}
{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r2","file":"x1","offset":512,"size":1024}}
{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"fr1","file":{"driver":"file","filename":"@DIR@/img2"},"read-only":true,"cache":{"direct":false,"no-flush":true}}}
{"execute":"query-named-block-nodes"}
{"execute":"query-named-block-nodes","arguments":{"flat":true}}
{"execute":"query-named-block-nodes","arguments":{"flat":1}}
{"execute":"blockdev-del"}
{"execute":"blockdev-del","arguments":{"node-name":"nope"}}
{"execute":"blockdev-del","arguments":{"node-name":"x1"}}
{"execute":"blockdev-del","arguments":{"node-name":"r2"}}
{"execute":"blockdev-del","arguments":{"node-name":"x1"}}
{"execute":"blockdev-del","arguments":{"node-name":"x1"}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"raw","node-name":"r0","file":"n0","read-only":true}]}}
{"execute":"query-named-block-nodes","arguments":{"flat":true}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"raw","node-name":"r0","file":"n0"}]}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"raw","node-name":"r0"}]}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"raw","file":"n0"}]}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"raw","node-name":"zz","file":"n0"}]}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"null-co","node-name":"n0","size":5}]}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"null-co","node-name":"n0"}]}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"raw","node-name":"r0","file":"n0","detect-zeroes":"on","discard":"unmap"}]}}
{"execute":"query-named-block-nodes","arguments":{"flat":true}}
{"execute":"nbd-server-stop"}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"r0"}}
{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"@DIR@/nbd.sock"}}}
{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"@DIR@/nbd.sock"}}}}
{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"@DIR@/nbd2.sock"}}}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"r0","writable":true}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"r0"}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"r0"}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e2","node-name":"nope"}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"1bad","node-name":"fr0"}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e3","node-name":"fr1","writable":true}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e4","node-name":"x2","writable":true,"name":"w"}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e5","node-name":"fr0","iothread":"nope"}}
{"execute":"query-block-exports"}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"raw","node-name":"r0","file":"n0","read-only":true}]}}
{"execute":"blockdev-del","arguments":{"node-name":"r0"}}
{"execute":"blockdev-del","arguments":{"node-name":"n0"}}
{"execute":"block_resize","arguments":{"node-name":"r0","size":2097152}}
{"execute":"block_resize","arguments":{"node-name":"n0","size":-1}}
{"execute":"block_resize","arguments":{"node-name":"nope","size":1}}
{"execute":"block_resize","arguments":{"device":"fr0","size":1}}
{"execute":"block_resize","arguments":{"size":1}}
{"execute":"block_resize","arguments":{"node-name":"fr1","size":2097152}}
{"execute":"block_resize","arguments":{"node-name":"fr0","size":2097152}}
{"execute":"block_resize","arguments":{"node-name":"f0","size":3145728}}
{"execute":"query-named-block-nodes","arguments":{"flat":true}}
{"execute":"block-export-del","arguments":{"id":"e0"}}
{"execute":"block-export-del","arguments":{"id":"e0"}}
{"execute":"block-export-del","arguments":{"id":"e4","mode":"hard"}}
{"execute":"block-export-del","arguments":{"id":"zz","mode":"bogus"}}
{"execute":"nbd-server-add","arguments":{"device":"r0"}}
{"execute":"nbd-server-add","arguments":{"device":"r0","name":"x2"}}
{"execute":"nbd-server-add","arguments":{"device":"zz"}}
{"execute":"query-block-exports"}
{"execute":"nbd-server-remove","arguments":{"name":"r0"}}
{"execute":"nbd-server-remove","arguments":{"name":"r0","mode":"hard"}}
{"execute":"nbd-server-stop"}
{"execute":"query-block-exports"}
{"execute":"nbd-server-stop"}
{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}
{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}
{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io1","poll-max-ns":5}}
{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io2","bogus":5}}
{"execute":"object-add","arguments":{"qom-type":"nope","id":"x"}}
{"execute":"object-add","arguments":{"qom-type":"secret","id":"s0","data":"hunter2"}}
{"execute":"object-add","arguments":{"qom-type":"secret","id":"s1"}}
{"execute":"object-add","arguments":{"qom-type":"secret","id":"s2","data":"aGk=","format":"base64"}}
{"execute":"object-add","arguments":{"qom-type":"secret","id":"s3","data":"!!","format":"base64"}}
{"execute":"object-add","arguments":{"qom-type":"secret","id":"s4","file":"/nonexistent"}}
{"execute":"object-add","arguments":{"qom-type":"secret","id":"s5","file":"@DIR@/img","data":"x"}}
{"execute":"object-add","arguments":{"qom-type":"iothread","id":"1bad"}}
{"execute":"object-add","arguments":{"id":"x"}}
{"execute":"object-add","arguments":{"qom-type":"iothread"}}
{"execute":"object-del","arguments":{"id":"io0"}}
{"execute":"object-del","arguments":{"id":"io0"}}
{"execute":"object-del","arguments":{"id":"s0"}}
{"execute":"query-version","arguments":{}}
`.trim().split('\n');

const PRETTY_SCRIPT = [
  '{"execute":"qmp_capabilities"}',
  '{"execute":"query-version","id":[1,{"a":[]},{}]}',
  '{"execute":"nope"}',
  '{"execute":"query-named-block-nodes","arguments":{"flat":true}}',
];

function normalise(text: string, dir: string): string {
  return text
    .split(dir).join('@DIR@')
    .replace(/"package": "[^"]*"/g, '"package": "P"')
    .replace(/("package": )"[^"]*"/g, '$1"P"')
    .replace(/"seconds": \d+,(\s*)"microseconds": \d+/g, '"seconds": S,$1"microseconds": U')
    .replace(/#block\d+/g, '#block');
}

/** Runs the script on one monitor; per input line, every message it produced, as normalised text. */
async function runScript(path: string, script: string[], dir: string): Promise<string[][]> {
  const c = await RawQmpConnection.open(path);
  const out: string[][] = [[normalise((await c.nextRaw()).text, dir)]];
  for (const line of script) {
    c.send(`${line.split('@DIR@').join(dir)}\n{"execute":"query-version","id":"__sync__"}\n`);
    const step: string[] = [];
    for (;;) {
      const m = await c.nextRaw();
      if (m.value.id === '__sync__') break;
      step.push(normalise(m.text, dir));
    }
    out.push(step);
  }
  c.close();
  return out;
}

type Schema = Record<string, unknown>[];

/** A type of a query-qmp-schema answer with the numbered names resolved away, so two schemas compare. */
function canon(schema: Schema, name: string): unknown {
  const by = new Map(schema.map((e) => [e.name as string, e]));
  const walk = (n: string, stack: string[]): unknown => {
    const e = by.get(n);
    if (!e) return `?${n}`;
    if (e['meta-type'] === 'builtin') return n;
    if (stack.includes(n)) return '<recursive>';
    const s = [...stack, n];
    switch (e['meta-type']) {
      case 'enum': return { enum: e.values };
      case 'array': return { array: walk(e['element-type'] as string, s) };
      case 'alternate': return { alternate: (e.members as { type: string }[]).map((m) => walk(m.type, s)) };
      default: {
        const o: Record<string, unknown> = {
          members: (e.members as { name: string; type: string }[]).map((m) => ({ name: m.name, optional: 'default' in m, type: walk(m.type, s) })),
        };
        if (e.tag) {
          o.tag = e.tag;
          o.variants = Object.fromEntries((e.variants as { case: string; type: string }[]).map((v) => [v.case, walk(v.type, s)]));
        }
        return o;
      }
    }
  };
  return walk(name, []);
}

/** Commands whose types are, on purpose, a subset of qsd's (fewer drivers, export types, object types; format-specific untyped). */
const SCHEMA_SUBSETS = new Set([
  'blockdev-add', 'blockdev-reopen', 'blockdev-create', 'block-export-add', 'query-block-exports', 'object-add',
  'query-qmp-schema', 'query-named-block-nodes', 'query-block', 'x-blockdev-amend', 'query-blockstats',
]);

async function schemaOf(path: string): Promise<Schema> {
  const c = await RawQmpConnection.negotiated(path);
  const r = await c.command('query-qmp-schema');
  c.close();
  return r.return as Schema;
}

async function session(which: 'qsd' | 'blockd'): Promise<{ main: string[][]; pretty: string[][]; schema: Schema }> {
  const dir = tempDir(`qmp-sbs-${which}-`);
  writeFileSync(join(dir, 'img'), Buffer.alloc(0));
  truncateSync(join(dir, 'img'), 1 << 20);
  writeFileSync(join(dir, 'img2'), Buffer.alloc(0));
  truncateSync(join(dir, 'img2'), 1 << 20);
  const d = await startDaemon(which, args(dir), join(dir, 'pretty.sock'));
  running.push(d);
  const main = await runScript(join(dir, 'qmp.sock'), SCRIPT, dir);
  const pretty = await runScript(join(dir, 'pretty.sock'), PRETTY_SCRIPT, dir);
  const schema = await schemaOf(join(dir, 'qmp.sock'));
  await d.stop();
  return { main, pretty, schema };
}

describe('QMP side by side with qemu-storage-daemon', () => {
  let qsd: Awaited<ReturnType<typeof session>>;
  let blockd: Awaited<ReturnType<typeof session>>;

  it('answers the same script with the same bytes', async () => {
    qsd = await session('qsd');
    blockd = await session('blockd');
    expect(blockd.main[0]).toEqual(qsd.main[0]);
    SCRIPT.forEach((line, i) => expect.soft(blockd.main[i + 1], line).toEqual(qsd.main[i + 1]));
    PRETTY_SCRIPT.forEach((line, i) => expect.soft(blockd.pretty[i + 1], `pretty: ${line}`).toEqual(qsd.pretty[i + 1]));
  });

  it("describes every command and event it shares with qsd with qsd's argument and return types", () => {
    const q = new Map(qsd.schema.map((e) => [e.name as string, e]));
    let shared = 0;
    for (const e of blockd.schema) {
      if (e['meta-type'] !== 'command' && e['meta-type'] !== 'event') continue;
      const name = e.name as string;
      const qe = q.get(name);
      expect(qe, `${name} exists in qsd`).toBeDefined();
      expect(e.features, `${name} features`).toEqual(qe!.features);
      if (SCHEMA_SUBSETS.has(name)) continue;
      shared++;
      for (const k of ['arg-type', 'ret-type']) {
        if (!(k in e)) continue;
        expect(canon(blockd.schema, e[k] as string), `${name} ${k}`).toEqual(canon(qsd.schema, qe![k] as string));
      }
    }
    expect(shared).toBeGreaterThan(30);
  });
});
