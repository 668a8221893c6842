/**
 * The chardev commands, x-blockdev-change and x-blockdev-set-iothread side by
 * side with qemu-storage-daemon 7.2: the same replies and errors (class and
 * text) for valid and invalid arguments; ringbuf contents in both formats
 * (QEMU's modified UTF-8, its replacement of invalid sequences, GLib's
 * base64); query-chardev's filenames as sockets connect and hang up (qsd,
 * without a frontend, hears a Unix peer's close but not a TCP peer's);
 * chardev-add of a waiting server replying once a client connects; and the
 * differences that are on purpose: blockd lists and opens fewer backends,
 * and refuses to move a node to an iothread (it has none).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import type { QmpCommandError } from '../../src/qmp/client/qmp-client.ts';
import { BOTH, startPair, type Pair, type Who } from '../helpers/pair.ts';

type Cmd = [string, Record<string, unknown>?];
const sock = (path: string, extra: Record<string, unknown> = {}) => ({ type: 'socket', data: { addr: { type: 'unix', data: { path } }, ...extra } });
const inet = (host: string, port: string, extra: Record<string, unknown> = {}) => ({ type: 'socket', data: { addr: { type: 'inet', data: { host, port } }, ...extra } });

describe('chardev and node-context commands side by side with qemu-storage-daemon', () => {
  let pair: Pair;
  const side = (who: Who) => pair[who];
  /** A reply as QMP gives it ({return} or {error: {class, desc}}), with the side's directory as DIR. */
  const ask = async (who: Who, cmd: string, args?: Record<string, unknown>): Promise<unknown> => {
    const dir = side(who).dir;
    const fix = (v: unknown) => (v === undefined ? v : JSON.parse(JSON.stringify(v).replaceAll('DIR', dir)));
    // Each monitor's socket is named after its daemon (qmp-qsd.sock, qmp-blockd.sock).
    const norm = (v: unknown) => JSON.parse(JSON.stringify(v ?? {}).replaceAll(dir, 'DIR').replaceAll(`qmp-${who}.sock`, 'qmp.sock'));
    try {
      return { return: norm(await side(who).qmp.execute(cmd, fix(args))) };
    } catch (e) {
      const err = e as QmpCommandError;
      return { error: { class: err.errorClass, desc: norm(err.desc) } };
    }
  };
  const script = async (cmds: Cmd[]) => {
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) for (const [c, a] of cmds) seen[who].push([c, a, await ask(who, c, a)]);
    return seen;
  };
  const chardevs = async (who: Who) => {
    const r = (await ask(who, 'query-chardev')) as { return: { label: string; filename: string }[] };
    return [...r.return].sort((a, b) => a.label.localeCompare(b.label));
  };

  beforeAll(async () => {
    pair = await startPair((d) => {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(d, 'a.qcow2'), '1M']);
      run('mkfifo', [join(d, 'fifo')]);
    }, (d) => [
      '--object', 'iothread,id=io0',
      '--blockdev', `driver=file,node-name=f0,filename=${join(d, 'a.qcow2')}`,
      '--blockdev', 'driver=qcow2,node-name=d0,file=f0',
      '--blockdev', 'null-co,node-name=n1',
      '--blockdev', 'null-co,node-name=n2',
      '--export', 'type=nbd,id=e0,node-name=n2',
      '--chardev', `socket,id=cli,path=${join(d, 'cli.sock')},server=on,wait=off`,
    ]);
  }, 60_000);
  afterAll(async () => { await pair?.stop(); });

  it('x-blockdev-change and x-blockdev-set-iothread: the same checks and texts', async () => {
    const seen = await script([
      ['x-blockdev-change', { parent: 'nope' }],
      ['x-blockdev-change', { parent: 'd0' }],
      ['x-blockdev-change', { parent: 'd0', child: 'file', node: 'n1' }],
      ['x-blockdev-change', { parent: 'd0', child: 'nope' }],
      ['x-blockdev-change', { parent: 'd0', child: 'file' }],
      ['x-blockdev-change', { parent: 'd0', node: 'nope' }],
      ['x-blockdev-change', { parent: 'd0', node: 'n1' }],
      ['x-blockdev-change', { parent: 'd0', node: 'f0' }],
      ['x-blockdev-change', { parent: 'n1', child: 'file' }],
      ['x-blockdev-set-iothread', { 'node-name': 'nope', iothread: 'io0' }],
      ['x-blockdev-set-iothread', { 'node-name': 'n2', iothread: 'io0' }],
      ['x-blockdev-set-iothread', { 'node-name': 'n2', iothread: null }],
      ['x-blockdev-set-iothread', { 'node-name': 'n1', iothread: 'nope' }],
      ['x-blockdev-set-iothread', { 'node-name': 'n2', iothread: 'nope', force: true }],
      ['x-blockdev-set-iothread', { 'node-name': 'n1', iothread: 'd0' }],
      ['x-blockdev-set-iothread', { 'node-name': 'n1', iothread: null }],
      ['x-blockdev-set-iothread', { 'node-name': 'n2', iothread: null, force: true }],
      ['x-blockdev-set-iothread', { 'node-name': 'n1', iothread: 1 }],
      ['x-blockdev-set-iothread', { 'node-name': 'n1' }],
    ]);
    expect(seen.blockd).toEqual(seen.qsd);
  });

  it('x-blockdev-set-iothread to an iothread: qsd moves the node, blockd (one event loop) refuses', async () => {
    expect(await ask('qsd', 'x-blockdev-set-iothread', { 'node-name': 'n1', iothread: 'io0' })).toEqual({ return: {} });
    expect(await ask('blockd', 'x-blockdev-set-iothread', { 'node-name': 'n1', iothread: 'io0' })).toEqual({
      error: { class: 'GenericError', desc: "blockd runs every block node in its main loop: node 'n1' cannot move to iothread 'io0'" },
    });
    // Back to the main loop: both.
    for (const who of BOTH) expect(await ask(who, 'x-blockdev-set-iothread', { 'node-name': 'n1', iothread: null })).toEqual({ return: {} });
  });

  it('ringbuf and memory chardevs: the same contents, formats and errors', async () => {
    const seen = await script([
      ['chardev-add', { id: 'r1', backend: { type: 'ringbuf', data: { size: 8 } } }],
      ['ringbuf-write', { device: 'r1', data: 'hello' }],
      ['ringbuf-read', { device: 'r1', size: 3 }],
      ['ringbuf-write', { device: 'r1', data: 'abcdefghij' }], // overwrites the oldest
      ['ringbuf-read', { device: 'r1', size: 100 }],
      ['ringbuf-read', { device: 'r1', size: 100 }],
      ['ringbuf-write', { device: 'r1', data: 'aGVsbG8=', format: 'base64' }],
      ['ringbuf-read', { device: 'r1', size: 4, format: 'base64' }],
      ['ringbuf-read', { device: 'r1', size: 4, format: 'utf8' }],
      ['ringbuf-write', { device: 'r1', data: '/w==', format: 'base64' }],
      ['ringbuf-read', { device: 'r1', size: 4 }],
      ['ringbuf-write', { device: 'r1', data: 'é€' }],
      ['ringbuf-read', { device: 'r1', size: 4 }], // cuts '€' in two
      ['ringbuf-read', { device: 'r1', size: 4 }],
      ['ringbuf-write', { device: 'r1', data: '!!!', format: 'base64' }],
      ['ringbuf-write', { device: 'r1', data: 'QUJD=x', format: 'base64' }],
      ['ringbuf-read', { device: 'r1', size: 8, format: 'base64' }],
      ['ringbuf-write', { device: 'r1', data: 'QQ=Q', format: 'base64' }],
      ['ringbuf-write', { device: 'r1', data: 'Q', format: 'base64' }],
      ['ringbuf-read', { device: 'r1', size: 8, format: 'base64' }],
      ['ringbuf-write', { device: 'r1', data: 'YQBi', format: 'base64' }], // a NUL byte ends a utf8 read
      ['ringbuf-read', { device: 'r1', size: 8 }],
      ['ringbuf-write', { device: 'r1', data: 'a\u0000b\u0001' }],
      ['ringbuf-read', { device: 'r1', size: 8 }],
      ['ringbuf-write', { device: 'r1', data: '😀x' }],
      ['ringbuf-read', { device: 'r1', size: 8 }],
      ['ringbuf-write', { device: 'r1', data: '7b+/wKE=', format: 'base64' }], // a noncharacter, an overlong form
      ['ringbuf-read', { device: 'r1', size: 8 }],
      ['ringbuf-read', { device: 'r1', size: -1 }],
      ['ringbuf-read', { device: 'r1', size: 0 }],
      ['ringbuf-read', { device: 'nope', size: 1 }],
      ['ringbuf-read', { device: 'm', size: 1 }],
      ['ringbuf-write', { device: 'cli', data: 'x' }],
      ['ringbuf-write', { device: 'nope', data: 'x' }],
      ['ringbuf-write', { device: 'r1', data: '' }],
      ['ringbuf-write', { device: 'r1', data: 'x', format: 'hex' }],
      ['chardev-add', { id: 'r2', backend: { type: 'ringbuf', data: { size: 15 } } }],
      ['chardev-add', { id: 'r2', backend: { type: 'ringbuf', data: { size: -4 } } }],
      // qsd takes size 0 (and then writes out of bounds: not done here).
      ['chardev-add', { id: 'r2', backend: { type: 'ringbuf', data: { size: 0 } } }],
      ['ringbuf-read', { device: 'r2', size: 4 }],
      ['chardev-add', { id: 'r3', backend: { type: 'memory', data: { logfile: 'DIR/r3.log' } } }],
      ['ringbuf-write', { device: 'r3', data: 'kept' }],
      ['ringbuf-read', { device: 'r3', size: 100 }],
      ['qom-list', { path: '/chardevs/r3' }],
      ['chardev-remove', { id: 'r1' }],
      ['chardev-remove', { id: 'r2' }],
      ['chardev-remove', { id: 'r3' }],
    ]);
    expect(seen.blockd).toEqual(seen.qsd);
    for (const who of BOTH) expect(existsSync(join(side(who).dir, 'r3.log')), who).toBe(true);
  });

  it('chardev-add, -change, -remove and -send-break: the same replies and errors', async () => {
    const seen = await script([
      ['chardev-add', { id: 'n1', backend: { type: 'null', data: {} } }],
      ['chardev-add', { id: 'n1', backend: { type: 'null', data: {} } }],
      ['chardev-add', { id: 'm', backend: { type: 'null', data: {} } }],
      ['chardev-add', { id: 'a b', backend: { type: 'null', data: {} } }],
      ['chardev-add', { id: 'x', backend: { type: 'null' } }],
      ['chardev-add', { id: 'x', backend: { type: 'nope', data: {} } }],
      ['chardev-add', { id: 'x', backend: { type: 'null', data: { nope: 1 } } }],
      ['chardev-add', { id: 'x' }],
      ['chardev-add', { id: 'x', backend: { type: 'msmouse', data: {} } }],
      ['chardev-add', { id: 'x', backend: { type: 'vc', data: {} } }],
      ['chardev-add', { id: 'x', backend: { type: 'spicevmc', data: { type: 'vdagent' } } }],
      ['chardev-add', { id: 'x', backend: { type: 'null', data: { logfile: '/nonexistent/log' } } }],
      ['chardev-add', { id: 'f1', backend: { type: 'file', data: { out: '/nonexistent/f' } } }],
      ['chardev-add', { id: 'f1', backend: { type: 'file', data: { out: 'DIR/f1', in: '/nonexistent/in' } } }],
      ['chardev-add', { id: 'f1', backend: { type: 'file', data: { out: 'DIR/f1', append: true, logfile: 'DIR/f1.log', logappend: true } } }],
      ['chardev-add', { id: 'p1', backend: { type: 'pipe', data: { device: '/nonexistent/p' } } }],
      ['chardev-add', { id: 'p1', backend: { type: 'pipe', data: { device: 'DIR/fifo' } } }],
      ['chardev-send-break', { id: 'm' }],
      ['chardev-send-break', { id: 'n1' }],
      ['chardev-send-break', { id: 'nope' }],
      ['chardev-remove', { id: 'm' }],
      ['chardev-remove', { id: 'nope' }],
      ['chardev-change', { id: 'm', backend: { type: 'null', data: {} } }],
      ['chardev-change', { id: 'nope', backend: { type: 'null', data: {} } }],
      ['chardev-change', { id: 'n1', backend: { type: 'ringbuf', data: { size: 16 } } }],
      ['ringbuf-write', { device: 'n1', data: 'now a ring' }],
      ['ringbuf-read', { device: 'n1', size: 100 }],
      // A failed change leaves no chardev behind, as qsd's (the old one was removed first).
      ['chardev-change', { id: 'n1', backend: { type: 'ringbuf', data: { size: 3 } } }],
      ['chardev-remove', { id: 'n1' }],
      ['chardev-change', { id: 'cli', backend: { type: 'null', data: {} } }],
      ['qom-list', { path: '/chardevs/cli' }],
      ['qom-list', { path: '/chardevs/f1' }],
      ['qom-list', { path: '/chardevs/p1' }],
    ]);
    expect(seen.blockd).toEqual(seen.qsd);
    const labels = async (who: Who) => (await chardevs(who)).map((c) => [c.label, c.filename]);
    expect(await labels('blockd')).toEqual(await labels('qsd'));
    const types = async (who: Who) => ((await ask(who, 'qom-list', { path: '/chardevs' })) as { return: { name: string }[] }).return
      .sort((a, b) => a.name.localeCompare(b.name));
    expect(await types('blockd')).toEqual(await types('qsd'));
    for (const id of ['a b', 'f1', 'p1', 'cli']) for (const who of BOTH) await ask(who, 'chardev-remove', { id });
  });

  it('socket chardevs: the same checks, and query-chardev filenames as peers connect and hang up', async () => {
    const seen = await script([
      ['chardev-add', { id: 's1', backend: sock('/nonexistent/x.sock') }],
      ['chardev-add', { id: 's1', backend: sock('DIR/s1.sock') }], // server by default from QMP
      ['chardev-add', { id: 's2', backend: sock('DIR/s1.sock', { server: false }) }],
      ['chardev-add', { id: 's3', backend: sock('DIR/none.sock', { server: false }) }],
      ['chardev-add', { id: 's3', backend: sock('DIR/x.sock', { server: false, wait: false }) }],
      ['chardev-add', { id: 's3', backend: sock('DIR/x.sock', { server: true, reconnect: 1 }) }],
      ['chardev-add', { id: 's3', backend: sock('DIR/x.sock', { 'tls-creds': 't' }) }],
      ['chardev-add', { id: 's3', backend: sock('DIR/x.sock', { 'tls-authz': 't' }) }],
      ['chardev-add', { id: 's3', backend: inet('127.0.0.1', '0', { 'tls-creds': 't' }) }],
      ['chardev-add', { id: 's3', backend: inet('127.0.0.1', '0', { 'tls-creds': 'io0' }) }],
      ['chardev-add', { id: 's3', backend: inet('127.0.0.1', 'x') }],
      ['chardev-add', { id: 's3', backend: { type: 'socket', data: { addr: { type: 'fd', data: { str: '99' } } } } }],
      ['chardev-add', { id: 's3', backend: { type: 'socket', data: { addr: { type: 'fd', data: { str: '99' } }, reconnect: 2 } } }],
      ['chardev-add', { id: 's3', backend: { type: 'socket', data: { addr: { type: 'unix', data: {} } } } }],
      ['chardev-add', { id: 's3', backend: sock('DIR/s3.sock', { logfile: '/nonexistent/log' }) }],
      ['chardev-add', { id: 's3', backend: sock('DIR/s3.sock', { logfile: 'DIR/s3.log', nodelay: true }) }],
      ['chardev-add', { id: 's4', backend: sock('DIR/s4.sock', { server: true, wait: false }) }],
    ]);
    expect(seen.blockd).toEqual(seen.qsd);
    // s1 has s2 connected (Unix: the server's end is named, the client's is not); s3, s4 and cli wait.
    const names = async (who: Who) => (await chardevs(who)).map((c) => [c.label, c.filename, (c as { 'frontend-open'?: boolean })['frontend-open']]);
    expect(await names('blockd')).toEqual(await names('qsd'));
    expect((await names('qsd')).find((c) => c[0] === 's2')).toEqual(['s2', 'unix:', false]);

    // A Unix peer that hangs up is heard; the next client is taken.
    const peers: Socket[] = [];
    const attach = (path: string) => new Promise<Socket>((r, j) => { const s = connect(path, () => r(s)); s.once('error', j); peers.push(s); });
    for (const who of BOTH) {
      const a = await attach(join(side(who).dir, 's4.sock'));
      await attach(join(side(who).dir, 's4.sock'));
      await new Promise((r) => setTimeout(r, 300));
      a.destroy();
    }
    await new Promise((r) => setTimeout(r, 500));
    expect(await names('blockd')).toEqual(await names('qsd'));
    expect((await names('qsd')).find((c) => c[0] === 's4')![1]).toBe('unix:DIR/s4.sock,server=on');
    for (const p of peers) p.destroy();
    await new Promise((r) => setTimeout(r, 500));
    expect((await names('blockd')).find((c) => c[0] === 's4')![1]).toBe('disconnected:unix:DIR/s4.sock,server=on');
    expect(await names('blockd')).toEqual(await names('qsd'));
    for (const id of ['s1', 's2', 's3', 's4']) for (const who of BOTH) await ask(who, 'chardev-remove', { id });
    // A removed listener's socket file goes, as in qsd.
    for (const who of BOTH) expect(existsSync(join(side(who).dir, 's1.sock')), who).toBe(false);
  });

  it('socket addresses: QEMU\'s resolution, families, port ranges, path limits and texts', async () => {
    const long = `DIR/${'x'.repeat(120)}`;
    const seen = await script([
      ['chardev-add', { id: 'a1', backend: sock(long) }],
      ['chardev-add', { id: 'a2', backend: sock(long, { server: false }) }],
      ['chardev-add', { id: 'a3', backend: inet('nonexistent.invalid', '1') }],
      ['chardev-add', { id: 'a4', backend: inet('', '0') }],
      ['chardev-add', { id: 'a5', backend: inet('127.0.0.1', '0', { server: false }) }],
      ['chardev-add', { id: 'a6', backend: sock('DIR') }],
      ['chardev-add', { id: 'a7', backend: { type: 'file', data: { out: 'DIR' } } }],
      ['chardev-add', { id: 'a8', backend: { type: 'pipe', data: { device: 'DIR' } } }],
      ['chardev-add', { id: 'b1', backend: { type: 'socket', data: { addr: { type: 'inet', data: { host: '127.0.0.1', port: '0', to: 5 } } } } }],
      ['chardev-add', { id: 'b2', backend: { type: 'socket', data: { addr: { type: 'inet', data: { host: '127.0.0.1', port: '0', ipv6: true } } } } }],
      ['chardev-add', { id: 'b3', backend: { type: 'socket', data: { addr: { type: 'inet', data: { host: '127.0.0.1', port: '0', ipv4: false, ipv6: false } } } } }],
      ['chardev-add', { id: 'b4', backend: { type: 'socket', data: { addr: { type: 'inet', data: { host: 'localhost', port: '0', numeric: true } } } } }],
      ['chardev-add', { id: 'b5', backend: { type: 'socket', data: { addr: { type: 'inet', data: { host: '127.0.0.1', port: '0', numeric: true, 'keep-alive': true } } } } }],
      ['chardev-add', { id: 'b6', backend: inet('localhost', '0') }],
      ['chardev-add', { id: 'b7', backend: inet('::1', '0') }],
      ['chardev-add', { id: 'c1', backend: inet('nonexistent.invalid', '1', { server: false }) }],
      ['chardev-add', { id: 'c2', backend: { type: 'socket', data: { addr: { type: 'inet', data: { host: '127.0.0.1', port: '1', ipv6: true } }, server: false } } }],
      ['chardev-add', { id: 'c3', backend: { type: 'socket', data: { addr: { type: 'inet', data: { host: '::1', port: '1', ipv4: true } }, server: false } } }],
      ['chardev-add', { id: 'c4', backend: { type: 'socket', data: { addr: { type: 'inet', data: { host: 'localhost', port: '1', numeric: true } }, server: false } } }],
      ['chardev-add', { id: 'c5', backend: inet('', '1', { server: false }) }],
      ['chardev-add', { id: 'c6', backend: inet('127.0.0.1', 'x', { server: false }) }],
      ['chardev-add', { id: 'c7', backend: sock('', { server: false }) }],
    ]);
    expect(seen.blockd).toEqual(seen.qsd);
    const names = async (who: Who) => (await chardevs(who)).filter((c) => /^[ab]\d$/.test(c.label))
      .map((c) => [c.label, c.filename.replace(/:\d+,server=on$/, ':PORT,server=on')]);
    expect(await names('blockd')).toEqual(await names('qsd'));
    // An empty Unix path listens on a fresh name in $TMPDIR, as QEMU's mkstemp.
    for (const who of BOTH) {
      expect(await ask(who, 'chardev-add', { id: 'e1', backend: sock('') })).toEqual({ return: {} });
      const name = (await chardevs(who)).find((c) => c.label === 'e1')!.filename;
      expect(name, who).toMatch(/^disconnected:unix:.*\/qemu-socket-\w{6},server=on$/);
    }
    for (const id of ['a4', 'b1', 'b5', 'b6', 'b7', 'e1']) for (const who of BOTH) expect(await ask(who, 'chardev-remove', { id })).toEqual({ return: {} });
  });

  it('udp chardevs: the same resolution, checks and texts', async () => {
    const udp = (remote: Record<string, unknown>, local?: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
      ({ type: 'udp', data: { remote: { type: 'inet', data: remote }, ...(local ? { local: { type: 'inet', data: local } } : {}), ...extra } });
    const seen = await script([
      ['chardev-add', { id: 'u1', backend: udp({ host: '127.0.0.1', port: '9' }) }],
      ['chardev-add', { id: 'u2', backend: udp({ host: '', port: '9' }, { host: '127.0.0.1', port: '0' }, { logfile: 'DIR/u2.log' }) }],
      ['chardev-add', { id: 'u3', backend: udp({ host: '127.0.0.1', port: '' }) }],
      ['chardev-add', { id: 'u3', backend: udp({ host: 'nonexistent.invalid', port: '9' }) }],
      ['chardev-add', { id: 'u3', backend: udp({ host: '127.0.0.1', port: 'x' }) }],
      ['chardev-add', { id: 'u3', backend: udp({ host: '127.0.0.1', port: '9', ipv4: false, ipv6: false }) }],
      ['chardev-add', { id: 'u3', backend: udp({ host: '::1', port: '9', ipv4: true }) }],
      ['chardev-add', { id: 'u3', backend: udp({ host: '127.0.0.1', port: '9' }, { host: 'nonexistent.invalid', port: '0' }) }],
      ['chardev-add', { id: 'u3', backend: udp({ host: '127.0.0.1', port: '9' }, { host: '192.0.2.1', port: '0' }) }],
      ['chardev-add', { id: 'u3', backend: { type: 'udp', data: { remote: { type: 'unix', data: { path: 'DIR/x' } } } } }],
      ['qom-list', { path: '/chardevs/u1' }],
    ]);
    expect(seen.blockd).toEqual(seen.qsd);
    const names = async (who: Who) => (await chardevs(who)).filter((c) => c.label.startsWith('u')).map((c) => [c.label, c.filename]);
    expect(await names('blockd')).toEqual(await names('qsd'));
    expect(await names('qsd')).toEqual([['u1', 'udp'], ['u2', 'udp']]);
    for (const id of ['u1', 'u2']) for (const who of BOTH) expect(await ask(who, 'chardev-remove', { id })).toEqual({ return: {} });
    for (const who of BOTH) expect(existsSync(join(side(who).dir, 'u2.log')), who).toBe(true);
  });

  it('a TCP socket chardev: the bound port in its name, and a peer that closes stays connected (qsd hears only a reset)', async () => {
    const tcpName = async (who: Who) => (await chardevs(who)).find((c) => c.label === 't1')!.filename;
    const ports: Record<Who, string> = { qsd: '', blockd: '' };
    const peers: Socket[] = [];
    for (const who of BOTH) {
      expect(await ask(who, 'chardev-add', { id: 't1', backend: inet('127.0.0.1', '0') })).toEqual({ return: {} });
      const m = /^disconnected:tcp:127\.0\.0\.1:(\d+),server=on$/.exec(await tcpName(who));
      expect(m, who).not.toBeNull();
      ports[who] = m![1]!;
      const s = await new Promise<Socket>((r) => { const c = connect(Number(ports[who]), '127.0.0.1', () => r(c)); });
      peers.push(s);
      await new Promise((r) => setTimeout(r, 300));
      expect(await tcpName(who)).toBe(`tcp:127.0.0.1:${ports[who]},server=on <-> 127.0.0.1:${s.localPort}`);
      s.end();
      await new Promise((r) => setTimeout(r, 500));
      expect(await tcpName(who), who).toBe(`tcp:127.0.0.1:${ports[who]},server=on <-> 127.0.0.1:${s.localPort}`);
      // A client chardev connecting out to it waits in the backlog, and names its own end.
      expect(await ask(who, 'chardev-add', { id: 't2', backend: inet('127.0.0.1', ports[who], { server: false }) })).toEqual({ return: {} });
      const t2 = (await chardevs(who)).find((c) => c.label === 't2')!.filename;
      expect(t2, who).toMatch(new RegExp(`^tcp:127\\.0\\.0\\.1:\\d+ <-> 127\\.0\\.0\\.1:${ports[who]}$`));
      for (const id of ['t2', 't1']) expect(await ask(who, 'chardev-remove', { id })).toEqual({ return: {} });
    }
    for (const p of peers) p.destroy();
  });

  it('qom-get and qom-set of the chardevs and the containers: the same values and texts', async () => {
    const seen = await script([
      ['chardev-add', { id: 'q1', backend: { type: 'null', data: {} } }],
      ['chardev-add', { id: 'io0', backend: { type: 'null', data: {} } }], // the iothread's id too
      ['chardev-add', { id: 'q2', backend: sock('DIR/q2.sock') }],
      ['chardev-add', { id: 'q3', backend: inet('localhost', '1', { server: false, reconnect: 100 }) }],
      ['qom-get', { path: '/chardevs/m', property: 'connected' }],
      ['qom-get', { path: '/chardevs/m', property: 'addr' }],
      ['qom-get', { path: '/chardevs/m', property: 'type' }],
      ['qom-get', { path: 'm', property: 'type' }],
      ['qom-get', { path: '/chardevs/q1', property: 'type' }],
      ['qom-get', { path: '/chardevs/q1', property: 'nope' }],
      ['qom-get', { path: '/chardevs/q1', property: 'connected' }],
      ['qom-get', { path: '/chardevs/q2', property: 'addr' }],
      ['qom-get', { path: '/chardevs/q2', property: 'connected' }],
      ['qom-get', { path: '/chardevs/q3', property: 'addr' }],
      ['qom-get', { path: '/chardevs/cli', property: 'addr' }],
      ['qom-set', { path: '/chardevs/m', property: 'connected', value: false }],
      ['qom-set', { path: '/chardevs/m', property: 'nope', value: false }],
      ['qom-set', { path: '/chardevs/q1', property: 'type', value: 'x' }],
      ['qom-set', { path: '/chardevs/q1', property: 'nope', value: 'x' }],
      ['qom-set', { path: '/chardevs/q2', property: 'addr', value: {} }],
      ['qom-get', { path: '/chardevs', property: 'type' }],
      ['qom-get', { path: '/chardevs/', property: 'type' }],
      ['qom-get', { path: '/chardevs', property: 'q1' }],
      ['qom-get', { path: '/chardevs', property: 'nope' }],
      ['qom-set', { path: '/chardevs', property: 'q1', value: 1 }],
      ['qom-get', { path: 'q1', property: 'type' }],
      ['qom-get', { path: 'io0', property: 'type' }], // an object and a chardev: ambiguous
      ['qom-list', { path: 'io0' }],
      ['qom-list', { path: 'q1' }],
      ['qom-get', { path: '/chardevs/nope', property: 'type' }],
      ['qom-get', { path: '/', property: 'type' }],
      ['qom-get', { path: '/', property: 'chardevs' }],
      ['qom-get', { path: '/', property: 'objects' }],
      ['qom-set', { path: '/', property: 'objects', value: 1 }],
      ['qom-get', { path: '/', property: 'nope' }],
      ['chardev-remove', { id: 'q1' }],
      ['chardev-remove', { id: 'io0' }],
      ['chardev-remove', { id: 'q2' }],
      ['chardev-remove', { id: 'q3' }],
    ]);
    expect(seen.blockd).toEqual(seen.qsd);
    // A listening TCP chardev's addr is the address bound, numeric, with ipv4 set.
    for (const who of BOTH) {
      expect(await ask(who, 'chardev-add', { id: 'q4', backend: inet('127.0.0.1', '0') })).toEqual({ return: {} });
      const r = (await ask(who, 'qom-get', { path: '/chardevs/q4', property: 'addr' })) as { return: { port: string } };
      expect(r.return, who).toEqual({ type: 'inet', host: '127.0.0.1', port: r.return.port, ipv4: true });
      expect(Number(r.return.port), who).toBeGreaterThan(0);
      expect(await ask(who, 'chardev-remove', { id: 'q4' })).toEqual({ return: {} });
    }
  });

  it('a server chardev with wait=on: chardev-add replies once a client connects', async () => {
    for (const who of BOTH) {
      const path = join(side(who).dir, 'w.sock');
      let replied = false;
      const reply = ask(who, 'chardev-add', { id: 'w', backend: sock(path, { wait: true }) }).then((r) => { replied = true; return r; });
      for (let i = 0; i < 100 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 300));
      expect(replied, who).toBe(false);
      const c = connect(path);
      expect(await reply).toEqual({ return: {} });
      expect((await chardevs(who)).find((x) => x.label === 'w')!.filename).toBe(`unix:${path.replace(side(who).dir, 'DIR')},server=on`);
      c.destroy();
      expect(await ask(who, 'chardev-remove', { id: 'w' })).toEqual({ return: {} });
    }
  });

  it("query-chardev-backends: qsd's list, less the backends blockd does not open, in qsd's order", async () => {
    const names = async (who: Who) => ((await ask(who, 'query-chardev-backends')) as { return: { name: string }[] }).return.map((b) => b.name);
    const q = await names('qsd');
    const b = await names('blockd');
    expect(b).toEqual(q.filter((n) => ['pipe', 'null', 'ringbuf', 'socket', 'file', 'memory', 'udp'].includes(n)));
    expect(b).toHaveLength(7);
    // The ones qsd has and blockd does not open are refused with a reason.
    for (const type of q.filter((n) => !b.includes(n))) {
      expect(await ask('blockd', 'chardev-add', { id: 'u', backend: { type, data: type === 'mux' ? { chardev: 'x' } : type === 'serial' || type === 'parallel' ? { device: '/dev/null' } : type === 'udp' ? { remote: { type: 'inet', data: { host: '127.0.0.1', port: '9' } } } : {} } }))
        .toEqual({ error: { class: 'GenericError', desc: `Failed to add chardev 'u': chardev backend '${type}' is not supported by blockd` } });
    }
  });
});
