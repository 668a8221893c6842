/**
 * NBD over TLS with real clients (nbdinfo, nbdcopy, qemu-img, qemu-io):
 * x509 with authz-simple and authz-list (glob), PSK with its username
 * authorized (qsd 7.2 ignores tls-authz for PSK), the refusals users act on
 * (identity denied, expired certificate, wrong key) as one log line naming
 * the credentials, and the configurations blockd refuses (tls-authz with
 * verify-peer=off or anonymous credentials).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { getPort } from '../helpers/port.ts';
import { run, tryRun } from '../helpers/tools.ts';
import { makeTlsFixture, waitForPort, type TlsFixture } from '../helpers/tls.ts';
import { httpGetUnix, parsePrometheusText, sampleValue } from '../helpers/prometheus.ts';

let root: string;
let fx: TlsFixture;
beforeAll(() => {
  root = tempDir('blockd-tls-');
  fx = makeTlsFixture(root);
});

const stops: (() => Promise<unknown>)[] = [];
afterEach(async () => { for (const s of stops.splice(0).reverse()) await s().catch(() => undefined); });
afterAll(async () => { for (const s of stops.splice(0).reverse()) await s().catch(() => undefined); });

interface Up { port: number; dir: string; stderr: () => string; qmp: Awaited<ReturnType<typeof qmpDaemon>>['qmp'] }

/** blockd serving a 4 MiB raw image as `disk0` over TCP with `nbd` extra server options, after `objects` (`extra`: more options). */
async function blockd(objects: string[], nbd: string, extra: (dir: string) => string[] = () => []): Promise<Up> {
  const dir = tempDir('blockd-tls-d-');
  run('qemu-img', ['create', '-f', 'raw', join(dir, 'd.img'), '4M']);
  const port = await getPort();
  const d = await qmpDaemon('blockd', dir, [
    '--log-level', 'info',
    ...objects.flatMap((o) => ['--object', o]),
    '--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'd.img')}`,
    '--nbd-server', `addr.type=inet,addr.host=127.0.0.1,addr.port=${port},${nbd}`,
    '--export', 'type=nbd,id=e0,node-name=f0,name=disk0,writable=on',
    ...extra(dir),
  ]);
  stops.push(async () => { d.qmp.close(); await d.proc.stop(); });
  await waitForPort(port);
  return { port, dir, stderr: d.proc.stderr, qmp: d.qmp };
}

const x509 = (dir: string, extra = '') => `tls-creds-x509,id=tls0,dir=${dir},endpoint=server${extra}`;
const certUri = (port: number, dir: string) => `nbds://127.0.0.1:${port}/disk0?tls-certificates=${dir}`;
const pskUri = (port: number, user: string, file: string) => `nbds://${user}@127.0.0.1:${port}/disk0?tls-psk-file=${file}`;
const size = (uri: string) => tryRun('nbdinfo', ['--size', uri]);

async function logged(up: Up, text: string): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const line = up.stderr().split('\n').find((l) => l.includes(text));
    if (line) return line;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`not logged: ${text}\n${up.stderr()}`);
}

