/**
 * driver=http / https beside qsd 7.2 (qemu-block-extra's curl driver),
 * against image servers in the test process (test/helpers/http-image.ts):
 * the same blockdev-add options give the same results (data, size,
 * query-named-block-nodes entries) and the same errors (no byte ranges, 404,
 * bad readahead/timeout, cookie and cookie-secret, a write-mode open, a
 * refused connection, a wrong cookie or login); HTTPS with a CA made in
 * the test (sslverify=off, an untrusted CA refused, the CA trusted through
 * NODE_EXTRA_CA_CERTS); a qcow2 template over https under a local overlay
 * that block-stream makes local; a server that stalls mid-read or is killed:
 * EIO after the timeout while the daemon keeps serving another export.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { startDaemon, tempDir } from '../helpers/daemons.ts';
import { cleanupsAfterEach, waitFor, type Ev } from '../helpers/live.ts';
import { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import { nbdsh, runTool } from '../helpers/nbd.ts';
import { getPort } from '../helpers/port.ts';
import { run } from '../helpers/tools.ts';
import { makeTlsFixture } from '../helpers/tls.ts';
import { startImageServer, type ImageServer } from '../helpers/http-image.ts';

const cleanups = cleanupsAfterEach();

let seq = 0;
async function daemon(who: Who, dir: string, extra: string[] = [], env?: NodeJS.ProcessEnv) {
  const own = join(dir, `d${seq++}`);
  mkdirSync(own);
  const sock = join(own, 'nbd.sock');
  const qmpSock = join(own, 'qmp.sock');
  const proc = await startDaemon(who, ['--chardev', `socket,id=m,path=${qmpSock},server=on,wait=off`, '--monitor', 'm',
    '--nbd-server', `addr.type=unix,addr.path=${sock}`, ...extra], qmpSock, undefined, env);
  const qmp = await QmpClient.connect(qmpSock);
  const events: Ev[] = [];
  qmp.on('event', (e: { event: string; data?: Record<string, unknown> }) => events.push({ event: e.event, data: e.data ?? {} }));
  cleanups.push(async () => { qmp.close(); await proc.stop(); });
  return { proc, qmp, events, dir: own, uri: (name: string) => `nbd+unix:///${name}?socket=${sock}` };
}
type Daemon = Awaited<ReturnType<typeof daemon>>;

const ask = (d: Daemon, cmd: string, args?: Record<string, unknown>) =>
  d.qmp.execute(cmd, args).then((r) => ({ ok: r }), (e: { errorClass?: string; desc?: string; message: string }) => ({ error: e.errorClass, desc: e.desc ?? e.message }));

async function server(o: Parameters<typeof startImageServer>[0]): Promise<ImageServer> {
  const s = await startImageServer(o);
  cleanups.push(() => s.kill());
  return s;
}

/**
 * The export's bytes, read with nbdcopy (never a synchronous child: the image
 * servers run in this process). qsd 7.2's curl driver now and then never
 * completes a read that waits on another one's transfer (seen under load
 * with nbdcopy's 64 requests in flight), so qsd is read one request at a time.
 */
async function exportBytes(dir: string, uri: string, who: Who = 'blockd'): Promise<Buffer> {
  const out = join(dir, `copy-${seq++}.raw`);
  await runTool('nbdcopy', [...(who === 'qsd' ? ['--connections=1', '--requests=1'] : []), uri, out]);
  return readFileSync(out);
}

/** A read through libnbd: 'ok', or the errno name it failed with, and the seconds it took. */
async function timedRead(uri: string, offset: number, length: number): Promise<{ r: string; s: number }> {
  return JSON.parse(await nbdsh(uri, `import time
h = nbd.NBD(); h.connect_uri(uri); t = time.time()
try:
    h.pread(${length}, ${offset}); r = 'ok'
except nbd.Error as e:
    r = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({'r': r, 's': time.time() - t}))`, 60_000)) as { r: string; s: number };
}

