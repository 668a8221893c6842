/**
 * blkdebug side by side with qemu-storage-daemon 7.2.
 *
 * - QMP: the same blockdev-add script (rules from options and from config
 *   files, QEMU's config-file syntax and its errors, the limit checks, QAPI
 *   errors of the rule structs) gives the same replies, and
 *   query-named-block-nodes names the nodes alike ("blkdebug:CONFIG:FILE",
 *   json: with flattened rules), and blockdev-reopen refuses changed or
 *   dropped rules and limits by their flat keys as qsd.
 * - NBD: an injected error reaches libnbd with its errno (EIO, ENOSPC) and
 *   the connection goes on; a `once` rule fails one request (one rule for
 *   each of two connections); an error
 *   rule on flush active from the start ('none') is replaced by the next
 *   event's rules, as in QEMU. With structured replies qsd 7.2 drops the
 *   connection on a failed read (its sparse-read path treats the read
 *   error as a failure to send the reply); blockd answers the error and
 *   keeps the connection, as proto.md asks: the test pins both.
 */
import { describe, it, expect, afterAll, beforeAll } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';
import { nbdsh } from '../helpers/nbd.ts';
import { RawQmpConnection } from '../../src/qmp/raw-connection.ts';

const running: Running[] = [];
afterAll(async () => { for (const r of running) await r.stop(); });

const CONFIGS: Record<string, string> = {
  'good.cfg': '# rules\n[inject-error]\nevent = "read_aio"\nerrno = "28"\nsector = "0x10"\n\n[set-state]\nevent = "flush_to_disk"\nnew_state = "2"\n',
  'c1.cfg': '[inject-error]\nevent = "read_aio"\nbogus = "1"\n',
  'c2.cfg': '[nope]\nevent = "read_aio"\n',
  'c3.cfg': 'event = "read_aio"\n',
  'c4.cfg': '[inject-error]\nerrno = "x5"\n',
  'c5.cfg': '[inject-error]\nonce = "maybe"\n',
  'c6.cfg': '[inject-error]\nstate = "1"\n',
  'c7.cfg': '[inject-error]\nevent = "bogus"\n',
  'c8.cfg': '[inject-error]\nevent = "read_aio"\niotype = "zzz"\n',
  'c9.cfg': '[inject-error]\nevent="read_aio"\n',
  'c10.cfg': '[inject-error]\n  \n',
  'c11.cfg': '[inject-error "a"]\nevent = "read_aio"\n[inject-error "a"]\nevent = "read_aio"\n',
  'c12.cfg': '[inject-error "r1"]\nevent = "read_aio"\nonce = "yes"\nimmediately = "y"\nstate = "010"\n[set-state]\nevent = "read_aio"\nstate = "1"\nnew_state = "8"\n',
};

function script(dir: string): string[] {
  const img = (n: string) => `{"driver":"file","filename":"${join(dir, n)}"}`;
  const add = (name: string, extra: string, image = img('a.img')) =>
    `{"execute":"blockdev-add","arguments":{"driver":"blkdebug","node-name":"${name}"${extra},"image":${image}}}`;
  const cfg = (n: string) => `,"config":"${join(dir, n)}"`;
  const reopen = (name: string, extra: string) =>
    `{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"blkdebug","node-name":"${name}"${extra},"image":"f4"}]}}`;
  return [
    add('b0', ''),
    add('b1', cfg('good.cfg')),
    add('b2', ',"align":4096,"max-transfer":65536'),
    add('b3', cfg('c12.cfg') + ',"inject-error":[{"event":"pwritev","iotype":"write","sector":9,"errno":1}],"set-state":[{"event":"none","new_state":3}]'),
    '{"execute":"query-named-block-nodes","arguments":{"flat":true}}',
    add('e1', cfg('nonexistent.cfg')),
    ...['c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9', 'c10', 'c11'].map((c, i) => add(`e${i + 2}`, cfg(`${c}.cfg`))),
    add('e20', ',"align":3'),
    add('e21', ',"align":512,"max-transfer":1000'),
    add('e22', ',"opt-write-zero":4096,"max-write-zero":6144'),
    add('e23', ',"opt-discard":512,"max-discard":1536'),
    add('e24', ',"max-discard":-512'),
    add('e25', ',"align":4294967296'),
    add('e26', ',"inject-error":[{"event":"nope"}]'),
    add('e27', ',"inject-error":[{"errno":5}]'),
    add('e28', ',"set-state":[{"event":"read_aio"}]'),
    add('e29', ',"inject-error":[{"event":"read_aio","iotype":"x"}]'),
    add('e30', ',"take-child-perms":["bogus"]'),
    add('e31', '', '"nonode"'),
    '{"execute":"blockdev-add","arguments":{"driver":"blkdebug","node-name":"e32"}}',
    '{"execute":"blockdev-del","arguments":{"node-name":"b3"}}',
    '{"execute":"blockdev-del","arguments":{"node-name":"e23"}}',
    '{"execute":"query-named-block-nodes","arguments":{"flat":true}}',
    // blockdev-reopen: the same options pass; a rule changed or dropped, or a limit changed, are refused by flat key.
    add('b4', ',"inject-error":[{"event":"read_aio","errno":5}]', `{"driver":"file","node-name":"f4","filename":"${join(dir, 'a.img')}"}`),
    reopen('b4', ',"inject-error":[{"event":"read_aio","errno":5}]'),
    reopen('b4', ',"inject-error":[{"event":"read_aio","errno":28}]'),
    reopen('b4', ''),
    reopen('b4', ',"inject-error":[{"event":"read_aio","errno":5}],"align":4096'),
    reopen('b4', ',"inject-error":[{"event":"read_aio","errno":5},{"event":"none"}]'),
  ];
}

