/**
 * The InetSocketAddress members of --nbd-server do what qsd's do (they were
 * accepted and ignored before): a port range `to` takes the first free port,
 * `ipv4=on` with no host binds every IPv4 address, `ipv6=on` IPv6 only;
 * a Unix `abstract` socket (tight=off: Node pads the name) has no file. Beyond qsd 7.2 (which accepts
 * `keep-alive` on a listener and ignores it), blockd turns on TCP keep-alive
 * for each client; `mptcp` it refuses (Node has no MPTCP sockets).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:net';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { qmpDaemon } from '../helpers/live.ts';
import { BLOCKD, tempDir, type Running } from '../helpers/daemons.ts';
import { getPort } from '../helpers/port.ts';
import { run } from '../helpers/tools.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';

const cleanups: (() => unknown)[] = [];
afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c(); });

async function daemon(who: Who, addr: Record<string, unknown>): Promise<{ qmp: QmpClient; proc: Running }> {
  const dir = tempDir(`nbd-inet-${who}-`);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const d = await qmpDaemon(who, dir, ['--blockdev', 'driver=null-co,node-name=n0,size=1048576']);
  cleanups.push(async () => { d.qmp.close(); await d.proc.stop(); });
  await d.qmp.execute('nbd-server-start', { addr: { type: addr.type, data: Object.fromEntries(Object.entries(addr).filter(([k]) => k !== 'type')) } });
  await d.qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'n0', name: 'n0' });
  return d;
}

/** The listening sockets of a process, as ss prints their local addresses. */
function listening(pid: number): string[] {
  return run('ss', ['-Hltnp']).split('\n').filter((l) => l.includes(`pid=${pid},`)).map((l) => l.trim().split(/\s+/)[3]).sort();
}

function holdPort(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => resolve(s));
  });
}

describe('--nbd-server inet and unix members, side by side with qsd', () => {
  it('to: the first free port of the range is taken', async () => {
    const port = await getPort();
    const held = await holdPort(port);
    cleanups.push(() => new Promise((r) => held.close(r)));
    const seen: Record<Who, string[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await daemon(who, { type: 'inet', host: '127.0.0.1', port: String(port), to: port + 20 });
      seen[who] = listening(d.proc.proc.pid!);
      const bound = Number(seen[who][0].split(':').pop());
      expect(bound).toBeGreaterThan(port);
      expect(run('nbdinfo', ['--size', `nbd://127.0.0.1:${bound}/n0`]).trim()).toBe(String(1 << 20));
      await d.qmp.execute('nbd-server-stop', {});
    }
    expect(seen.blockd.length).toBe(1);
  });

  it('without a host, neither, ipv4=on, ipv6=on or both bind what qsd binds', async () => {
    for (const fam of [{}, { ipv4: true }, { ipv6: true }, { ipv4: true, ipv6: true }]) {
      const seen: Record<Who, string[]> = { qsd: [], blockd: [] };
      for (const who of BOTH) {
        const port = await getPort();
        const d = await daemon(who, { type: 'inet', host: '', port: String(port), ...fam });
        seen[who] = listening(d.proc.proc.pid!).map((a) => a.replace(`:${port}`, ':PORT'));
        await d.qmp.execute('nbd-server-stop', {});
      }
      expect(seen.blockd, JSON.stringify(fam)).toEqual(seen.qsd);
    }
  });

  it('abstract=on,tight=off: a Unix socket without a file, served by name (tight=on blockd refuses)', async () => {
    for (const who of BOTH) {
      const name = `blockd-test-abstract-${who}-${process.pid}`;
      await daemon(who, { type: 'unix', path: name, abstract: true, tight: false });
      // libnbd takes no abstract address; QEMU's own client does.
      const info = JSON.parse(run('qemu-img', ['info', '--output=json', '--image-opts', `driver=nbd,server.type=unix,server.path=${name},server.abstract=on,server.tight=off,export=n0`])) as { 'virtual-size': number };
      expect(info['virtual-size'], who).toBe(1 << 20);
    }
    const r = spawnSync(BLOCKD, ['--nbd-server', 'addr.type=unix,addr.path=x,addr.abstract=on'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('tight=off');
  });

  it('keep-alive=on: each client connection has TCP keep-alive (qsd accepts the option and ignores it)', async () => {
    const port = await getPort();
    await daemon('blockd', { type: 'inet', host: '127.0.0.1', port: String(port), 'keep-alive': true });
    // (After a moment: while a reply is unacknowledged, ss shows the retransmit timer instead.)
    const py = `import nbd, subprocess, time\nh = nbd.NBD()\nh.connect_uri('nbd://127.0.0.1:${port}/n0')\ntime.sleep(0.5)\nprint(subprocess.run(['ss', '-Htno', 'state', 'established', 'sport', '= :${port}'], capture_output=True, text=True).stdout)`;
    const ss = run('/usr/bin/python3', ['-c', py]);
    expect(ss).toMatch(/timer:\(keepalive/);
  });

  it('mptcp=on is refused with a reason (qsd listens with multipath TCP)', () => {
    const r = spawnSync(BLOCKD, ['--nbd-server', `addr.type=inet,addr.host=127.0.0.1,addr.port=0,addr.mptcp=on`], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('mptcp=on');
  });
});