describe('driver=http as qsd', () => {
  it('opens the same servers with the same data and node entries, and fails with the same errors', async () => {
    const dir = tempDir('blockd-http-');
    const img = join(dir, 'disk.raw');
    // Not a multiple of 512: the size comes from HEAD, whatever it is.
    writeFileSync(img, randomBytes(3 * 1024 * 1024 + 1000));
    const files = { '/disk.raw': img };
    const plain = await server({ files });
    const noRanges = await server({ files, ranges: false });
    const cookie = await server({ files, cookie: 'session=abc; lang=en' });
    const login = await server({ files, login: 'alice:s3cret' });
    const refused = `http://127.0.0.1:${await getPort()}/disk.raw`;
    const cases: Record<string, unknown>[] = [
      { driver: 'http', url: plain.url('/disk.raw'), 'read-only': true },
      { driver: 'http', url: plain.url('/disk.raw'), 'read-only': true, readahead: 0, timeout: 30 },
      { driver: 'http', url: plain.url('/disk.raw'), 'auto-read-only': true },
      { driver: 'http', url: cookie.url('/disk.raw'), 'read-only': true, cookie: 'session=abc; lang=en' },
      { driver: 'http', url: cookie.url('/disk.raw'), 'read-only': true, 'cookie-secret': 'cookie0' },
      { driver: 'http', url: login.url('/disk.raw'), 'read-only': true, username: 'alice', 'password-secret': 'pw0' },
      // Errors.
      { driver: 'http', url: noRanges.url('/disk.raw'), 'read-only': true },
      { driver: 'http', url: plain.url('/missing'), 'read-only': true },
      { driver: 'http', url: plain.url('/disk.raw') },
      { driver: 'http', url: plain.url('/disk.raw'), 'read-only': true, readahead: 1000 },
      { driver: 'http', url: plain.url('/disk.raw'), 'read-only': true, timeout: 10001 },
      { driver: 'http', url: plain.url('/disk.raw'), 'read-only': true, timeout: -1 },
      { driver: 'http', url: plain.url('/disk.raw'), 'read-only': true, cookie: 'a=b', 'cookie-secret': 'cookie0' },
      { driver: 'https', url: plain.url('/disk.raw'), 'read-only': true },
      { driver: 'http', url: plain.url('/disk.raw'), 'read-only': true, sslverify: false },
      { driver: 'http', url: cookie.url('/disk.raw'), 'read-only': true, cookie: 'session=wrong' },
      { driver: 'http', url: login.url('/disk.raw'), 'read-only': true, username: 'alice' },
      { driver: 'http', url: cookie.url('/disk.raw'), 'read-only': true, 'cookie-secret': 'nosuch' },
      { driver: 'http', url: refused, 'read-only': true },
    ];
    const okCount = 6;
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    const bytes: Record<Who, Buffer[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await daemon(who, dir);
      await d.qmp.execute('object-add', { 'qom-type': 'secret', id: 'cookie0', data: 'session=abc; lang=en' });
      await d.qmp.execute('object-add', { 'qom-type': 'secret', id: 'pw0', data: 's3cret' });
      for (const [i, c] of cases.entries()) {
        const r = await ask(d, 'blockdev-add', { 'node-name': `h${i}`, ...c });
        // libcurl says how long the refused connect took ("after 0 ms").
        if ('error' in r) r.desc = r.desc.replace(/ after \d+ ms/, '');
        seen[who].push(r);
      }
      const nodes = (await d.qmp.execute('query-named-block-nodes')) as Record<string, unknown>[];
      seen[who].push(nodes.sort((a, b) => String(a['node-name']).localeCompare(String(b['node-name']))));
      for (let i = 0; i < okCount; i++) {
        await d.qmp.execute('block-export-add', { type: 'nbd', id: `e${i}`, 'node-name': `h${i}`, name: `h${i}` });
        bytes[who].push(await exportBytes(dir, d.uri(`h${i}`), who));
      }
    }
    expect(seen.blockd).toEqual(seen.qsd);
    const want = readFileSync(img);
    // QEMU counts whole sectors: the export ends on the next 512 bytes, zeroes past the file's end.
    const padded = Buffer.concat([want, Buffer.alloc(512 - (want.length % 512))]);
    for (const who of BOTH) for (const b of bytes[who]) expect({ who, len: b.length, same: b.equals(padded), prefix: b.subarray(0, want.length).equals(want) }).toEqual({ who, len: padded.length, same: true, prefix: true });
    const nodes = seen.qsd.at(-1) as { 'node-name': string; file: string; ro: boolean; image: { 'virtual-size': number } }[];
    expect(nodes.map((n) => n.file)).toEqual([
      plain.url('/disk.raw'), plain.url('/disk.raw'), plain.url('/disk.raw'),
      expect.stringMatching(/^json:\{.*"cookie": "session=abc; lang=en"/), expect.stringMatching(/^json:\{.*"cookie-secret": "cookie0"/),
      expect.stringMatching(/^json:\{.*"username": "alice"/),
    ]);
    expect(nodes.every((n) => n.ro && n.image['virtual-size'] === padded.length)).toBe(true);
    const errors = (seen.qsd.slice(0, -1) as { desc?: string }[]).map((r) => r.desc);
    expect(errors.slice(okCount)).toEqual([
      "CURL: Error opening file: Server does not support 'range' (byte ranges).",
      'CURL: Error opening file: The requested URL returned error: 404',
      'curl driver does not support writes',
      'HTTP_READAHEAD_SIZE 1000 is not a multiple of 512',
      'timeout parameter is too large or negative',
      'timeout parameter is too large or negative',
      'curl driver cannot handle both cookie and cookie secret',
      `https curl driver cannot handle the URL '${plain.url('/disk.raw')}' (does not start with 'https://')`,
      "Parameter 'sslverify' is unexpected",
      'CURL: Error opening file: The requested URL returned error: 403',
      'CURL: Error opening file: The requested URL returned error: 401',
      "No secret with id 'nosuch'",
      `CURL: Error opening file: Failed to connect to 127.0.0.1 port ${new URL(refused).port}: Couldn't connect to server`,
    ]);
    // The credentials reached the servers as libcurl sends them; ranges went over kept-alive connections.
    expect(cookie.requests.some((r) => r.method === 'GET' && r.headers.cookie === 'session=abc; lang=en')).toBe(true);
    expect(login.requests.some((r) => r.method === 'GET' && r.headers.authorization === `Basic ${Buffer.from('alice:s3cret').toString('base64')}`)).toBe(true);
    expect(plain.requests.filter((r) => r.method === 'GET').every((r) => /^bytes=\d+-\d+$/.test(String(r.headers.range)))).toBe(true);
  });

  it('https: sslverify=off as qsd, an untrusted CA refused by both, the CA trusted through NODE_EXTRA_CA_CERTS', async () => {
    const dir = tempDir('blockd-https-');
    const tls = makeTlsFixture(join(dir, 'tls'));
    const img = join(dir, 'disk.raw');
    writeFileSync(img, randomBytes(2 * 1024 * 1024));
    const s = await server({ files: { '/disk.raw': img }, tls: { cert: readFileSync(join(tls.server, 'server-cert.pem'), 'utf8'), key: readFileSync(join(tls.server, 'server-key.pem'), 'utf8') } });
    const url = s.url('/disk.raw');
    const results: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await daemon(who, dir);
      const off = await ask(d, 'blockdev-add', { driver: 'https', 'node-name': 'off', url, sslverify: false, 'read-only': true });
      const on = await ask(d, 'blockdev-add', { driver: 'https', 'node-name': 'on', url, 'read-only': true });
      await d.qmp.execute('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'off', name: 'off' });
      results[who].push(off, 'error' in on ? String(on.desc).startsWith('CURL: Error opening file: ') : on);
      expect((await exportBytes(dir, d.uri('off'), who)).equals(readFileSync(img))).toBe(true);
    }
    expect(results.blockd).toEqual(results.qsd);
    expect(results.qsd).toEqual([{ ok: {} }, true]);
    // libcurl trusts the system's store only; blockd also takes node's NODE_EXTRA_CA_CERTS.
    const trusted = await daemon('blockd', dir, [], { NODE_EXTRA_CA_CERTS: join(tls.server, 'ca-cert.pem') });
    expect(await ask(trusted, 'blockdev-add', { driver: 'https', 'node-name': 'on', url, 'read-only': true })).toEqual({ ok: {} });
    const nodes = (await trusted.qmp.execute('query-named-block-nodes')) as { file: string }[];
    expect(nodes[0]!.file).toBe(url);
    await trusted.qmp.execute('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'on', name: 'on' });
    expect((await exportBytes(dir, trusted.uri('on'))).equals(readFileSync(img))).toBe(true);
  });
});

let tlsDir: string;
let serverTls: { cert: string; key: string };
beforeAll(() => {
  tlsDir = tempDir('blockd-http-tls-');
  const tls = makeTlsFixture(tlsDir);
  serverTls = { cert: readFileSync(join(tls.server, 'server-cert.pem'), 'utf8'), key: readFileSync(join(tls.server, 'server-key.pem'), 'utf8') };
});

/** A 16 MiB qcow2 template with data in some clusters, holes elsewhere. */
async function template(dir: string): Promise<string> {
  const t = join(dir, 'tmpl.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', t, '16M']);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 1M', '-c', 'write -P 0x33 3M 2M', '-c', 'write -P 0x77 15M 1M', t]);
  return t;
}

/** The guest view of a qcow2 (qemu-img convert, async: servers may run in this process). */
async function contents(dir: string, image: string, opts: string[] = []): Promise<Buffer> {
  const out = join(dir, `view-${seq++}.raw`);
  await runTool('qemu-img', ['convert', ...opts, '-O', 'raw', image, out]);
  return readFileSync(out);
}

describe('a qcow2 template on a web server', () => {
  it('https template under a local overlay, written, then block-stream makes it local: same events, nodes and bytes as qsd', async () => {
    const dir = tempDir('blockd-http-tmpl-');
    const tmpl = await template(dir);
    const s = await server({ files: { '/tmpl.qcow2': tmpl }, tls: serverTls });
    const url = s.url('/tmpl.qcow2');
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    const views: Record<Who, Buffer> = { qsd: Buffer.alloc(0), blockd: Buffer.alloc(0) };
    for (const who of BOTH) {
      const own = join(dir, who);
      mkdirSync(own);
      const ov = join(own, 'vm1.qcow2');
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', url, '-F', 'qcow2', ov, '16M']);
      const d = await daemon(who, own, [
        '--blockdev', `driver=https,node-name=web,url=${url},sslverify=off,read-only=on`,
        '--blockdev', 'driver=qcow2,node-name=tmpl,file=web,read-only=on',
        '--blockdev', `driver=file,node-name=ovf,filename=${ov}`,
        '--blockdev', 'driver=qcow2,node-name=vm1,file=ovf,backing=tmpl',
        '--export', 'type=nbd,id=e,node-name=vm1,name=vm1,writable=on',
      ]);
      await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0xee 512k 1M', '-c', 'write -P 0x11 8M 64k', d.uri('vm1')]);
      await d.qmp.execute('block-stream', { 'job-id': 's0', device: 'vm1' });
      await waitFor(d.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 's0' && e.data.status === 'null');
      const done = d.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!;
      seen[who].push(d.events.filter((e) => e.event === 'JOB_STATUS_CHANGE').map((e) => e.data.status), done.data.error ?? null, done.data.len);
      // The template node is no longer below vm1: nothing of it is needed to read the disk.
      const nodes = (await d.qmp.execute('query-named-block-nodes')) as { 'node-name': string; backing_file?: string; image: { 'backing-filename'?: string } }[];
      const vm1 = nodes.find((n) => n['node-name'] === 'vm1')!;
      seen[who].push(vm1.backing_file ?? null, vm1.image['backing-filename'] ?? null);
      await d.qmp.execute('blockdev-del', { 'node-name': 'tmpl' });
      await d.qmp.execute('blockdev-del', { 'node-name': 'web' });
      views[who] = await exportBytes(own, d.uri('vm1'), who);
      await d.qmp.execute('block-export-del', { id: 'e' });
      await d.qmp.execute('blockdev-del', { 'node-name': 'vm1' });
      await d.qmp.execute('blockdev-del', { 'node-name': 'ovf' });
      seen[who].push(JSON.parse(run('qemu-img', ['info', '--output=json', ov]))['backing-filename'] ?? null);
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd).toEqual([['created', 'running', 'waiting', 'pending', 'concluded', 'null'], null, 16 * 1024 * 1024, null, null, null]);
    const want = await contents(dir, tmpl);
    Buffer.alloc(1024 * 1024, 0xee).copy(want, 512 * 1024);
    Buffer.alloc(64 * 1024, 0x11).copy(want, 8 * 1024 * 1024);
    expect(views.qsd.equals(want)).toBe(true);
    expect(views.blockd.equals(want)).toBe(true);
    // With the server gone, the streamed overlays alone hold the disk.
    await s.kill();
    for (const who of BOTH) expect((await contents(dir, join(dir, who, 'vm1.qcow2'))).equals(want)).toBe(true);
  });

  it('an http:// backing file name in the overlay opens through driver=http, as in qsd', async () => {
    const dir = tempDir('blockd-http-name-');
    const tmpl = await template(dir);
    const s = await server({ files: { '/tmpl.qcow2': tmpl } });
    const url = s.url('/tmpl.qcow2');
    const ov = join(dir, 'vm1.qcow2');
    await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', url, '-F', 'qcow2', ov]);
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await daemon(who, dir, ['--blockdev', `driver=qcow2,node-name=vm1,file.driver=file,file.filename=${ov},read-only=on`,
        '--export', 'type=nbd,id=e,node-name=vm1,name=vm1']);
      const nodes = (await d.qmp.execute('query-named-block-nodes')) as { drv: string; file: string; ro: boolean }[];
      seen[who].push(nodes.map((n) => [n.drv, n.file, n.ro]).sort(), (await exportBytes(dir, d.uri('vm1'), who)).equals(await contents(dir, tmpl)));
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd[0]).toContainEqual(['http', url, true]);
    expect(seen.qsd[1]).toBe(true);
  });
});

describe('a web server that fails mid-read', () => {
  it('stalled: EIO after the timeout, as qsd; killed: EIO (blockd after retrying for the timeout); the other export keeps serving', async () => {
    const dir = tempDir('blockd-http-fail-');
    const img = join(dir, 'disk.raw');
    writeFileSync(img, randomBytes(8 * 1024 * 1024));
    const out: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    const logs: Record<Who, string> = { qsd: '', blockd: '' };
    for (const who of BOTH) {
      const s = await server({ files: { '/disk.raw': img } });
      const d = await daemon(who, dir, [
        '--blockdev', `driver=http,node-name=web,url=${s.url('/disk.raw')},timeout=2,readahead=0,read-only=on`,
        '--blockdev', 'driver=null-co,node-name=local,size=1048576,read-zeroes=on',
        '--export', 'type=nbd,id=e1,node-name=web,name=web', '--export', 'type=nbd,id=e2,node-name=local,name=local',
      ]);
      expect((await timedRead(d.uri('web'), 0, 65536)).r).toBe('ok');
      s.stall();
      const stalled = timedRead(d.uri('web'), 4 * 1024 * 1024, 65536);
      // While that read hangs, the other export answers at once.
      await new Promise((r) => setTimeout(r, 500));
      const other = await timedRead(d.uri('local'), 0, 65536);
      const st = await stalled;
      await s.kill();
      const killed = await timedRead(d.uri('web'), 6 * 1024 * 1024, 65536);
      const after = await timedRead(d.uri('local'), 4096, 65536);
      const alive = ((await d.qmp.execute('query-named-block-nodes')) as unknown[]).length;
      out[who].push(st.r, other.r, killed.r, after.r, alive);
      logs[who] = d.proc.stderr();
      expect(st.s).toBeGreaterThan(1.8);
      expect(st.s).toBeLessThan(6);
      expect(other.s).toBeLessThan(1);
      if (who === 'blockd') {
        expect(killed.s).toBeGreaterThan(1.5);
        expect(killed.s).toBeLessThan(6);
      }
    }
    // qsd 7.2's NBD server drops the connection when a structured read fails ("Disconnect client, due to: Failed
    // to send reply: reading from file failed: Input/output error"); blockd answers the request with EIO.
    expect(out.qsd).toEqual(['ENOTCONN', 'ok', 'ENOTCONN', 'ok', 2]);
    expect(out.blockd).toEqual(['EIO', 'ok', 'EIO', 'ok', 2]);
    expect(logs.qsd).toMatch(/curl: Operation timed out after \d+ milliseconds/);
    expect(logs.blockd).toMatch(/curl: Operation timed out after 2000 milliseconds/);
    expect(logs.blockd).toContain("curl: Failed to connect to 127.0.0.1 port");
  });
});

/** A forward proxy in this process: absolute-form requests and CONNECT, each logged with its Proxy-Authorization. */
async function startProxy(login?: string) {
  const { createServer, request } = await import('node:http');
  const { connect } = await import('node:net');
  const seen: { how: string; target: string; auth?: string }[] = [];
  const want = login === undefined ? undefined : `Basic ${Buffer.from(login).toString('base64')}`;
  const sockets = new Set<import('node:net').Socket>();
  const p = createServer((req, res) => {
    seen.push({ how: req.method ?? '', target: req.url ?? '', auth: req.headers['proxy-authorization'] });
    if (want !== undefined && req.headers['proxy-authorization'] !== want) { res.writeHead(407, { 'proxy-authenticate': 'Basic' }).end(); return; }
    const headers = { ...req.headers };
    delete headers['proxy-authorization'];
    const up = request(req.url!, { method: req.method, headers }, (r) => { res.writeHead(r.statusCode!, r.headers); r.pipe(res); });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  p.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  p.on('connect', (req, client, head) => {
    seen.push({ how: 'CONNECT', target: req.url ?? '', auth: req.headers['proxy-authorization'] });
    if (want !== undefined && req.headers['proxy-authorization'] !== want) { client.end('HTTP/1.1 407 Proxy Authentication Required\r\n\r\n'); return; }
    const [host, port] = (req.url ?? '').split(':');
    const up = connect(Number(port), host, () => { client.write('HTTP/1.1 200 Connection Established\r\n\r\n'); up.write(head); up.pipe(client); client.pipe(up); });
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
    sockets.add(up);
  });
  await new Promise<void>((r) => p.listen(0, '127.0.0.1', r));
  const port = (p.address() as { port: number }).port;
  const stop = async () => { for (const s of sockets) s.destroy(); await new Promise<void>((r) => p.close(() => r())); };
  cleanups.push(stop);
  return { url: `http://127.0.0.1:${port}`, seen };
}

describe('through a proxy from the environment', () => {
  it('http_proxy and https_proxy with proxy-username/proxy-password-secret, no_proxy, as qsd', async () => {
    const dir = tempDir('blockd-http-proxy-');
    const img = join(dir, 'disk.raw');
    writeFileSync(img, randomBytes(1024 * 1024));
    const plain = await server({ files: { '/disk.raw': img } });
    const tlsd = await server({ files: { '/disk.raw': img }, tls: serverTls });
    const proxy = await startProxy('bob:pr0xy');
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    const auth = `Basic ${Buffer.from('bob:pr0xy').toString('base64')}`;
    for (const who of BOTH) {
      const d = await daemon(who, dir, ['--object', 'secret,id=pp,data=pr0xy'], { http_proxy: proxy.url, https_proxy: proxy.url, no_proxy: 'localhost' });
      const creds = { 'proxy-username': 'bob', 'proxy-password-secret': 'pp' };
      const results = [
        await ask(d, 'blockdev-add', { driver: 'http', 'node-name': 'p', url: plain.url('/disk.raw'), 'read-only': true, ...creds }),
        await ask(d, 'blockdev-add', { driver: 'https', 'node-name': 's', url: tlsd.url('/disk.raw'), 'read-only': true, sslverify: false, ...creds }),
        await ask(d, 'blockdev-add', { driver: 'http', 'node-name': 'noauth', url: plain.url('/disk.raw'), 'read-only': true }),
      ];
      await d.qmp.execute('block-export-add', { type: 'nbd', id: 'e1', 'node-name': 'p', name: 'p' });
      await d.qmp.execute('block-export-add', { type: 'nbd', id: 'e2', 'node-name': 's', name: 's' });
      const same = [(await exportBytes(dir, d.uri('p'), who)).equals(readFileSync(img)), (await exportBytes(dir, d.uri('s'), who)).equals(readFileSync(img))];
      const through = proxy.seen.splice(0);
      seen[who].push(results, same,
        through.some((r) => r.how === 'GET' && r.target === plain.url('/disk.raw') && r.auth === auth),
        through.some((r) => r.how === 'CONNECT' && r.target === `127.0.0.1:${tlsd.port}` && r.auth === auth),
        through.some((r) => r.auth === undefined));
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd).toEqual([[{ ok: {} }, { ok: {} }, { error: 'GenericError', desc: 'CURL: Error opening file: The requested URL returned error: 407' }], [true, true], true, true, true]);
    // no_proxy: the proxy sees nothing.
    for (const who of BOTH) {
      const d = await daemon(who, dir, [], { http_proxy: proxy.url, no_proxy: '127.0.0.1' });
      expect(await ask(d, 'blockdev-add', { driver: 'http', 'node-name': 'p', url: plain.url('/disk.raw'), 'read-only': true })).toEqual({ ok: {} });
    }
    expect(proxy.seen).toEqual([]);
    // blockd refuses proxy credentials it would have no proxy to give to.
    const b = await daemon('blockd', dir, ['--object', 'secret,id=pp,data=pr0xy']);
    const r = await ask(b, 'blockdev-add', { driver: 'http', 'node-name': 'p', url: plain.url('/disk.raw'), 'read-only': true, 'proxy-username': 'bob' });
    expect(r).toEqual({ error: 'GenericError', desc: expect.stringContaining('proxy-username and proxy-password-secret need a proxy') });
  });
});

describe('read-ahead', () => {
  it('64 KiB reads one after another: a range request per 256 KiB window by default, one per read with readahead=0, as qsd', async () => {
    const dir = tempDir('blockd-http-ra-');
    const img = join(dir, 'disk.raw');
    writeFileSync(img, randomBytes(2 * 1024 * 1024));
    const counts: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      for (const readahead of [undefined, 0, 1024 * 1024]) {
        const s = await server({ files: { '/disk.raw': img } });
        const d = await daemon(who, dir, ['--blockdev', `driver=http,node-name=web,url=${s.url('/disk.raw')},read-only=on${readahead === undefined ? '' : `,readahead=${readahead}`}`,
          '--export', 'type=nbd,id=e,node-name=web,name=web']);
        const got = JSON.parse(await nbdsh(d.uri('web'), `h = nbd.NBD(); h.connect_uri(uri)
buf = b''.join(h.pread(65536, off) for off in range(0, 1024 * 1024, 65536))
print(json.dumps(buf == open(${JSON.stringify(img)}, 'rb').read(1024 * 1024)))`)) as boolean;
        const ranges = s.requests.filter((r) => r.method === 'GET').map((r) => r.headers.range);
        counts[who].push(got, ranges);
      }
    }
    expect(counts.blockd).toEqual(counts.qsd);
    const w = (a: number, b: number) => `bytes=${a}-${b - 1}`;
    const K = 1024;
    expect(counts.qsd).toEqual([
      true, [w(0, 320 * K), w(320 * K, 640 * K), w(640 * K, 960 * K), w(960 * K, 1280 * K)],
      true, Array.from({ length: 16 }, (_, i) => w(i * 64 * K, (i + 1) * 64 * K)),
      true, [w(0, 1088 * K)],
    ]);
  });
});
