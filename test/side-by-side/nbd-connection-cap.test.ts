/**
 * The NBD server's default connection cap, side by side with qsd 7.2 as
 * Debian ships it (with the CVE-2024-7409 fix: max-connections defaults to
 * 100): of 101 clients the first 100 are greeted at once, the 101st waits
 * until one of them leaves. An explicit max-connections is kept, 0 meaning
 * no limit.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';

const running: Running[] = [];
afterEach(async () => { for (const d of running.splice(0)) await d.stop(); });

/** A client that only waits for the server's greeting ("NBDMAGIC"). */
interface Waiter { socket: Socket; greeted: Promise<boolean>; isGreeted(): boolean }

function openClient(path: string): Waiter {
  const socket = connect(path);
  let got = Buffer.alloc(0);
  let done = false;
  const greeted = new Promise<boolean>((resolve) => {
    socket.on('data', (d) => {
      got = Buffer.concat([got, d]);
      if (!done && got.length >= 8) { done = true; resolve(got.subarray(0, 8).toString('latin1') === 'NBDMAGIC'); }
    });
    socket.on('error', () => resolve(false));
    socket.on('close', () => resolve(false));
  });
  return { socket, greeted, isGreeted: () => done };
}

const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function greetedCounts(who: 'qsd' | 'blockd', serverOpts: string, clients: number) {
  const dir = tempDir();
  const sock = join(dir, 'nbd.sock');
  const qmp = join(dir, 'qmp.sock');
  const d = await startDaemon(who, [
    '--blockdev', 'driver=null-co,node-name=n0,size=1048576',
    '--nbd-server', `addr.type=unix,addr.path=${sock}${serverOpts}`,
    '--export', 'type=nbd,id=e0,node-name=n0',
    '--chardev', `socket,id=m0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m0',
  ], qmp);
  running.push(d);
  const all: Waiter[] = [];
  for (let i = 0; i < clients; i++) {
    all.push(openClient(sock));
    // One at a time, so "the first 100" are the first 100 connected.
    await new Promise<void>((r) => all[i].socket.once('connect', () => r()));
  }
  await settle(1000);
  const atOnce = all.map((c) => c.isGreeted());
  // One of the greeted leaves: a waiting client takes its slot.
  all[0].socket.destroy();
  await settle(1000);
  const afterLeave = all.map((c) => c.isGreeted());
  for (const c of all) c.socket.destroy();
  return {
    greetedAtOnce: atOnce.filter(Boolean).length,
    lastGreetedAtOnce: atOnce[clients - 1],
    lastGreetedAfterOneLeft: afterLeave[clients - 1],
  };
}

describe('NBD connection cap', () => {
  it('default: 100 clients greeted at once, the 101st waits until one leaves, as qsd', async () => {
    const qsd = await greetedCounts('qsd', '', 101);
    const blockd = await greetedCounts('blockd', '', 101);
    expect(qsd).toEqual({ greetedAtOnce: 100, lastGreetedAtOnce: false, lastGreetedAfterOneLeft: true });
    expect(blockd).toEqual(qsd);
  });

  it('explicit max-connections=3 and max-connections=0 (no limit) are kept, as qsd', async () => {
    for (const [opts, clients] of [[',max-connections=3', 4], [',max-connections=0', 110]] as const) {
      const qsd = await greetedCounts('qsd', opts, clients);
      const blockd = await greetedCounts('blockd', opts, clients);
      expect(blockd, opts).toEqual(qsd);
    }
  });
});
