/** The plain socket transport: reads into one reused buffer, the send(2) fast path, cork, detach. */
import { describe, it, expect, afterEach } from 'vitest';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { PlainSocketTransport } from '../../src/nbd/transport/plain.ts';
import type { TransportEvents } from '../../src/nbd/transport/transport.ts';

let server: Server | undefined;
const clients: Socket[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  server = undefined;
});

/** A transport over an accepted TCP socket, and the client's end. */
async function pair(): Promise<{ t: PlainSocketTransport; client: Socket }> {
  let accepted!: (s: Socket) => void;
  const got = new Promise<Socket>((r) => (accepted = r));
  server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, accepted);
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  const client = connect(port, '127.0.0.1');
  clients.push(client);
  return { t: new PlainSocketTransport(await got), client };
}

function recorder() {
  const log: string[] = [];
  const chunks: Buffer[] = [];
  const events: TransportEvents = {
    data: (c) => { chunks.push(Buffer.from(c)); log.push(`data ${c.length}`); return true; },
    end: () => log.push('end'),
    error: (e) => log.push(`error ${e.message}`),
    close: () => log.push('close'),
    drain: () => log.push('drain'),
  };
  return { log, chunks, events };
}

/** Waits until `cond` holds (the machine may be loaded: no fixed sleeps). */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 1000) throw new Error('condition not met in 10 s');
    await new Promise((res) => setTimeout(res, 10));
  }
}

const received = (s: Socket, n: number) => new Promise<Buffer>((resolve) => {
  const got: Buffer[] = [];
  let len = 0;
  s.on('data', (b: Buffer) => { got.push(b); len += b.length; if (len >= n) resolve(Buffer.concat(got)); });
});

describe('PlainSocketTransport', () => {
  it('takes the handle over: transient reads, the fast path, writes corked together', async () => {
    const { t, client } = await pair();
    expect(t.transientReads).toBe(true);
    expect(t.fastPath).toBe(true);
    expect(t.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    const r = recorder();
    t.attach(r.events);
    t.resume();
    client.write('hello');
    await until(() => Buffer.concat(r.chunks).length >= 5);
    expect(Buffer.concat(r.chunks).toString()).toBe('hello');

    const out = received(client, 9);
    expect(t.trySend(Buffer.from('abc'))).toBe(3);
    t.cork();
    t.write(Buffer.from('de'));
    let written = false;
    t.write(Buffer.from('fghi'), () => (written = true));
    expect(t.writableLength).toBe(6);
    t.uncork();
    expect((await out).toString()).toBe('abcdefghi');
    expect(written).toBe(true);

    client.end();
    await until(() => r.log.includes('end'));
    t.end();
    await until(() => r.log.includes('close'));
    expect(r.log[r.log.length - 1]).toBe('close');
    expect(t.writable).toBe(false);
  });

  it('detach() stops events and reading without closing; a new attach takes over', async () => {
    const { t, client } = await pair();
    const first = recorder();
    t.attach(first.events);
    t.resume();
    t.detach();
    client.write('after');
    await new Promise((res) => setTimeout(res, 50)); // time for a read that must not happen
    expect(first.chunks).toEqual([]);
    expect(t.destroyed).toBe(false);
    const second = recorder();
    t.attach(second.events);
    t.resume();
    await until(() => Buffer.concat(second.chunks).length >= 5);
    expect(Buffer.concat(second.chunks).toString()).toBe('after');
    t.detach();
    t.socket.destroy(new Error('reset while detached')); // no listener of ours: must not be an uncaught error
    await until(() => t.destroyed);
    await new Promise((res) => setTimeout(res, 20));
    expect(second.log).not.toContain('close');
    expect(first.log).toEqual([]);
  });
});
