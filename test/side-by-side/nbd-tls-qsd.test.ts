/**
 * NBD over TLS side by side with qsd 7.2, the same arguments on both:
 * - a plain client of a TLS-only server: byte-equal option replies
 *   (NBD_REP_ERR_TLS_REQD with qsd's texts), EXPORT_NAME ends the session,
 *   STARTTLS with data is refused and ends it; NBD_OPT_ABORT is the one
 *   documented difference (blockd acknowledges it, as doc/proto.md says);
 * - after STARTTLS over a real TLS session: the same replies again
 *   ("TLS already enabled", nothing negotiated before the upgrade kept);
 * - real clients: the authorized certificate, an identity authz-list's
 *   glob rules deny, an expired certificate, a client trusting another CA,
 *   PSK with the right and a wrong key: the same outcome on both.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { getPort } from '../helpers/port.ts';
import { run, tryRun } from '../helpers/tools.ts';
import { makeTlsFixture, waitForPort, type TlsFixture } from '../helpers/tls.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import { CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, Opt } from '../../src/nbd-protocol/constants.ts';
import { buildInfoRequestData, buildMetaContextRequestData, buildOptionRequest } from '../../src/nbd-protocol/option-requests.ts';

let fx: TlsFixture;
const ports: Record<Who, { x509: number; psk: number; crl: number }> = { qsd: { x509: 0, psk: 0, crl: 0 }, blockd: { x509: 0, psk: 0, crl: 0 } };
const stops: (() => Promise<unknown>)[] = [];

const RULES = 'authz-list,id=az,policy=deny,rules.0.match=*CN=client2,rules.0.policy=deny,rules.0.format=glob,' +
  'rules.1.match=C=GB,,O=Example Org,,CN=*,rules.1.policy=allow,rules.1.format=glob';

beforeAll(async () => {
  const root = tempDir('blockd-tls-sbs-');
  fx = makeTlsFixture(root);
  for (const who of BOTH) {
    for (const kind of ['x509', 'psk', 'crl'] as const) {
      const dir = join(root, `${who}-${kind}`);
      run('mkdir', ['-p', dir]);
      run('qemu-img', ['create', '-f', 'raw', join(dir, 'd.img'), '1M']);
      const port = await getPort();
      const objects = kind === 'x509'
        ? ['--object', `tls-creds-x509,id=tls0,dir=${fx.server},endpoint=server`, '--object', RULES]
        : kind === 'crl' ? ['--object', `tls-creds-x509,id=tls0,dir=${fx.crlServer},endpoint=server`]
        : ['--object', `tls-creds-psk,id=tls0,dir=${fx.pskServer},endpoint=server`];
      const d = await qmpDaemon(who, dir, [...objects,
        '--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'd.img')}`,
        '--nbd-server', `addr.type=inet,addr.host=127.0.0.1,addr.port=${port},tls-creds=tls0${kind === 'x509' ? ',tls-authz=az' : ''}`,
        '--export', 'type=nbd,id=e0,node-name=f0,name=disk0']);
      stops.push(async () => { d.qmp.close(); await d.proc.stop(); });
      await waitForPort(port);
      ports[who][kind] = port;
    }
  }
}, 120_000);

afterAll(async () => { for (const s of stops.splice(0)) await s().catch(() => undefined); });

/** A byte reader over a socket: read(n) resolves with n bytes, or with what came before the end ('closed'). */
class Reader {
  private buf = Buffer.alloc(0);
  private ended = false;
  private wake?: () => void;
  constructor(private s: Socket | TLSSocket) {
    s.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.wake?.(); });
    s.on('end', () => { this.ended = true; this.wake?.(); });
    s.on('close', () => { this.ended = true; this.wake?.(); });
    s.on('error', () => { this.ended = true; this.wake?.(); });
  }
  async read(n: number): Promise<Buffer | 'closed'> {
    while (this.buf.length < n) {
      if (this.ended) return 'closed';
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  /** Re-reads from a new (TLS) socket over the same connection. */
  switchTo(s: TLSSocket): Reader { return new Reader(s); }
}

interface Reply { option: number; type: string; text: string }

/** Sends one option and reads its replies until a final one (ACK or error), or the close. */
async function option(sock: Socket | TLSSocket, r: Reader, opt: number, data?: Buffer): Promise<Reply[] | 'closed'> {
  sock.write(buildOptionRequest(opt, data));
  const out: Reply[] = [];
  for (;;) {
    const h = await r.read(20);
    if (h === 'closed') return out.length ? out : 'closed';
    const type = h.readUInt32BE(12);
    const len = h.readUInt32BE(16);
    const p = len ? await r.read(len) : Buffer.alloc(0);
    if (p === 'closed') return 'closed';
    const err = (type & 0x80000000) !== 0;
    out.push({ option: h.readUInt32BE(8), type: `0x${type.toString(16)}`, text: err ? p.toString('utf8') : p.toString('hex') });
    if (type === 1 || err) return out;
  }
}

async function greet(port: number): Promise<{ sock: Socket; r: Reader }> {
  const sock = connect(port, '127.0.0.1');
  const r = new Reader(sock);
  const g = await r.read(18);
  if (g === 'closed') throw new Error('no greeting');
  sock.write(Buffer.from([0, 0, 0, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES]));
  return { sock, r };
}

const info = buildInfoRequestData({ name: 'disk0', requests: [] });
const meta = buildMetaContextRequestData({ exportName: 'disk0', queries: ['base:allocation'] });

/** The options a client may try before TLS, and what it got for each. */
async function plainSession(port: number): Promise<unknown[]> {
  const { sock, r } = await greet(port);
  const got: unknown[] = [];
  for (const [opt, data] of [[Opt.LIST], [Opt.INFO, info], [Opt.GO, info], [Opt.STRUCTURED_REPLY], [Opt.SET_META_CONTEXT, meta],
    [Opt.LIST_META_CONTEXT, meta], [42]] as [number, Buffer?][]) {
    got.push(await option(sock, r, opt, data));
  }
  got.push(await option(sock, r, Opt.EXPORT_NAME, Buffer.from('disk0')));
  sock.destroy();
  return got;
}

describe('a TLS-only NBD server, side by side with qsd', () => {
  it('a plain client: the same replies to every option, EXPORT_NAME ends the session', async () => {
    const [q, b] = await Promise.all(BOTH.map((w) => plainSession(ports[w].x509)));
    expect(b).toEqual(q);
    expect(q.at(-1)).toBe('closed');
    expect((q[0] as Reply[])[0]).toEqual({ option: Opt.LIST, type: '0x80000005', text: 'Option 0x3 not permitted before TLS' });
  });

  it('STARTTLS with data is refused and ends the session; ABORT is acknowledged by blockd (the spec), refused by qsd', async () => {
    for (const who of BOTH) {
      const { sock, r } = await greet(ports[who].x509);
      expect(await option(sock, r, Opt.STARTTLS, Buffer.from('x')), who)
        .toEqual([{ option: Opt.STARTTLS, type: '0x80000003', text: "option 'starttls' has unexpected length" }]);
      expect(await r.read(1), who).toBe('closed');
      sock.destroy();
    }
    const abort = await Promise.all(BOTH.map(async (w) => {
      const { sock, r } = await greet(ports[w].x509);
      const got = await option(sock, r, Opt.ABORT);
      sock.destroy();
      return got;
    }));
    expect(abort[0]).toEqual([{ option: Opt.ABORT, type: '0x80000005', text: 'Option 0x2 not permitted before TLS' }]);
    expect(abort[1]).toEqual([{ option: Opt.ABORT, type: '0x1', text: '' }]);
  });

  it('after STARTTLS: the same replies over TLS, a second STARTTLS is "TLS already enabled"', async () => {
    const session = async (port: number) => {
      const { sock, r } = await greet(port);
      const got: unknown[] = [await option(sock, r, Opt.STRUCTURED_REPLY), await option(sock, r, Opt.STARTTLS)];
      sock.removeAllListeners('data');
      const t = tlsConnect({
        socket: sock, servername: 'localhost',
        ca: readFileSync(join(fx.client1, 'ca-cert.pem')),
        cert: readFileSync(join(fx.client1, 'client-cert.pem')), key: readFileSync(join(fx.client1, 'client-key.pem')),
      });
      const tr = new Reader(t);
      await new Promise<void>((res, rej) => { t.once('secureConnect', res); t.once('error', rej); });
      for (const [opt, data] of [[Opt.STARTTLS], [Opt.SET_META_CONTEXT, meta], [Opt.LIST], [Opt.STRUCTURED_REPLY],
        [Opt.STRUCTURED_REPLY], [Opt.LIST_META_CONTEXT, meta]] as [number, Buffer?][]) {
        got.push(await option(t, tr, opt, data));
      }
      t.destroy();
      return got;
    };
    const [q, b] = await Promise.all(BOTH.map((w) => session(ports[w].x509)));
    expect(b).toEqual(q);
    // Structured replies asked for before TLS do not count after it: SET_META_CONTEXT needs them again.
    expect((q[3] as Reply[])[0].text).toBe("request option 'set meta context' when structured reply is not negotiated");
    expect((q[2] as Reply[])[0].text).toBe('TLS already enabled');
  });

  it('real clients: the same outcome for the allowed, the glob-denied, the expired and the wrong-CA client', () => {
    const outcome = (who: Who, dir: string) =>
      tryRun('nbdinfo', ['--size', `nbds://127.0.0.1:${ports[who].x509}/disk0?tls-certificates=${dir}`]).status === 0;
    for (const [dir, expected] of [[fx.client1, true], [fx.client2, false], [fx.expired, false], [fx.wrongCa, false]] as [string, boolean][]) {
      expect(BOTH.map((w) => outcome(w, dir)), dir).toEqual([expected, expected]);
    }
    // A plain URI: the same message from libnbd.
    const plain = BOTH.map((w) => tryRun('nbdinfo', ['--size', `nbd://127.0.0.1:${ports[w].x509}/disk0`]).stderr);
    expect(plain[1]).toBe(plain[0]);
  });

  it('a CRL (ca-crl.pem): the revoked client is refused, the other served, on both', () => {
    const outcome = (who: Who, dir: string) =>
      tryRun('nbdinfo', ['--size', `nbds://127.0.0.1:${ports[who].crl}/disk0?tls-certificates=${dir}`]).status === 0;
    expect(BOTH.map((w) => outcome(w, fx.client1))).toEqual([true, true]);
    expect(BOTH.map((w) => outcome(w, fx.client2))).toEqual([false, false]);
  });

  it('PSK: the right key is served, a wrong key is not, on both', () => {
    const outcome = (who: Who, file: string) =>
      tryRun('nbdinfo', ['--size', `nbds://alice@127.0.0.1:${ports[who].psk}/disk0?tls-psk-file=${file}`]).status === 0;
    expect(BOTH.map((w) => outcome(w, fx.pskAlice))).toEqual([true, true]);
    expect(BOTH.map((w) => outcome(w, fx.pskWrong))).toEqual([false, false]);
  });
});