describe('NBD over TLS: x509', () => {
  it('serves the authorized client (TLS 1.2 or later), refuses others with one line naming the credentials and why', async () => {
    const up = await blockd([x509(fx.server), `authz-simple,id=az,identity=${fx.dn1.replace(/,/g, ',,')}`], 'tls-creds=tls0,tls-authz=az',
      (dir) => ['--metrics', `addr.type=unix,addr.path=${join(dir, 'metrics.sock')}`]);
    const ok = size(certUri(up.port, fx.client1));
    expect(ok.stderr).toBe('');
    expect(ok.stdout.trim()).toBe(String(4 << 20));
    expect(run('nbdinfo', [certUri(up.port, fx.client1)])).toMatch(/with TLS/);

    expect(size(certUri(up.port, fx.client2)).status).not.toBe(0);
    const denied = JSON.parse(await logged(up, 'authz check'));
    expect(denied.msg).toMatch(new RegExp(`tls-creds-x509 'tls0': TLS session with 127\\.0\\.0\\.1:\\d+ refused: TLS x509 authz check for ${fx.dn2} is denied$`));

    expect(size(certUri(up.port, fx.expired)).status).not.toBe(0);
    expect(await logged(up, 'The certificate has expired')).toMatch(/tls-creds-x509 'tls0'/);

    // A client whose certificate the server's CA did not sign: it also refuses the server's certificate.
    expect(size(certUri(up.port, fx.wrongCa)).status).not.toBe(0);

    // A plain client gets NBD_REP_ERR_TLS_REQD (libnbd: "Operation not supported") and is not served.
    const plain = size(`nbd://127.0.0.1:${up.port}/disk0`);
    expect(plain.status).not.toBe(0);
    expect(plain.stderr).toMatch(/server requires TLS encryption first/);

    // /metrics: seven connections taken on (waitForPort's probe, six clients), the three refused at TLS counted (not the plain client, told TLS_REQD).
    // A refusal is counted when the server's side of the session ends, which can be just after the client gave up.
    const server = { server: '0', listen: `tcp 127.0.0.1:${up.port}` };
    const scrape = async () => parsePrometheusText((await httpGetUnix(join(up.dir, 'metrics.sock'), '/metrics')).body);
    let m = await scrape();
    for (let i = 0; i < 200 && (sampleValue(m, 'blockd_nbd_server_connections_refused_total', 'blockd_nbd_server_connections_refused_total', server) ?? 0) < 3; i++) {
      await new Promise((r) => setTimeout(r, 100));
      m = await scrape();
    }
    expect(sampleValue(m, 'blockd_nbd_server_connections_total', 'blockd_nbd_server_connections_total', server)).toBe(7);
    expect(sampleValue(m, 'blockd_nbd_server_connections_refused_total', 'blockd_nbd_server_connections_refused_total', server)).toBe(3);
    expect(sampleValue(m, 'blockd_export_clients_total', 'blockd_export_clients_total', { export: 'e0' })).toBe(2);
  });

  it('nbdcopy and qemu-io/qemu-img (tls-creds-x509 endpoint=client, driver=nbd,tls-creds=) read and write through TLS', async () => {
    const up = await blockd([x509(fx.server)], 'tls-creds=tls0');
    const data = randomBytes(1 << 20);
    const src = join(up.dir, 'src.raw');
    const back = join(up.dir, 'back.raw');
    writeFileSync(src, Buffer.concat([data, data, data, data]));
    run('nbdcopy', [src, certUri(up.port, fx.client1)]);
    run('nbdcopy', [certUri(up.port, fx.client1), back]);
    expect(readFileSync(back).equals(readFileSync(src))).toBe(true);

    const obj = `tls-creds-x509,id=c0,dir=${fx.client1},endpoint=client`;
    const opts = `driver=nbd,host=127.0.0.1,port=${up.port},export=disk0,tls-creds=c0`;
    run('qemu-io', ['--object', obj, '--image-opts', opts, '-c', 'write -P 0x5a 1M 64k']);
    expect(run('qemu-io', ['--object', obj, '--image-opts', opts, '-c', 'read -P 0x5a 1M 64k'])).toMatch(/read 65536\/65536 bytes/);
    expect(run('qemu-img', ['info', '--object', obj, '--image-opts', opts])).toMatch(/virtual size: 4 MiB/);
  });

  it('authz-list with glob rules: the first match decides', async () => {
    const rules = `authz-list,id=az,policy=allow,rules.0.match=*CN=client2,rules.0.policy=deny,rules.0.format=glob,rules.1.match=C=GB*,rules.1.policy=allow,rules.1.format=glob`;
    const up = await blockd([x509(fx.server), rules], 'tls-creds=tls0,tls-authz=az');
    expect(size(certUri(up.port, fx.client1)).status).toBe(0);
    expect(size(certUri(up.port, fx.client2)).status).not.toBe(0);
    expect(await logged(up, 'authz check')).toContain(`TLS x509 authz check for ${fx.dn2} is denied`);
  });

  it('authz-list-file: edited while the server runs, the next client sees the new rules', async () => {
    const acl = join(tempDir('blockd-tls-acl-'), 'acl.json');
    writeFileSync(acl, JSON.stringify({ policy: 'deny', rules: [{ match: fx.dn1, policy: 'allow' }] }));
    const up = await blockd([x509(fx.server), `authz-list-file,id=az,filename=${acl}`], 'tls-creds=tls0,tls-authz=az');
    expect(size(certUri(up.port, fx.client1)).status).toBe(0);
    expect(size(certUri(up.port, fx.client2)).status).not.toBe(0);
    writeFileSync(acl, JSON.stringify({ policy: 'deny', rules: [{ match: '*CN=client2', policy: 'allow', format: 'glob' }] }));
    let ok = false;
    for (let i = 0; i < 50 && !ok; i++) {
      ok = size(certUri(up.port, fx.client2)).status === 0;
      if (!ok) await new Promise((r) => setTimeout(r, 100));
    }
    expect(ok).toBe(true);
    expect(size(certUri(up.port, fx.client1)).status).not.toBe(0);
  });

  it('an unusable priority string: the server runs, every handshake fails, the log says why', async () => {
    const up = await blockd([x509(fx.server, ',priority=NORMAL:+BOGUS')], 'tls-creds=tls0');
    expect(await logged(up, 'every TLS handshake will fail')).toContain("Unable to set TLS session priority NORMAL:+BOGUS: unknown priority element '+BOGUS'");
    expect(size(certUri(up.port, fx.client1)).status).not.toBe(0);
    // A priority that only allows TLS 1.2 works with a client that offers 1.3.
    const up12 = await blockd([x509(fx.server, ',priority=NORMAL:-VERS-TLS1.3')], 'tls-creds=tls0');
    expect(size(certUri(up12.port, fx.client1)).status).toBe(0);
    expect(await logged(up12, 'upgraded to TLS')).toContain('"protocol":"TLSv1.2"');
  });
});