async function runScript(path: string, lines: string[], dir: string): Promise<string[][]> {
  const c = await RawQmpConnection.open(path);
  await c.nextRaw();
  c.send('{"execute":"qmp_capabilities"}\n');
  await c.nextRaw();
  const out: string[][] = [];
  for (const line of lines) {
    c.send(`${line}\n{"execute":"query-version","id":"__sync__"}\n`);
    const step: string[] = [line.split(dir).join('<dir>')];
    for (;;) {
      const m = await c.nextRaw();
      if (m.value.id === '__sync__') break;
      // Generated node names differ by their random digits only.
      step.push(m.text.split(dir).join('<dir>').replace(/#block\d+/g, '#block'));
    }
    out.push(step);
  }
  c.close();
  return out;
}

async function replies(which: 'qsd' | 'blockd'): Promise<string[][]> {
  const dir = tempDir();
  writeFileSync(join(dir, 'a.img'), Buffer.alloc(1 << 20));
  for (const [n, t] of Object.entries(CONFIGS)) writeFileSync(join(dir, n), t);
  const sock = join(dir, 'qmp.sock');
  const d = await startDaemon(which, ['--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'm'], sock);
  running.push(d);
  return runScript(sock, script(dir), dir);
}

describe('blkdebug over QMP, side by side with qsd', () => {
  it('answers the script as qsd', async () => {
    const [q, b] = await Promise.all([replies('qsd'), replies('blockd')]);
    if (process.env.SHOW_REPLIES) console.log(q.map((x) => x.join('\n')).join('\n'));
    expect(q).toHaveLength(script('').length);
    for (let i = 0; i < q.length; i++) expect(b[i]).toEqual(q[i]);
    // Not two daemons failing alike: the good nodes were added, the bad ones refused.
    expect(q[0]![1]!.trim()).toBe('{"return": {}}');
    expect(q[5]![1]).toContain('Could not read blkdebug config file');
  }, 60_000);
});

const NBD_SCRIPT = `
import json
out = []
def attempt(what, f):
    try:
        f(); out.append([what, "ok"])
    except nbd.Error as e:
        out.append([what, e.errno])
for sr, at in ((False, 0), (True, 20480)):
    h = nbd.NBD()
    h.set_request_structured_replies(sr)
    h.connect_uri(uri)
    attempt("read", lambda: h.pread(4096, at))
    attempt("read again", lambda: h.pread(4096, at))
    attempt("write", lambda: h.pwrite(b"x" * 4096, 100 * 512))
    attempt("write again", lambda: h.pwrite(b"x" * 4096, 100 * 512))
    attempt("write elsewhere", lambda: h.pwrite(b"y" * 4096, 8192))
    attempt("flush", lambda: h.flush())
    out.append(["connected", h.aio_is_ready() or h.aio_is_processing()])
    h.shutdown() if h.aio_is_ready() else None
print(json.dumps(out))
`;

describe('injected errors reach NBD clients', () => {
  let results: Record<string, unknown[]> = {};
  beforeAll(async () => {
    for (const which of ['qsd', 'blockd'] as const) {
      const dir = tempDir();
      writeFileSync(join(dir, 'a.img'), Buffer.alloc(1 << 20, 1));
      const sock = join(dir, 'nbd.sock');
      const rules = [
        'file.inject-error.0.event=read_aio,file.inject-error.0.sector=4,file.inject-error.0.once=on',
        'file.inject-error.3.event=read_aio,file.inject-error.3.sector=40,file.inject-error.3.once=on',
        'file.inject-error.1.event=write_aio,file.inject-error.1.sector=100,file.inject-error.1.errno=28',
        'file.inject-error.2.event=none,file.inject-error.2.iotype=flush',
      ].join(',');
      const d = await startDaemon(which, [
        '--blockdev', `driver=raw,node-name=fmt,file.driver=blkdebug,file.node-name=dbg,file.image.driver=file,file.image.filename=${join(dir, 'a.img')},${rules}`,
        '--nbd-server', `addr.type=unix,addr.path=${sock}`,
        '--export', 'type=nbd,id=e,node-name=fmt,name=x,writable=on',
      ], sock);
      running.push(d);
      results[which] = JSON.parse(await nbdshUri(`nbd+unix:///x?socket=${sock}`, NBD_SCRIPT)) as unknown[];
    }
  }, 60_000);

  it('EIO for a read, then the next read works; ENOSPC for each write at the sector; a flush after the write rules took over works', () => {
    const simple = results.blockd!.slice(0, 7);
    expect(simple).toEqual([
      ['read', 'EIO'], ['read again', 'ok'], ['write', 'ENOSPC'], ['write again', 'ENOSPC'], ['write elsewhere', 'ok'], ['flush', 'ok'], ['connected', true],
    ]);
    expect(results.qsd!.slice(0, 7)).toEqual(simple);
  });

  it('with structured replies blockd keeps the connection where qsd 7.2 drops it', () => {
    expect(results.blockd!.slice(7)).toEqual(results.blockd!.slice(0, 7));
    // qsd: the failed read ends the connection (ENOTCONN), later calls find it closed.
    expect(results.qsd!.slice(7)[0]).toEqual(["read", "ENOTCONN"]);
  });
});

/** The script under Debian's python with libnbd, asynchronously (a worker blocked in execFileSync can miss vitest's deadlines). */
function nbdshUri(uri: string, body: string): Promise<string> {
  return nbdsh(uri, body);
}

describe('qcow2 over blkdebug raises read_aio, write_aio and read_backing_aio as QEMU\'s qcow2', () => {
  const SCRIPT = `
import json
out = []
def attempt(what, f):
    try:
        f(); out.append([what, "ok"])
    except nbd.Error as e:
        out.append([what, e.errno])
h = nbd.NBD()
h.set_request_structured_replies(False)
h.connect_uri(uri)
attempt("read data", lambda: h.pread(4096, 0))
attempt("read data again", lambda: h.pread(4096, 0))
attempt("read unallocated (backing)", lambda: h.pread(4096, 1 << 19))
attempt("write", lambda: h.pwrite(b"z" * 4096, 65536))
attempt("write again", lambda: h.pwrite(b"z" * 4096, 65536))
attempt("read written", lambda: h.pread(4096, 65536))
print(json.dumps(out))
`;
  it('the same errors as qsd', async () => {
    const got: Record<string, unknown> = {};
    for (const which of ['qsd', 'blockd'] as const) {
      const dir = tempDir();
      run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'base.img'), '1M']);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(dir, 'base.img'), '-F', 'raw', join(dir, 'a.qcow2')]);
      run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 7 0 64k', join(dir, 'a.qcow2')]);
      const sock = join(dir, 'nbd.sock');
      const rules = [
        'file.inject-error.0.event=read_aio,file.inject-error.0.once=on,file.inject-error.0.errno=5',
        'file.inject-error.1.event=write_aio,file.inject-error.1.once=on,file.inject-error.1.errno=28',
        'file.inject-error.2.event=read_backing_aio,file.inject-error.2.once=on,file.inject-error.2.errno=1',
      ].join(',');
      const d = await startDaemon(which, [
        '--blockdev', `driver=qcow2,node-name=fmt,file.driver=blkdebug,file.image.driver=file,file.image.filename=${join(dir, 'a.qcow2')},${rules}`,
        '--nbd-server', `addr.type=unix,addr.path=${sock}`,
        '--export', 'type=nbd,id=e,node-name=fmt,name=x,writable=on',
      ], sock);
      running.push(d);
      got[which] = JSON.parse(await nbdshUri(`nbd+unix:///x?socket=${sock}`, SCRIPT));
    }
    // The backing read does not pass blkdebug (the backing node is not below it), so the
    // read_backing_aio rule stays active and fails the next request that does: the
    // allocating write's metadata update, before write_aio. The second write gets to write_aio.
    expect(got.qsd).toEqual([
      ['read data', 'EIO'], ['read data again', 'ok'], ['read unallocated (backing)', 'ok'],
      ['write', 'EPERM'], ['write again', 'ENOSPC'], ['read written', 'ok'],
    ]);
    expect(got.blockd).toEqual(got.qsd);
  }, 60_000);
});

