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
import { describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { startDaemon, tempDir } from '../helpers/daemons.ts';
import { cleanupsAfterEach } from '../helpers/live.ts';
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
  cleanups.push(async () => { qmp.close(); await proc.stop(); });
  return { proc, qmp, uri: (name: string) => `nbd+unix:///${name}?socket=${sock}` };
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
