/**
 * The QMP protocol over real sockets against an in-process daemon: greeting,
 * negotiation, input split at every byte boundary, several commands per
 * packet, junk and oversized input, many clients at once, a client that
 * never reads, events, pretty printing, several monitors, EOF.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { Daemon } from '../../src/daemon/daemon.ts';
import { createLogger } from '../../src/daemon/logger.ts';
import type { StartupConfig } from '../../src/daemon/cli.ts';
import { RawQmpConnection } from '../../src/qmp/raw-connection.ts';
import { QmpMonitor } from '../../src/qmp/monitor.ts';
import { DEFAULT_SESSION_LIMITS } from '../../src/qmp/session.ts';
import { greeting } from '../../src/qmp/version.ts';
import { tempDir } from '../helpers/daemons.ts';
import { getPort } from '../helpers/port.ts';

const dir = tempDir('blockd-qmp-');
const sock = join(dir, 'qmp.sock');
const prettySock = join(dir, 'pretty.sock');
let port: number;
let daemon: Daemon;

function config(extra: Partial<StartupConfig> = {}): StartupConfig {
  return {
    objects: [], blockdevs: [], chardevs: [], monitors: [], nbdServers: [], exports: [], commands: [],
    daemonize: false, logLevel: 'silent', ...extra,
  };
}

beforeAll(async () => {
  port = await getPort();
  daemon = new Daemon(createLogger('silent'));
  daemon.onQuit = () => undefined;
  await daemon.start(config({
    chardevs: [
      { option: 'chardev', value: `socket,id=m0,path=${sock},server=on,wait=off` },
      { option: 'chardev', value: `socket,id=m1,path=${prettySock},server=on,wait=off` },
      { option: 'chardev', value: `socket,id=m2,host=127.0.0.1,port=${port},server=on,wait=off` },
    ],
    monitors: [
      { option: 'monitor', value: 'm0' },
      { option: 'monitor', value: 'chardev=m1,pretty=on' },
      { option: 'monitor', value: { chardev: 'm2', mode: 'control' } },
    ],
    blockdevs: [{ option: 'blockdev', value: 'null-co,node-name=n0,size=1048576' }],
  }));
});

afterAll(async () => {
  await daemon.shutdown();
});

const VERSION = '{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "blockd 0.1.0"}';

describe('greeting and negotiation', () => {
  it("greets with qsd's shape and refuses commands until qmp_capabilities", async () => {
    const c = await RawQmpConnection.open(sock);
    const g = await c.nextRaw();
    expect(g.text).toBe(`{"QMP": {"version": ${VERSION}, "capabilities": ["oob"]}}\r\n`);
    expect(g.value).toEqual({ QMP: greeting() });
    c.send('{"execute":"query-version","id":1}\n');
    expect((await c.nextRaw()).text).toBe(`{"id": 1, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}\r\n`);
    c.send('{"execute":"nope"}\n');
    expect(await c.next()).toEqual({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } });
    c.send('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":"n"}\n');
    expect((await c.nextRaw()).text).toBe('{"return": {}, "id": "n"}\r\n');
    c.send('{"execute":"qmp_capabilities","id":2}\n');
    expect(await c.next()).toEqual({ id: 2, error: { class: 'CommandNotFound', desc: 'Capabilities negotiation is already complete, command ignored' } });
    c.send('{"execute":"query-version","id":3}');
    expect((await c.nextRaw()).text).toBe(`{"return": ${VERSION}, "id": 3}\r\n`);
    // With OOB enabled exec-oob is accepted, but no blockd command runs out of band.
    c.send('{"exec-oob":"query-version","id":4}');
    expect(await c.next()).toEqual({ id: 4, error: { class: 'GenericError', desc: 'The command query-version does not support OOB' } });
    c.close();
  });

  it("checks the request envelope with qsd's texts, in qsd's order", async () => {
    const c = await RawQmpConnection.negotiated(sock);
    const cases: [string, Record<string, unknown>][] = [
      ['{"foo":1}', { error: { class: 'GenericError', desc: "QMP input member 'foo' is unexpected" } }],
      ['[1,2]', { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } }],
      ['{"execute":1,"id":6}', { id: 6, error: { class: 'GenericError', desc: "QMP input member 'execute' must be a string" } }],
      ['{"id":7}', { id: 7, error: { class: 'GenericError', desc: "QMP input lacks member 'execute'" } }],
      ['{"execute":"query-version","arguments":1}', { error: { class: 'GenericError', desc: "QMP input member 'arguments' must be an object" } }],
      ['{"execute":"query-version","arguments":{"x":1}}', { error: { class: 'GenericError', desc: "Parameter 'x' is unexpected" } }],
      ['{"exec-oob":"query-version"}', { error: { class: 'GenericError', desc: "QMP input member 'exec-oob' is unexpected" } }],
      ['{"execute":"query-version","control":{}}', { error: { class: 'GenericError', desc: "QMP input member 'control' is unexpected" } }],
      ['{"foo":1,"execute":2}', { error: { class: 'GenericError', desc: "QMP input member 'execute' must be a string" } }],
      ['{"id":1,"zzz":2,"aaa":1}', { id: 1, error: { class: 'GenericError', desc: "QMP input member 'aaa' is unexpected" } }],
      ['{"execute":"nope","id":null}', { id: null, error: { class: 'CommandNotFound', desc: 'The command nope has not been found' } }],
    ];
    for (const [input, expected] of cases) {
      c.send(`${input}\n`);
      expect(await c.next(), input).toEqual(expected);
    }
    c.close();
  });
});

describe('framing', () => {
  const script = '{"execute":"query-version","id":"a"}{"execute":"query-commands","id":"b"}\n';

  it('handles input split at every byte boundary', async () => {
    const bytes = Buffer.from(script);
    for (let cut = 1; cut < bytes.length; cut++) {
      const c = await RawQmpConnection.negotiated(sock);
      c.send(bytes.subarray(0, cut));
      await new Promise((r) => setTimeout(r, 2));
      c.send(bytes.subarray(cut));
      const a = await c.next();
      const b = await c.next();
      expect(a.id, `cut ${cut}`).toBe('a');
      expect(b.id, `cut ${cut}`).toBe('b');
      c.destroy();
    }
  });

  it('runs several commands from one packet, in order, with any JSON id echoed', async () => {
    const c = await RawQmpConnection.negotiated(sock);
    const ids = [1, 'two', [3, { x: null }], { four: true }, 5.5, 18446744073709551615n];
    c.send(ids.map((id) => `{"execute":"query-version","id":${typeof id === 'bigint' ? id.toString() : JSON.stringify(id)}}`).join(''));
    const texts: string[] = [];
    for (let i = 0; i < ids.length; i++) texts.push((await c.nextRaw()).text);
    expect(texts.map((t) => t.slice(t.indexOf('"id": ') + 6, -3))).toEqual(['1', '"two"', '[3, {"x": null}]', '{"four": true}', '5.5', '18446744073709551615']);
    c.close();
  });

  it('answers junk, non-objects and oversized input with GenericError and stays usable', async () => {
    const c = await RawQmpConnection.negotiated(sock);
    c.send('{"execute":"query-version", bad}\n');
    expect(await c.next()).toEqual({ error: { class: 'GenericError', desc: "JSON parse error, invalid keyword 'bad'" } });
    c.send('@@@\n');
    expect(await c.next()).toEqual({ error: { class: 'GenericError', desc: "JSON parse error, stray '@'" } });
    c.send('"just a string"\n');
    expect(await c.next()).toEqual({ error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
    const huge = `{"execute":"query-version","id":"${'x'.repeat(DEFAULT_SESSION_LIMITS.maxMessageBytes + 10)}"}\n`;
    c.send(huge);
    expect(await c.next()).toEqual({ error: { class: 'GenericError', desc: 'JSON token size limit exceeded' } });
    // Whatever followed the cut-off string is resynchronised; a clean command then works.
    c.send('\n{"execute":"query-version","id":"after"}\n');
    let m = await c.next();
    while (m.id !== 'after') m = await c.next();
    expect(m.return).toBeDefined();
    c.close();
  });

  it('answers everything sent before EOF, then closes', async () => {
    const c = await RawQmpConnection.negotiated(sock);
    c.send('{"execute":"query-version","id":1}{"execute":"query-version","id":2}');
    c.socket.end();
    expect((await c.next()).id).toBe(1);
    expect((await c.next()).id).toBe(2);
    await c.closedPromise;
  });
});

describe('clients and monitors', () => {
  it('serves 100 clients on one monitor at once', async () => {
    const clients = await Promise.all(Array.from({ length: 100 }, () => RawQmpConnection.negotiated(sock)));
    clients.forEach((c, i) => c.send(`{"execute":"query-version","id":${i}}{"execute":"query-block-exports","id":"e${i}"}`));
    const replies = await Promise.all(clients.map(async (c) => [await c.next(), await c.next()]));
    replies.forEach(([a, b], i) => {
      expect(a!.id).toBe(i);
      expect(b).toEqual({ return: [], id: `e${i}` });
    });
    for (const c of clients) c.close();
  });

  it('serves Unix, TCP and pretty monitors side by side, events to every negotiated client only', async () => {
    const unix = await RawQmpConnection.negotiated(sock);
    const tcp = await RawQmpConnection.negotiated({ host: '127.0.0.1', port });
    const pretty = await RawQmpConnection.open(prettySock);
    const g = await pretty.nextRaw();
    expect(g.text).toBe(`${JSON.stringify({ QMP: greeting() }, null, 4).replace(/\n/g, '\r\n').replace('"qemu": {\r\n                "major": 7,\r\n                "minor": 2,\r\n                "micro": 22', '"qemu": {\r\n                "micro": 22,\r\n                "minor": 2,\r\n                "major": 7')}\r\n`);
    const silent = await RawQmpConnection.negotiated(sock, false);
    pretty.send('{"execute":"qmp_capabilities"}');
    expect((await pretty.nextRaw()).text).toBe('{\r\n    "return": {\r\n    }\r\n}\r\n');
    daemon.events.emit('TEST_EVENT', { n: 1 });
    for (const c of [unix, tcp]) {
      const e = await c.nextRaw();
      expect(e.text).toMatch(/^\{"timestamp": \{"seconds": \d+, "microseconds": \d+\}, "event": "TEST_EVENT", "data": \{"n": 1\}\}\r\n$/);
    }
    const pe = await pretty.next();
    expect(pe.event).toBe('TEST_EVENT');
    const ts = pe.timestamp as { seconds: number; microseconds: number };
    expect(Math.abs(ts.seconds - Date.now() / 1000)).toBeLessThan(5);
    expect(ts.microseconds).toBeLessThan(1e6);
    // The client that has not negotiated gets no event: its next message is the reply to this.
    silent.send('{"execute":"qmp_capabilities","id":"s"}');
    expect((await silent.next()).id).toBe('s');
    expect(silent.buffered).toBe(0);
    for (const c of [unix, tcp, pretty, silent]) c.close();
  });

  it('stops reading from a client that never reads its replies, and loses nothing', async () => {
    const c = await RawQmpConnection.negotiated(sock);
    c.socket.pause();
    const n = 800;
    const cmd = '{"execute":"query-qmp-schema"}';
    for (let i = 0; i < n; i++) c.socket.write(cmd);
    await new Promise((r) => setTimeout(r, 1500));
    const mon = daemon.qmp.monitors[0]!;
    for (const b of mon.buffers()) {
      // One reply may overshoot the soft limit; input beyond the high mark waits in the kernel.
      expect(b.pendingOutput).toBeLessThan(DEFAULT_SESSION_LIMITS.outSoft + 1024 * 1024);
      expect(b.bufferedInput).toBeLessThan(DEFAULT_SESSION_LIMITS.inHigh + 256 * 1024);
    }
    c.socket.resume();
    let got = 0;
    while (got < n) {
      const m = await c.next(30_000);
      if ('return' in m) got++;
    }
    expect(got).toBe(n);
    c.close();
  });

  it('drops a client whose unread output passes the hard limit (events keep coming)', async () => {
    const limits = { ...DEFAULT_SESSION_LIMITS, outSoft: 4096, outHard: 64 * 1024 };
    const mon = new QmpMonitor('small', daemon.qmp.dispatcher, daemon.events, { pretty: false, greeting: greeting(), log: daemon.log, limits });
    const path = join(dir, 'small.sock');
    await mon.listen({ type: 'unix', path });
    const c = await RawQmpConnection.negotiated(path);
    c.socket.pause();
    const reader = await RawQmpConnection.negotiated(path);
    let sent = 0;
    while (sent < 100_000 && mon.clients > 1) {
      daemon.events.emit('FLOOD', { i: sent++, pad: 'x'.repeat(200) });
      if (sent % 100 === 0) await new Promise((r) => setImmediate(r));
    }
    expect(mon.clients).toBe(1);
    // The reader, which reads, got every event.
    let last = -1;
    while (last < sent - 1) last = ((await reader.next()).data as { i: number }).i;
    c.destroy();
    reader.close();
    await mon.close();
    expect(existsSync(path)).toBe(false);
  });
});

describe('start-up', () => {
  it('runs config-file QMP commands after the exports, and fails start-up on the first error', async () => {
    const d = new Daemon(createLogger('silent'));
    const s = join(dir, 'startup.sock');
    await d.start(config({
      chardevs: [{ option: 'chardev', value: `socket,id=m,path=${s},server=on,wait=off` }],
      monitors: [{ option: 'monitor', value: 'm' }],
      commands: [
        { execute: 'blockdev-add', arguments: { driver: 'null-co', 'node-name': 'late', size: 4096 } },
        { execute: 'object-add', arguments: { 'qom-type': 'iothread', id: 'io0' } },
      ],
    }));
    const c = await RawQmpConnection.negotiated(s);
    const r = await c.command('query-named-block-nodes', { flat: true });
    expect((r.return as { 'node-name': string }[]).map((n) => n['node-name'])).toEqual(['late']);
    c.close();
    await d.shutdown();
    expect(existsSync(s)).toBe(false);

    const bad = new Daemon(createLogger('silent'));
    const err = await bad.start(config({ commands: [{ execute: 'blockdev-del', arguments: { 'node-name': 'x' } }] })).catch((e) => e);
    expect(err.line()).toBe(`blockd: --config qmp {"execute":"blockdev-del","arguments":{"node-name":"x"}}: Failed to find node with node-name='x'`);
  });

  it("parses --chardev and --monitor as qsd does", async () => {
    const cases: [Partial<StartupConfig>, string][] = [
      [{ monitors: [{ option: 'monitor', value: 'nope' }] }, 'blockd: --monitor nope: chardev "nope" not found'],
      [{ chardevs: [{ option: 'chardev', value: `socket,id=m,path=${dir}/x.sock,server=on,wait=off` }], monitors: [{ option: 'monitor', value: 'chardev=m,pretty=maybe' }] },
        "blockd: --monitor chardev=m,pretty=maybe: Parameter 'pretty' expects 'on' or 'off'"],
      [{ chardevs: [{ option: 'chardev', value: `socket,id=m,path=${dir}/x.sock,server=on,wait=off` }], monitors: [{ option: 'monitor', value: 'm,mode=readline' }] },
        'blockd: --monitor m,mode=readline: Only QMP is supported'],
      [{ chardevs: [{ option: 'chardev', value: `socket,id=m,path=${dir}/x.sock,server=on,wait=off` }], monitors: [{ option: 'monitor', value: 'm' }, { option: 'monitor', value: 'm' }] },
        "blockd: --monitor m: Device 'm' is in use"],
      [{ chardevs: [{ option: 'chardev', value: `socket,id=m,path=${dir}/x.sock,server=on,wait=off,bogus=1` }] }, `blockd: --chardev socket,id=m,path=${dir}/x.sock,server=on,wait=off,bogus=1: Invalid parameter 'bogus'`],
      [{ chardevs: [{ option: 'chardev', value: 'socket,path=/x,server=on,wait=off' }] }, 'blockd: --chardev socket,path=/x,server=on,wait=off: chardev: no id specified'],
      [{ chardevs: [{ option: 'chardev', value: 'socket,id=m,host=127.0.0.1,server=on,wait=off' }] }, 'blockd: --chardev socket,id=m,host=127.0.0.1,server=on,wait=off: chardev: socket: no port given'],
      [{ chardevs: [{ option: 'chardev', value: 'nope,id=m' }] }, "blockd: --chardev nope,id=m: 'nope' is not a valid char driver name"],
      [{ chardevs: [{ option: 'chardev', value: 'socket,id=m,path=/a,host=b,port=5,server=on,wait=off' }] }, "blockd: --chardev socket,id=m,path=/a,host=b,port=5,server=on,wait=off: None or one of 'path', 'fd' or 'host' option required."],
      [{ chardevs: [{ option: 'chardev', value: 'socket,id=1m,path=/a,server=on,wait=off' }] }, "blockd: --chardev socket,id=1m,path=/a,server=on,wait=off: Parameter 'id' expects an identifier"],
      [{ chardevs: [{ option: 'chardev', value: 'socket,id=m,path=/nonexistent/z.sock,server=on,wait=off' }], monitors: [{ option: 'monitor', value: 'm' }] },
        'blockd: --chardev socket,id=m,path=/nonexistent/z.sock,server=on,wait=off: Failed to bind socket to /nonexistent/z.sock: No such file or directory'],
    ];
    for (const [extra, line] of cases) {
      const d = new Daemon(createLogger('silent'));
      const e = await d.start(config(extra)).then(() => undefined, (x) => x);
      expect(e?.line?.(), line).toBe(line);
    }
  });

  it('waits for the first client with wait=on (the default for server=on)', async () => {
    const d = new Daemon(createLogger('silent'));
    const s = join(dir, 'wait.sock');
    let started = false;
    const p = d.start(config({
      chardevs: [{ option: 'chardev', value: `socket,id=m,path=${s},server=on` }],
      monitors: [{ option: 'monitor', value: 'm' }],
    })).then(() => { started = true; });
    for (let i = 0; i < 100 && !existsSync(s); i++) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 100));
    expect(started).toBe(false);
    const sock2 = connect(s);
    await p;
    expect(started).toBe(true);
    sock2.destroy();
    await d.shutdown();
  });
});