describe('NBD over TLS: PSK', () => {
  it('serves a client with the right key, refuses a wrong key, and checks the username against tls-authz (qsd 7.2 does not)', async () => {
    const up = await blockd([`tls-creds-psk,id=tls0,dir=${fx.pskServer},endpoint=server`, 'authz-simple,id=az,identity=alice'], 'tls-creds=tls0,tls-authz=az');
    expect(size(pskUri(up.port, 'alice', fx.pskAlice)).status).toBe(0);
    expect(size(pskUri(up.port, 'alice', fx.pskWrong)).status).not.toBe(0);
    expect(size(pskUri(up.port, 'bob', join(fx.pskServer, 'keys.psk'))).status).not.toBe(0);
    expect(await logged(up, 'PSK authz')).toContain("tls-creds-psk 'tls0'");
    expect(await logged(up, 'PSK authz')).toContain('TLS PSK authz check for bob is denied');
  });
});

describe('NBD over TLS: anonymous', () => {
  it('qemu-io with tls-creds-anon reads and writes; blockd\'s own nbd client too', async () => {
    const up = await blockd(['tls-creds-anon,id=tls0,endpoint=server'], 'tls-creds=tls0');
    const obj = 'tls-creds-anon,id=a0,endpoint=client';
    const opts = `driver=nbd,host=127.0.0.1,port=${up.port},export=disk0,tls-creds=a0`;
    run('qemu-io', ['--object', obj, '--image-opts', opts, '-c', 'write -P 0x33 0 64k']);
    expect(run('qemu-io', ['--object', obj, '--image-opts', opts, '-c', 'read -P 0x33 0 64k'])).toMatch(/read 65536\/65536 bytes/);
    await up.qmp.execute('object-add', { 'qom-type': 'tls-creds-anon', id: 'a1', endpoint: 'client' });
    await up.qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': 'loop', server: { type: 'inet', host: '127.0.0.1', port: String(up.port) }, export: 'disk0', 'tls-creds': 'a1' });
    expect(await logged(up, 'upgraded to TLS')).toContain('"protocol":"TLSv1.2"');
  });
});