describe('qcow2 metadata events over blkdebug, as QEMU\'s qcow2 raises them', () => {
  const SCRIPT = `
import json
out = []
def attempt(what, f):
    try:
        f(); out.append([what, "ok"])
    except nbd.Error as e:
        out.append([what, e.errno])
h = nbd.NBD()
h.set_request_structured_replies(False)
h.connect_uri(uri)
attempt("read (L2 table load)", lambda: h.pread(4096, 0))
attempt("read again (cached)", lambda: h.pread(4096, 0))
attempt("allocating write", lambda: h.pwrite(b"z" * 65536, 1 << 20))
attempt("allocating write again", lambda: h.pwrite(b"z" * 65536, 1 << 20))
attempt("flush (L2 write-back)", lambda: h.flush())
attempt("flush again", lambda: h.flush())
attempt("read written", lambda: h.pread(65536, 1 << 20) == b"z" * 65536 or 1 / 0)
print(json.dumps(out))
`;
  it('l2_load, cluster_alloc and l2_update fail the same requests as on qsd', async () => {
    const got: Record<string, unknown> = {};
    for (const which of ['qsd', 'blockd'] as const) {
      const dir = tempDir();
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'a.qcow2'), '4M']);
      run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 7 0 64k', join(dir, 'a.qcow2')]);
      const sock = join(dir, 'nbd.sock');
      const rules = [
        'file.inject-error.0.event=l2_load,file.inject-error.0.once=on,file.inject-error.0.errno=5',
        'file.inject-error.1.event=cluster_alloc,file.inject-error.1.once=on,file.inject-error.1.errno=28',
        'file.inject-error.2.event=l2_update,file.inject-error.2.once=on,file.inject-error.2.errno=1',
      ].join(',');
      const d = await startDaemon(which, [
        '--blockdev', `driver=qcow2,node-name=fmt,file.driver=blkdebug,file.image.driver=file,file.image.filename=${join(dir, 'a.qcow2')},${rules}`,
        '--nbd-server', `addr.type=unix,addr.path=${sock}`,
        '--export', 'type=nbd,id=e,node-name=fmt,name=x,writable=on',
      ], sock);
      running.push(d);
      got[which] = JSON.parse(await nbdshUri(`nbd+unix:///x?socket=${sock}`, SCRIPT));
    }
    if (process.env.SHOW_REPLIES) console.log(JSON.stringify(got));
    expect((got.qsd as unknown[][]).filter((r) => r[1] !== 'ok').length).toBeGreaterThan(1);
    expect(got.blockd).toEqual(got.qsd);
  }, 60_000);
  it('l2_alloc_write and l1_update (an L2 table allocated in an empty image) fail the same writes as on qsd', async () => {
    const WRITES = `
import json
out = []
h = nbd.NBD()
h.set_request_structured_replies(False)
h.connect_uri(uri)
for i in range(4):
    try:
        h.pwrite(b"q" * 65536, i * 65536); out.append("ok")
    except nbd.Error as e:
        out.append(e.errno)
try:
    h.flush(); out.append("ok")
except nbd.Error as e:
    out.append(e.errno)
print(json.dumps(out))
`;
    const got: Record<string, unknown> = {};
    for (const which of ['qsd', 'blockd'] as const) {
      const results: unknown[] = [];
      for (const [event, errno] of [['l2_alloc_write', 28], ['l1_update', 1]] as const) {
        const dir = tempDir();
        run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'e.qcow2'), '4M']);
        const sock = join(dir, 'nbd.sock');
        const d = await startDaemon(which, [
          '--blockdev', `driver=qcow2,node-name=fmt,file.driver=blkdebug,file.image.driver=file,file.image.filename=${join(dir, 'e.qcow2')},file.inject-error.0.event=${event},file.inject-error.0.once=on,file.inject-error.0.errno=${errno}`,
          '--nbd-server', `addr.type=unix,addr.path=${sock}`,
          '--export', 'type=nbd,id=e,node-name=fmt,name=x,writable=on',
        ], sock);
        running.push(d);
        results.push([event, JSON.parse(await nbdshUri(`nbd+unix:///x?socket=${sock}`, WRITES))]);
      }
      got[which] = results;
    }
    if (process.env.SHOW_REPLIES) console.log(JSON.stringify(got));
    expect(JSON.stringify(got.qsd)).toMatch(/ENOSPC|EPERM/);
    expect(got.blockd).toEqual(got.qsd);
  }, 60_000);
});
