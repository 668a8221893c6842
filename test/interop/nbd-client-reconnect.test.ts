/**
 * driver=nbd's reconnect as QEMU's: the remote server (nbdkit file) is
 * killed and restarted while a client keeps up to 8 writes in flight
 * through a blockd export of the nbd node. Within reconnect-delay nothing
 * fails and every acknowledged write is in the remote file; after the delay
 * requests fail with EIO until the server is back, then work again;
 * open-timeout retries the first connection.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { cleanupsAfterEach, flush, Writer } from '../helpers/live.ts';
import { RawClient, rawNegotiate, request, simpleReplyOf } from '../helpers/nbd.ts';
import { startNbdkit, type Nbdkit } from '../helpers/nbdkit.ts';
import { run } from '../helpers/tools.ts';

const SIZE = 16 * 1024 * 1024;
const cleanups = cleanupsAfterEach();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function remote(sock: string, file: string): Promise<Nbdkit> {
  if (existsSync(sock)) rmSync(sock);
  const k = await startNbdkit(sock, ['file', file]);
  cleanups.push(() => k.stop('SIGKILL'));
  return k;
}

async function front(dir: string, remoteSock: string, opts: string): Promise<{ d: Running; sock: string }> {
  const own = join(dir, 'front');
  mkdirSync(own, { recursive: true });
  const sock = join(own, 'nbd.sock');
  const d = await startDaemon('blockd', [
    '--blockdev', `driver=nbd,node-name=n0,server.type=unix,server.path=${remoteSock}${opts}`,
    '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e,node-name=n0,name=disk,writable=on',
  ], sock);
  cleanups.push(async () => { await d.stop(); });
  return { d, sock };
}

async function client(sock: string): Promise<RawClient> {
  const c = new RawClient(sock);
  cleanups.push(async () => c.destroy());
  expect(await rawNegotiate(c, 'disk')).toBe(SIZE);
  return c;
}

describe('driver=nbd reconnect', () => {
  it('the server restarted within reconnect-delay: no request fails, every acknowledged write is on the remote', async () => {
    const dir = tempDir('blockd-nbdrc-');
    const file = join(dir, 'remote.raw');
    run('truncate', ['-s', String(SIZE), file]);
    const rsock = join(dir, 'remote.sock');
    let k = await remote(rsock, file);
    const f = await front(dir, rsock, ',reconnect-delay=20');
    const c = await client(f.sock);
    const w = new Writer(c, Buffer.alloc(SIZE), 8);
    w.start();
    await sleep(500);
    const before = w.writes;
    await k.stop('SIGKILL');
    await sleep(1500);
    const during = w.writes;
    k = await remote(rsock, file);
    // The writes carry on once the client has reconnected (its next try; later on a loaded machine).
    for (let i = 0; i < 150 && w.writes <= during + 8; i++) await sleep(100);
    await w.stop();
    await flush(c);
    expect(before).toBeGreaterThan(0);
    // Writes waited while the server was away (at most the 8 in flight were issued), then carried on.
    expect(during - before).toBeLessThanOrEqual(8);
    expect(w.writes).toBeGreaterThan(during);
    expect(w.errors).toBe(0);
    expect(readFileSync(file).equals(w.model)).toBe(true);
    expect(f.d.stderr()).toContain('reconnected');
  });

  it('the server back after reconnect-delay: requests fail with EIO meanwhile, then succeed again', async () => {
    const dir = tempDir('blockd-nbdrc-');
    const file = join(dir, 'remote.raw');
    run('truncate', ['-s', String(SIZE), file]);
    const rsock = join(dir, 'remote.sock');
    const k = await remote(rsock, file);
    const f = await front(dir, rsock, ',reconnect-delay=1');
    const c = await client(f.sock);
    await k.stop('SIGKILL');
    await sleep(2500);
    c.write(request(0, 0, 4096, 1n));
    const [err] = await simpleReplyOf(c, 10_000);
    expect(err).toBe(5);
    await remote(rsock, file);
    // The background reconnect retries 1, 2, 4 s apart: within ~8 s a read works again.
    let ok = false;
    for (let i = 0; i < 40 && !ok; i++) {
      c.write(request(0, 0, 4096, BigInt(10 + i)));
      const [e] = await simpleReplyOf(c, 10_000);
      if (e === 0) { await c.read(4096); ok = true; } else await sleep(250);
    }
    expect(ok).toBe(true);
  });

  it('open-timeout retries the first connection; without it the start fails at once', async () => {
    const dir = tempDir('blockd-nbdrc-');
    const file = join(dir, 'remote.raw');
    run('truncate', ['-s', String(SIZE), file]);
    const rsock = join(dir, 'remote.sock');
    await expect(front(dir, rsock, '')).rejects.toThrow(/Failed to connect to '.*remote.sock': No such file or directory/);
    const starting = front(dir, rsock, ',open-timeout=10');
    await sleep(1200);
    await remote(rsock, file);
    const f = await starting;
    const c = await client(f.sock);
    c.write(request(0, 0, 4096, 1n));
    expect((await simpleReplyOf(c, 10_000))[0]).toBe(0);
  });
});
