/**
 * One NBD server start path (src/nbd/start.ts) behind --nbd-server and
 * nbd-server-start: the same arguments give qsd's text on both, for an
 * unbindable Unix path, a bad port, unknown TLS credentials (looked up after
 * the bind, as qsd does: a bad path wins), and a second server over QMP.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { requireTool } from '../helpers/tools.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { BOTH, type Who } from '../helpers/pair.ts';

const QSD = requireTool('qemu-storage-daemon');

/** The daemon's one-line start-up error (program name stripped), and its exit status. */
function startFails(who: Who, args: string[]): { status: number | null; text: string } {
  const r = spawnSync(who === 'qsd' ? QSD : BLOCKD, args, { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, text: r.stderr.trim().replace(/^(qemu-storage-daemon|blockd): /, '') };
}

/** SocketAddress (flat, the command line's form) -> SocketAddressLegacy (nbd-server-start's). */
function legacy(addr: Record<string, string>): Record<string, unknown> {
  const { type, ...data } = addr;
  // The command line's on/off are JSON booleans over QMP.
  const json = Object.fromEntries(Object.entries(data).map(([k, v]) => [k, v === 'on' ? true : v === 'off' ? false : v]));
  return { type, data: json };
}

const stops: (() => Promise<void>)[] = [];
afterEach(async () => { for (const s of stops.splice(0)) await s().catch(() => undefined); });

describe('NBD server start: command line and QMP alike, as qsd', () => {
  const cases = (dir: string): { what: string; addr: Record<string, string>; extra?: Record<string, string> }[] => [
    { what: 'a Unix path in a missing directory', addr: { type: 'unix', path: join(dir, 'missing', 'nbd.sock') } },
    { what: 'a port that is not a number', addr: { type: 'inet', host: '127.0.0.1', port: 'abc' } },
    { what: 'unknown TLS credentials', addr: { type: 'unix', path: join(dir, 'tls.sock') }, extra: { 'tls-creds': 'tls0' } },
    { what: 'unknown TLS credentials behind a bad path', addr: { type: 'unix', path: join(dir, 'missing', 'x.sock') }, extra: { 'tls-creds': 'tls0' } },
    // InetSocketAddress's members (QEMU's inet_listen_saddr): each refusal as qsd words it.
    { what: 'an IPv4 address with ipv6=on', addr: { type: 'inet', host: '127.0.0.1', port: '0', ipv6: 'on' } },
    { what: 'an IPv6 address with ipv4=on', addr: { type: 'inet', host: '::1', port: '0', ipv4: 'on' } },
    { what: 'a host name with numeric=on', addr: { type: 'inet', host: 'localhost', port: '0', numeric: 'on' } },
    { what: 'ipv4=off and ipv6=off', addr: { type: 'inet', host: '127.0.0.1', port: '0', ipv4: 'off', ipv6: 'off' } },
    { what: 'a host that does not resolve', addr: { type: 'inet', host: 'no-such-host.invalid', port: '0' } },
  ];

  it('--nbd-server fails with the same message and status', () => {
    const dir = tempDir('blockd-nbdstart-');
    for (const c of cases(dir)) {
      const kv = [...Object.entries(c.addr).map(([k, v]) => `addr.${k}=${v}`), ...Object.entries(c.extra ?? {}).map(([k, v]) => `${k}=${v}`)].join(',');
      const [q, b] = BOTH.map((who) => startFails(who, ['--nbd-server', kv]));
      expect(b, c.what).toEqual(q);
      expect(q.status, c.what).toBe(1);
    }
  });

  it('nbd-server-start gives the same errors as --nbd-server, and refuses a second server', async () => {
    const dir = tempDir('blockd-nbdstart-');
    const replies: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await qmpDaemon(who, dir, []);
      stops.push(async () => { d.qmp.close(); await d.proc.stop(); });
      const ask = (args: Record<string, unknown>) => d.qmp.execute('nbd-server-start', args).then(() => 'ok', (e: Error) => e.message);
      for (const c of cases(dir)) replies[who].push(await ask({ addr: legacy(c.addr), ...c.extra }));
      replies[who].push(await ask({ addr: legacy({ type: 'unix', path: join(dir, `${who}-nbd.sock`) }) }));
      replies[who].push(await ask({ addr: legacy({ type: 'unix', path: join(dir, `${who}-nbd2.sock`) }) }));
    }
    expect(replies.blockd).toEqual(replies.qsd);
    expect(replies.qsd.slice(-2)).toEqual(['ok', 'GenericError: NBD server already running']);
    // The command line says what QMP says (the start-up message is the QMP desc).
    const cli = cases(dir).map((c) => startFails('blockd', ['--nbd-server', [...Object.entries(c.addr).map(([k, v]) => `addr.${k}=${v}`), ...Object.entries(c.extra ?? {}).map(([k, v]) => `${k}=${v}`)].join(',')]).text);
    expect(cli.map((t) => t.replace(/^--nbd-server \S+: /, ''))).toEqual(replies.blockd.slice(0, cli.length).map((r) => String(r).replace(/^GenericError: /, '')));
  });
});