describe('TLS configuration errors', () => {
  const start = (args: string[]) => spawnSync(BLOCKD, args, { encoding: 'utf8', timeout: 20_000 });

  it('tls-authz with verify-peer=off or anonymous credentials is refused: there is no identity to authorize', async () => {
    const dir = tempDir('blockd-tls-e-');
    const sock = `addr.type=unix,addr.path=${join(dir, 'n.sock')}`;
    let r = start(['--object', x509(fx.server, ',verify-peer=off'), '--object', 'authz-simple,id=az,identity=x', '--nbd-server', `${sock},tls-creds=tls0,tls-authz=az`]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe("blockd: --nbd-server " + `${sock},tls-creds=tls0,tls-authz=az` + ": tls-authz 'az' cannot be used with tls-creds-x509 'tls0' and verify-peer=off: without a verified client certificate there is no identity to authorize");
    r = start(['--object', 'tls-creds-anon,id=tls0,endpoint=server', '--object', 'authz-simple,id=az,identity=x', '--nbd-server', `${sock},tls-creds=tls0,tls-authz=az`]);
    expect(r.stderr).toContain("tls-authz 'az' cannot be used with tls-creds-anon 'tls0': anonymous TLS has no client identity to authorize");
    // The same over QMP.
    const up = await qmpDaemon('blockd', dir, ['--object', x509(fx.server, ',verify-peer=off'), '--object', 'authz-simple,id=az,identity=x']);
    stops.push(async () => { up.qmp.close(); await up.proc.stop(); });
    await expect(up.qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: join(dir, 'q.sock') } }, 'tls-creds': 'tls0', 'tls-authz': 'az' }))
      .rejects.toThrow("tls-authz 'az' cannot be used with tls-creds-x509 'tls0' and verify-peer=off");
  });

  it('a tls-authz that does not exist yet: warned at start, clients refused until object-add makes it (looked up per client, as qsd)', async () => {
    const up = await blockd([x509(fx.server)], 'tls-creds=tls0,tls-authz=later');
    expect(await logged(up, 'does not exist')).toContain("tls-authz 'later' does not exist: every TLS client is refused until it is created");
    expect(size(certUri(up.port, fx.client1)).status).not.toBe(0);
    expect(await logged(up, 'Cannot find QAuthZ')).toContain('Cannot find QAuthZ object ID later');
    await up.qmp.execute('object-add', { 'qom-type': 'authz-simple', id: 'later', identity: fx.dn1 });
    expect(size(certUri(up.port, fx.client1)).status).toBe(0);
  });

  it('object-add and nbd-server-start over QMP make the same TLS-only server', async () => {
    const dir = tempDir('blockd-tls-q-');
    run('qemu-img', ['create', '-f', 'raw', join(dir, 'd.img'), '1M']);
    const up = await qmpDaemon('blockd', dir, ['--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'd.img')}`]);
    stops.push(async () => { up.qmp.close(); await up.proc.stop(); });
    await up.qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: fx.server, endpoint: 'server' });
    await up.qmp.execute('object-add', { 'qom-type': 'authz-list', id: 'az', policy: 'deny', rules: [{ match: fx.dn1, policy: 'allow' }] });
    const port = await getPort();
    await up.qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host: '127.0.0.1', port: String(port) } }, 'tls-creds': 'tls0', 'tls-authz': 'az' });
    await up.qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'f0', name: 'disk0' });
    expect(size(certUri(port, fx.client1)).stdout.trim()).toBe(String(1 << 20));
    expect(size(certUri(port, fx.client2)).status).not.toBe(0);
    expect(size(`nbd://127.0.0.1:${port}/disk0`).status).not.toBe(0);
  });

  it('credentials: missing files, client endpoint, not credentials (qsd texts)', () => {
    const dir = tempDir('blockd-tls-e-');
    const sock = `addr.type=unix,addr.path=${join(dir, 'n.sock')}`;
    let r = start(['--object', `tls-creds-x509,id=tls0,dir=${fx.client1},endpoint=server`]);
    expect(r.stderr.trim()).toBe(`blockd: --object tls-creds-x509,id=tls0,dir=${fx.client1},endpoint=server: Unable to access credentials ${fx.client1}/server-cert.pem: No such file or directory`);
    r = start(['--object', `tls-creds-x509,id=tls0,dir=${fx.client1}`, '--nbd-server', `${sock},tls-creds=tls0`]);
    expect(r.stderr.trim()).toBe(`blockd: --nbd-server ${sock},tls-creds=tls0: Expected TLS credentials for a server endpoint`);
    r = start(['--object', 'iothread,id=tls0', '--nbd-server', `${sock},tls-creds=tls0`]);
    expect(r.stderr.trim()).toBe(`blockd: --nbd-server ${sock},tls-creds=tls0: Object with id 'tls0' is not TLS credentials`);
    r = start(['--object', `tls-creds-psk,id=tls0,dir=${fx.pskServer},endpoint=server,username=alice`]);
    expect(r.stderr.trim()).toMatch(/: username should not be set when endpoint=server$/);
  });
});
