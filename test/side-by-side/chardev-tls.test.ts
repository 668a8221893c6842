/**
 * Socket chardevs with TLS added at run time, side by side with
 * qemu-storage-daemon 7.2: the credentials are checked as qsd checks them; a
 * listening one is connected once a client's handshake (and tls-authz)
 * passes, holds no one while a plain client stalls its handshake (and no one
 * else meanwhile), drops a client authz refuses; a connecting one
 * completes the handshake with the server it names; a client stalled in a
 * handshake (a chardev's or a TLS monitor's) does not hold blockd's shutdown.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, createServer as tlsServer, type TLSSocket } from 'node:tls';
import { join } from 'node:path';
import type { QmpClient, QmpCommandError } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { makeTlsFixture, type TlsFixture } from '../helpers/tls.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import { getPort } from '../helpers/port.ts';

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('TLS socket chardevs side by side with qemu-storage-daemon', () => {
  const root = tempDir('blockd-chardev-tls-');
  let fx: TlsFixture;
  const d = {} as Record<Who, { proc: Running; qmp: QmpClient }>;
  const ask = (who: Who, cmd: string, args?: Record<string, unknown>): Promise<{ return?: unknown; error?: string }> =>
    d[who].qmp.execute(cmd, args).then((r) => ({ return: r }), (e: QmpCommandError) => ({ error: e.desc }));
  const name = async (who: Who, id: string) => ((await d[who].qmp.execute('query-chardev')) as { label: string; filename: string }[]).find((c) => c.label === id)?.filename;
  const inet = (port: string, extra: Record<string, unknown>) => ({ type: 'socket', data: { addr: { type: 'inet', data: { host: '127.0.0.1', port } }, ...extra } });

  beforeAll(async () => {
    fx = makeTlsFixture(join(root, 'pki'));
    for (const who of BOTH) {
      d[who] = await qmpDaemon(who, root, [
        '--object', `tls-creds-x509,id=tls0,dir=${fx.server},endpoint=server`,
        '--object', `tls-creds-x509,id=tlsc,dir=${fx.client1},endpoint=client`,
        '--object', `authz-simple,id=az,identity=${fx.dn1.replace(/,/g, ',,')}`,
      ]);
    }
  }, 60_000);
  afterAll(async () => {
    for (const x of Object.values(d)) { x.qmp.close(); await x.proc.stop(); }
  });

  it('the credentials are checked as qsd checks them', async () => {
    const cases = [
      inet('0', { 'tls-creds': 'tlsc' }), // client credentials on a server
      inet('1', { 'tls-creds': 'tls0', server: false }), // server credentials on a client
      inet('0', { 'tls-creds': 'az' }),
      inet('0', { 'tls-creds': 'nope' }),
      inet('0', { 'tls-authz': 'az' }),
      { type: 'socket', data: { addr: { type: 'unix', data: { path: join(root, 'u.sock') } }, 'tls-creds': 'tls0' } },
    ];
    for (const backend of cases) {
      const [q, b] = [await ask('qsd', 'chardev-add', { id: 'c', backend }), await ask('blockd', 'chardev-add', { id: 'c', backend })];
      expect(b, JSON.stringify(backend)).toEqual(q);
      expect(q.error, JSON.stringify(backend)).toBeDefined();
    }
  });

  it('a listening chardev: connected after the handshake and authz, not during a stalled one, not for a refused client', async () => {
    const client = (port: number, dir: string) => new Promise<TLSSocket>((resolve, reject) => {
      const s = tlsConnect({
        host: '127.0.0.1', port, servername: 'localhost',
        ca: readFileSync(join(dir, 'ca-cert.pem')), cert: readFileSync(join(dir, 'client-cert.pem')), key: readFileSync(join(dir, 'client-key.pem')),
      }, () => resolve(s));
      s.once('error', reject);
    });
    for (const who of BOTH) {
      expect(await ask(who, 'chardev-add', { id: 't', backend: inet('0', { 'tls-creds': 'tls0', 'tls-authz': 'az' }) })).toEqual({ return: {} });
      const listening = (await name(who, 't'))!;
      const port = Number(/:(\d+),server=on$/.exec(listening)![1]);
      // A plain client never starts its handshake: nobody is connected, and the next client waits behind it.
      const plain: Socket = await new Promise((r) => { const s = connect(port, '127.0.0.1', () => r(s)); });
      await pause(300);
      expect(await name(who, 't'), who).toBe(listening);
      expect(await ask(who, 'qom-get', { path: '/chardevs/t', property: 'connected' })).toEqual({ return: false });
      plain.destroy();
      await pause(300);
      // client2's certificate is good but authz refuses it: dropped.
      const refused = await client(port, fx.client2).catch(() => undefined);
      await pause(300);
      expect(await name(who, 't'), who).toBe(listening);
      refused?.destroy();
      await pause(200);
      const ok = await client(port, fx.client1);
      await pause(300);
      expect(await name(who, 't'), who).toBe(`tcp:127.0.0.1:${port},server=on <-> 127.0.0.1:${ok.localPort}`);
      expect(await ask(who, 'qom-get', { path: '/chardevs/t', property: 'connected' })).toEqual({ return: true });
      ok.destroy();
      expect(await ask(who, 'chardev-remove', { id: 't' })).toEqual({ return: {} });
    }
  });

  it('blockd shuts down promptly with a client stalled in a chardev\'s handshake', async () => {
    const dir = tempDir('blockd-chardev-tls-stall-');
    const b = await qmpDaemon('blockd', dir, ['--object', `tls-creds-x509,id=tls0,dir=${fx.server},endpoint=server`]);
    await b.qmp.execute('chardev-add', { id: 't', backend: inet('0', { 'tls-creds': 'tls0' }) });
    const listening = ((await b.qmp.execute('query-chardev')) as { label: string; filename: string }[]).find((c) => c.label === 't')!.filename;
    const port = Number(/:(\d+),server=on$/.exec(listening)![1]);
    const plain: Socket = await new Promise((r) => { const s = connect(port, '127.0.0.1', () => r(s)); });
    await pause(200);
    b.qmp.close();
    const t0 = Date.now();
    expect(await b.proc.stop('SIGTERM')).toBe(0);
    expect(Date.now() - t0).toBeLessThan(3000);
    plain.destroy();
  });

  it('blockd shuts down promptly with a client stalled in a TLS monitor\'s handshake', async () => {
    const dir = tempDir('blockd-monitor-tls-stall-');
    const port = await getPort();
    const b = await qmpDaemon('blockd', dir, ['--object', `tls-creds-x509,id=tls0,dir=${fx.server},endpoint=server`,
      '--chardev', `socket,id=t,host=127.0.0.1,port=${port},server=on,wait=off,tls-creds=tls0`, '--monitor', 't']);
    const plain: Socket = await new Promise((r) => { const s = connect(port, '127.0.0.1', () => r(s)); });
    await pause(200);
    b.qmp.close();
    const t0 = Date.now();
    expect(await b.proc.stop('SIGTERM')).toBe(0);
    expect(Date.now() - t0).toBeLessThan(3000);
    plain.destroy();
  });

  it('a connecting chardev completes the handshake with the server it names', async () => {
    for (const who of BOTH) {
      let secured = 0;
      const server = tlsServer({
        cert: readFileSync(join(fx.server, 'server-cert.pem')), key: readFileSync(join(fx.server, 'server-key.pem')),
        ca: readFileSync(join(fx.server, 'ca-cert.pem')), requestCert: true, rejectUnauthorized: true,
      }, () => secured++);
      const peers: Socket[] = [];
      server.on('secureConnection', (s) => peers.push(s));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      const port = String((server.address() as { port: number }).port);
      try {
        expect(await ask(who, 'chardev-add', { id: 'o', backend: inet(port, { 'tls-creds': 'tlsc', server: false }) })).toEqual({ return: {} });
        for (let i = 0; i < 50 && secured === 0; i++) await pause(20);
        expect(secured, who).toBe(1);
        expect(await name(who, 'o'), who).toMatch(new RegExp(`^tcp:127\\.0\\.0\\.1:\\d+ <-> 127\\.0\\.0\\.1:${port}$`));
        expect(await ask(who, 'chardev-remove', { id: 'o' })).toEqual({ return: {} });
      } finally {
        for (const p of peers) p.destroy();
        await new Promise((r) => server.close(r));
      }
    }
  });
});
