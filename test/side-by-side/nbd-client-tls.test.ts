/**
 * driver=nbd with tls-creds/tls-hostname, side by side with qsd as the
 * client: against nbdkit (--tls=require, x509 and PSK) and against qsd's
 * own TLS server, blockdev-add succeeds or fails alike, with the same
 * error text for the cases users meet (the server's certificate from
 * another CA, a hostname the certificate does not name, no hostname for
 * a Unix socket, a server without TLS, a wrong PSK key, the wrong kind of
 * credentials); data written through blockd's TLS client reads back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { tempDir } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { run } from '../helpers/tools.ts';
import { startNbdkit } from '../helpers/nbdkit.ts';
import { makeTlsFixture, type TlsFixture } from '../helpers/tls.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';

let fx: TlsFixture;
let root: string;
const socks = { x509: '', psk: '', plain: '', qsd: '' };
const clients = {} as Record<Who, { qmp: QmpClient; dir: string }>;
const stops: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  root = tempDir('blockd-nbdc-tls-');
  fx = makeTlsFixture(join(root, 'pki'));
  socks.x509 = join(root, 'kit-x509.sock');
  socks.psk = join(root, 'kit-psk.sock');
  socks.plain = join(root, 'kit-plain.sock');
  socks.qsd = join(root, 'qsd-server.sock');
  for (const [sock, extra] of [[socks.x509, ['--tls=require', `--tls-certificates=${fx.server}`]],
    [socks.psk, ['--tls=require', `--tls-psk=${join(fx.pskServer, 'keys.psk')}`]], [socks.plain, []]] as [string, string[]][]) {
    const k = await startNbdkit(sock, ['memory', '4M'], extra);
    stops.push(() => k.stop());
  }
  const sdir = join(root, 'qsd-server');
  run('mkdir', ['-p', sdir]);
  const server = await qmpDaemon('qsd', sdir, ['--object', `tls-creds-x509,id=tls0,dir=${fx.server},endpoint=server`,
    '--blockdev', 'driver=null-co,node-name=n0,size=4194304,read-zeroes=on',
    '--nbd-server', `addr.type=unix,addr.path=${socks.qsd},tls-creds=tls0`, '--export', 'type=nbd,id=e0,node-name=n0,name=disk0']);
  stops.push(async () => { server.qmp.close(); await server.proc.stop(); });
  for (const who of BOTH) {
    const dir = join(root, who);
    run('mkdir', ['-p', dir]);
    const d = await qmpDaemon(who, dir, [
      '--object', `tls-creds-x509,id=c1,dir=${fx.client1},endpoint=client`,
      '--object', `tls-creds-x509,id=wrong,dir=${fx.wrongCa},endpoint=client`,
      '--object', `tls-creds-x509,id=srv,dir=${fx.server},endpoint=server`,
      '--object', `tls-creds-psk,id=alice,dir=${dirname(fx.pskAlice)},endpoint=client,username=alice`,
      '--object', `tls-creds-psk,id=alice-wrong,dir=${dirname(fx.pskWrong)},endpoint=client,username=alice`,
    ]);
    stops.push(async () => { d.qmp.close(); await d.proc.stop(); });
    clients[who] = { qmp: d.qmp, dir };
  }
}, 120_000);

afterAll(async () => { for (const s of stops.splice(0).reverse()) await s().catch(() => undefined); });

let n = 0;
async function add(who: Who, sock: string, extra: Record<string, unknown>): Promise<string> {
  const name = `r${n++}`;
  try {
    await clients[who].qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': name, server: { type: 'unix', path: sock }, ...extra });
    return 'ok';
  } catch (e) {
    return (e as Error).message;
  }
}

describe('driver=nbd over TLS, side by side with qsd as the client', () => {
  const cases: [string, () => string, Record<string, unknown>][] = [
    ['nbdkit x509', () => socks.x509, { 'tls-creds': 'c1', 'tls-hostname': 'localhost' }],
    ["qsd's TLS server", () => socks.qsd, { export: 'disk0', 'tls-creds': 'c1', 'tls-hostname': 'localhost' }],
    ['nbdkit PSK', () => socks.psk, { 'tls-creds': 'alice' }],
    ['a server certificate of another CA', () => socks.x509, { 'tls-creds': 'wrong', 'tls-hostname': 'localhost' }],
    ['a hostname the certificate does not name', () => socks.x509, { 'tls-creds': 'c1', 'tls-hostname': 'elsewhere.example' }],
    ['no hostname for a Unix socket', () => socks.x509, { 'tls-creds': 'c1' }],
    ['a server without TLS', () => socks.plain, { 'tls-creds': 'c1', 'tls-hostname': 'localhost' }],
    ['a plain client of a TLS-only server', () => socks.x509, {}],
    ['server credentials', () => socks.x509, { 'tls-creds': 'srv' }],
    ['unknown credentials', () => socks.x509, { 'tls-creds': 'nope' }],
  ];
  for (const [what, sock, extra] of cases) {
    it(what, async () => {
      const [q, b] = [await add('qsd', sock(), extra), await add('blockd', sock(), extra)];
      expect(b).toBe(q);
    });
  }

  it('a wrong PSK key fails on both', async () => {
    const [q, b] = [await add('qsd', socks.psk, { 'tls-creds': 'alice-wrong' }), await add('blockd', socks.psk, { 'tls-creds': 'alice-wrong' })];
    expect(q).not.toBe('ok');
    expect(b).not.toBe('ok');
  });

  it("data written through blockd's TLS client reads back (nbdkit x509)", async () => {
    const { qmp, dir } = clients.blockd;
    await qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': 'data', server: { type: 'unix', path: socks.x509 }, 'tls-creds': 'c1', 'tls-hostname': 'localhost' });
    const sock = join(dir, 'plain.sock');
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
    await qmp.execute('block-export-add', { type: 'nbd', id: 'x', 'node-name': 'data', name: 'data', writable: true });
    const uri = `nbd+unix:///data?socket=${sock}`;
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xa7 64k 128k', uri]);
    expect(run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xa7 64k 128k', uri])).toMatch(/read 131072\/131072/);
    // And straight from nbdkit, over TLS, with libnbd.
    const copy = join(dir, 'copy.raw');
    run('nbdcopy', [`nbds+unix:///?socket=${socks.x509}&tls-certificates=${fx.client1}&tls-hostname=localhost`, copy]);
    expect(readFileSync(copy).subarray(64 << 10, 192 << 10).every((x) => x === 0xa7)).toBe(true);
  });
});
