/**
 * --chardev backends no monitor uses, side by side with qemu-storage-daemon
 * 7.2: ringbuf, memory, null, file and pipe open at start-up as qsd opens
 * them (and then answer query-chardev and the ringbuf commands alike), and
 * bad ones fail start-up with qsd's message. Also (at run time) a connecting
 * chardev with reconnect: its first failure reported once on stderr, and
 * the connection made when the peer comes, as qsd.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { requireTool, run } from '../helpers/tools.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import { getPort } from '../helpers/port.ts';
import { createServer, type Socket } from 'node:net';

/** The first line a daemon prints when start-up fails, without its name. */
function startupError(who: Who, args: string[]): string {
  const cmd = who === 'qsd' ? requireTool('qemu-storage-daemon') : BLOCKD;
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
  expect(r.status, `${who} ${args.join(' ')}`).not.toBe(0);
  return r.stderr.split('\n')[0]!.replace(/^(qemu-storage-daemon|blockd): /, '');
}

describe('--chardev backends without a monitor, side by side with qemu-storage-daemon', () => {
  it('bad ones fail start-up with the same message', () => {
    const dir = tempDir('blockd-chardev-cli-');
    const cases = [
      ['--chardev', 'ringbuf,id=r,size=15'],
      ['--chardev', 'ringbuf,id=r,size=x'],
      ['--chardev', 'ringbuf,id=r', '--chardev', 'ringbuf,id=r'],
      ['--chardev', `socket,id=r,path=${join(dir, 'x.sock')},server=on,wait=off`, '--chardev', 'null,id=r'],
      ['--chardev', 'null,id=r', '--chardev', `socket,id=r,path=${join(dir, 'y.sock')},server=on,wait=off`],
      ['--chardev', 'file,id=r'],
      ['--chardev', 'pipe,id=r'],
      ['--chardev', 'file,id=r,path=/nonexistent/x'],
      ['--chardev', 'pipe,id=r,path=/nonexistent/p'],
      ['--chardev', 'null,id=r,nope=1'],
      ['--chardev', 'null,id=r,logfile=/nonexistent/l'],
      ['--chardev', 'null'],
      ['--chardev', 'udp,id=u'],
      ['--chardev', 'udp,id=u,host=nonexistent.invalid,port=9'],
      ['--chardev', 'udp,id=u,port=9,ipv4=off,ipv6=off'],
      ['--chardev', 'udp,id=u,port=9,localaddr=192.0.2.1'],
    ];
    for (const args of cases) expect(startupError('blockd', args), args.join(' ')).toBe(startupError('qsd', args));
  });

  it('good ones open at start-up and answer query-chardev and the ringbuf commands alike', async () => {
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const dir = tempDir(`blockd-chardev-cli-${who}-`);
      run('mkfifo', [join(dir, 'fifo')]);
      const d = await qmpDaemon(who, dir, [
        '--chardev', 'ringbuf,id=r,size=8',
        '--chardev', 'memory,id=m2,size=4G', // qsd keeps the size in an int: 0, so the default
        '--chardev', `null,id=n,logfile=${join(dir, 'n.log')}`,
        '--chardev', `file,id=f,path=${join(dir, 'f.out')},append=on`,
        '--chardev', `pipe,id=p,path=${join(dir, 'fifo')}`,
        '--chardev', 'udp,id=u,port=9,localaddr=127.0.0.1,localport=0',
      ]);
      try {
        const ask = (c: string, a?: Record<string, unknown>) => d.qmp.execute(c, a).catch((e: Error) => e.message);
        const list = ((await ask('query-chardev')) as { label: string; filename: string }[])
          .map((c) => ({ ...c, filename: c.filename.replace(dir, 'DIR').replace(`qmp-${who}.sock`, 'qmp.sock') }))
          .sort((a, b) => a.label.localeCompare(b.label));
        seen[who].push(list);
        seen[who].push(await ask('ringbuf-write', { device: 'r', data: 'abcdefghijk' }));
        seen[who].push(await ask('ringbuf-read', { device: 'r', size: 100 }));
        seen[who].push(await ask('ringbuf-write', { device: 'm2', data: 'x'.repeat(70000) }));
        seen[who].push(((await ask('ringbuf-read', { device: 'm2', size: 100000 })) as string).length);
        seen[who].push(await ask('ringbuf-write', { device: 'n', data: 'x' }));
        for (const f of ['n.log', 'f.out']) expect(existsSync(join(dir, f)), `${who} ${f}`).toBe(true);
      } finally {
        d.qmp.close();
        await d.proc.stop();
      }
    }
    expect(seen.blockd).toEqual(seen.qsd);
  });

  it('a connecting chardev with reconnect: reports the first failure once, and connects when its peer comes', async () => {
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const dir = tempDir(`blockd-chardev-reconnect-${who}-`);
      const port = await getPort();
      const d = await qmpDaemon(who, dir, []);
      const peers: Socket[] = [];
      const server = createServer((s) => peers.push(s));
      try {
        const name = async () => ((await d.qmp.execute('query-chardev')) as { label: string; filename: string }[]).find((c) => c.label === 'rc')?.filename;
        await d.qmp.execute('chardev-add', { id: 'rc', backend: { type: 'socket', data: { addr: { type: 'inet', data: { host: '127.0.0.1', port: String(port) } }, server: false, reconnect: 1 } } });
        await new Promise((r) => setTimeout(r, 2500));
        seen[who].push(await name());
        seen[who].push(d.proc.stderr().split('\n').filter((l) => l.includes('Unable to connect')).map((l) => l.replace(/^(qemu-storage-daemon|blockd): /, '')));
        await new Promise<void>((r) => server.listen(port, '127.0.0.1', () => r()));
        for (let i = 0; i < 40 && peers.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
        await new Promise((r) => setTimeout(r, 200));
        seen[who].push(peers.length, (await name())?.replace(/^tcp:127\.0\.0\.1:\d+ /, 'tcp:127.0.0.1:LOCAL '));
        await d.qmp.execute('chardev-remove', { id: 'rc' });
        seen[who] = JSON.parse(JSON.stringify(seen[who]).replaceAll(`:${port}`, ':PORT'));
      } finally {
        for (const p of peers) p.destroy();
        await new Promise((r) => server.close(r));
        d.qmp.close();
        await d.proc.stop();
      }
    }
    expect(seen.blockd).toEqual(seen.qsd);
  });

  it('a monitor on a ringbuf chardev is refused (qsd would serve QMP into the ring)', () => {
    expect(startupError('blockd', ['--chardev', 'ringbuf,id=r', '--monitor', 'r']))
      .toBe("--monitor r: a QMP monitor needs a socket or stdio chardev; blockd does not serve one on 'chardev-ringbuf'");
  });
});
