/**
 * QMP over TCP with TLS (--chardev socket,...,tls-creds=,tls-authz=), side
 * by side with qsd: the authorized client gets the greeting and a working
 * session over TLS; a client authz refuses, and a plain client, get no
 * greeting and are disconnected; the chardev's credential errors are qsd's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { getPort } from '../helpers/port.ts';
import { requireTool } from '../helpers/tools.ts';
import { makeTlsFixture, waitForPort, type TlsFixture } from '../helpers/tls.ts';
import { BOTH, type Who } from '../helpers/pair.ts';

let fx: TlsFixture;
let root: string;
const ports = {} as Record<Who, number>;
let blockdStderr: () => string;
const stops: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  root = tempDir('blockd-qmp-tls-');
  fx = makeTlsFixture(join(root, 'pki'));
  for (const who of BOTH) {
    const dir = join(root, who);
    spawnSync('mkdir', ['-p', dir]);
    const port = await getPort();
    // blockd logs refusals at warn; its default level is quieter (as qsd, which prints nothing for them).
    const d = await qmpDaemon(who, dir, [...(who === 'blockd' ? ['--log-level', 'warn'] : []),
      '--object', `tls-creds-x509,id=tls0,dir=${fx.server},endpoint=server`,
      '--object', `authz-simple,id=az,identity=${fx.dn1.replace(/,/g, ',,')}`,
      '--chardev', `socket,id=t,host=127.0.0.1,port=${port},server=on,wait=off,tls-creds=tls0,tls-authz=az`, '--monitor', 't']);
    stops.push(async () => { d.qmp.close(); await d.proc.stop(); });
    if (who === 'blockd') blockdStderr = d.proc.stderr;
    await waitForPort(port);
    ports[who] = port;
  }
}, 120_000);

afterAll(async () => { for (const s of stops.splice(0)) await s().catch(() => undefined); });

/**
 * A QMP session through socat's OpenSSL client with a client certificate:
 * two commands written at once (qsd 7.2's TLS chardev does not answer a
 * command sent only after its greeting arrived from an OpenSSL client; sent
 * with the handshake, it does). The first key of each line that came back.
 */
function tlsSession(port: number, dir: string): string[] {
  const socat = requireTool('socat');
  const addr = `OPENSSL:127.0.0.1:${port},cafile=${join(dir, 'ca-cert.pem')},cert=${join(dir, 'client-cert.pem')},key=${join(dir, 'client-key.pem')},commonname=localhost`;
  const r = spawnSync('sh', ['-c', `(printf '%s\\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-version"}'; sleep 1) | ${socat} - '${addr}'`],
    { encoding: 'utf8', timeout: 20_000 });
  return r.stdout.split('\n').filter((l) => l.trim()).map((l) => Object.keys(JSON.parse(l))[0]);
}

describe('QMP over TLS, side by side with qsd', () => {
  it('the authorized client is served; the one authz refuses gets no greeting', async () => {
    for (const who of BOTH) {
      expect(tlsSession(ports[who], fx.client1), who).toEqual(['QMP', 'return', 'return']);
      expect(tlsSession(ports[who], fx.client2), who).toEqual([]);
    }
    // blockd says why, in one line naming the credentials and the monitor (its stderr is read once the loop runs again).
    for (let i = 0; i < 100 && !blockdStderr().includes('authz check'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(blockdStderr()).toMatch(new RegExp(`tls-creds-x509 'tls0': TLS session with 127\\.0\\.0\\.1:\\d+ on monitor t refused: TLS x509 authz check for ${fx.dn2} is denied`));
  });

  it('a plain client gets no greeting and is disconnected', async () => {
    for (const who of BOTH) {
      const got = await new Promise<string>((resolve) => {
        const s = connect(ports[who], '127.0.0.1');
        let data = '';
        s.on('data', (d) => (data += d.toString('latin1')));
        s.on('connect', () => s.write('{"execute":"qmp_capabilities"}\n'));
        s.on('error', () => undefined);
        s.on('close', () => resolve(data.includes('QMP') ? 'greeted' : 'closed'));
      });
      expect(got, who).toBe('closed');
    }
  });

  it('client mode (no server=on): the daemon connects out over TLS, checks our certificate against the host, and greets', async () => {
    const { createServer } = await import('node:tls');
    for (const who of BOTH) {
      const greetings: string[] = [];
      const server = createServer({
        cert: readFileSync(join(fx.server, 'server-cert.pem')), key: readFileSync(join(fx.server, 'server-key.pem')),
        ca: readFileSync(join(fx.server, 'ca-cert.pem')), requestCert: true, rejectUnauthorized: true,
      }, (s) => s.once('data', (d: Buffer) => { greetings.push(Object.keys(JSON.parse(d.toString().split('\n')[0]))[0]); s.destroy(); }));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as { port: number }).port;
      const dir = join(root, `client-${who}`);
      spawnSync('mkdir', ['-p', dir]);
      const d = await qmpDaemon(who, dir, ['--object', `tls-creds-x509,id=c1,dir=${fx.client1},endpoint=client`,
        '--chardev', `socket,id=out,host=127.0.0.1,port=${port},tls-creds=c1`, '--monitor', 'out']);
      for (let i = 0; i < 100 && greetings.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
      d.qmp.close();
      await d.proc.stop();
      server.close();
      expect(greetings, who).toEqual(['QMP']);
    }
  });

  it("the chardev's credential errors are qsd's", () => {
    const run = (who: Who, args: string[]) => {
      const r = spawnSync(who === 'qsd' ? requireTool('qemu-storage-daemon') : BLOCKD, args, { encoding: 'utf8', timeout: 20_000 });
      return { status: r.status, text: r.stderr.trim().replace(/^(qemu-storage-daemon|blockd): /, '') };
    };
    const chardev = 'socket,id=t,host=127.0.0.1,port=1,server=on,wait=off';
    for (const args of [
      ['--chardev', `${chardev},tls-creds=nope`, '--monitor', 't'],
      ['--object', 'iothread,id=io', '--chardev', `${chardev},tls-creds=io`, '--monitor', 't'],
      ['--object', `tls-creds-x509,id=c,dir=${fx.client1},endpoint=client`, '--chardev', `${chardev},tls-creds=c`, '--monitor', 't'],
      ['--chardev', `${chardev},tls-authz=az`, '--monitor', 't'],
    ]) {
      const [q, b] = BOTH.map((w) => run(w, args));
      expect(b, args.join(' ')).toEqual(q);
    }
  });
});
