/**
 * Hostile and unlucky clients: garbage, bad magic, hang-ups mid-request,
 * slow readers, half-open handshakes, connection floods. Each must cost at
 * most its own connection and leave the server healthy.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Cmd } from '../../src/nbd-protocol/constants.ts';
import {
  RawClient, nbdsh, rawNegotiate, request, runTool, simpleReplyOf, startHarness, type Harness,
} from '../helpers/nbd.ts';

const MB = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function healthy(h: Harness, name = 'disk'): Promise<void> {
  const info = JSON.parse(await runTool('nbdinfo', ['--json', h.unixUri(name)]));
  expect(info.exports[0]['export-name']).toBe(name);
}

async function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await sleep(20);
  }
}

describe('a server under abuse', () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness(
      [{ driver: 'mem', 'node-name': 'n0', size: 64 * MB }, { driver: 'null-co', 'node-name': 'z0', size: 64 * MB }],
      [{ id: 'e0', nodeName: 'n0', name: 'disk', writable: true }, { id: 'e1', nodeName: 'z0', name: 'null', writable: true }],
      // No connection cap (max-connections=0): the 200-client cases below serve everyone at once.
      { handshakeMaxSeconds: 1, maxConnections: 0 },
    );
  });
  afterAll(async () => h?.close());

  it('random garbage during negotiation closes only that connection', async () => {
    const keep = new RawClient(h.sock);
    await rawNegotiate(keep, 'disk');
    for (let i = 0; i < 20; i++) {
      const c = new RawClient(h.sock);
      await c.read(18);
      c.write(randomBytes(1 + i * 37));
      expect(await c.waitClosed(3000)).toBe(true);
    }
    keep.write(request(Cmd.READ, 0, 512, 7n));
    expect(await simpleReplyOf(keep)).toEqual([0, 7n]);
    await keep.read(512);
    keep.destroy();
    await healthy(h);
  });

  it('a bad request magic is answered EINVAL and closes that connection; replies already due are still sent', async () => {
    const other = new RawClient(h.sock);
    await rawNegotiate(other, 'disk');
    const c = new RawClient(h.sock);
    await rawNegotiate(c, 'disk');
    c.write(Buffer.concat([request(Cmd.FLUSH, 0, 0, 1n), request(Cmd.READ, 0, 512, 2n, 0, 0xbadc0ffe), request(Cmd.FLUSH, 0, 0, 3n)]));
    // Replies come as requests complete: the refusal may overtake the flush.
    const replies = [await simpleReplyOf(c), await simpleReplyOf(c)].sort((x, y) => Number(x[1] - y[1]));
    expect(replies).toEqual([[0, 1n], [22, 2n]]);
    expect(await c.waitClosed()).toBe(true);
    expect(c.pending()).toBe(0);
    other.write(request(Cmd.FLUSH, 0, 0, 9n));
    expect(await simpleReplyOf(other)).toEqual([0, 9n]);
    other.destroy();
  });

  it('a client hanging up in the middle of a write payload leaves nothing behind', async () => {
    const exp = h.registry.get('e0')!;
    for (const cut of [0, 1, 27, 28, 29, 4096, 65536 + 28]) {
      const c = new RawClient(h.sock);
      await rawNegotiate(c, 'disk');
      const msg = Buffer.concat([request(Cmd.WRITE, 0, 128 * 1024, 5n), Buffer.alloc(128 * 1024, 0xee)]);
      c.write(msg.subarray(0, cut));
      await sleep(20);
      c.destroy();
    }
    await until(() => exp.connections() === 0);
    expect(h.mem.states.get('n0')!.data.subarray(0, 128 * 1024).includes(0xee)).toBe(false);
    await healthy(h);
  });

  it('an oversize WRITE is refused with EINVAL after its payload, and the stream stays in sync', async () => {
    const c = new RawClient(h.sock);
    await rawNegotiate(c, 'disk');
    const len = 32 * MB + 4096;
    c.write(request(Cmd.WRITE, 0, len, 11n));
    for (let sent = 0; sent < len; sent += MB) c.write(Buffer.alloc(Math.min(MB, len - sent), 0xcd));
    c.write(request(Cmd.READ, 0, 16, 12n));
    expect(await simpleReplyOf(c, 10_000)).toEqual([22, 11n]);
    expect(await simpleReplyOf(c)).toEqual([0, 12n]);
    expect((await c.read(16)).includes(0xcd)).toBe(false);
    c.destroy();
  });

  it('unknown commands and past-the-end requests on a raw socket get EINVAL', async () => {
    const c = new RawClient(h.sock);
    await rawNegotiate(c, 'disk');
    c.write(Buffer.concat([
      request(99, 0, 0, 1n),
      request(Cmd.READ, 64 * MB, 1, 2n),
      request(Cmd.BLOCK_STATUS, 0, 4096, 3n), // no context negotiated
      request(Cmd.WRITE, 64 * MB - 1, 2, 4n), Buffer.from('zz'),
      request(Cmd.READ, 0, 0, 5n),
    ]));
    const replies = new Map<bigint, number>();
    for (let i = 0; i < 5; i++) {
      const [err, cookie] = await simpleReplyOf(c);
      replies.set(cookie, err);
    }
    expect(Object.fromEntries([...replies].map(([k, v]) => [String(k), v]))).toEqual({ 1: 22, 2: 22, 3: 22, 4: 22, 5: 0 });
    c.destroy();
  });

  it('NBD_CMD_DISC: requests in flight are answered, then the connection closes', async () => {
    const st = h.mem.states.get('n0')!;
    st.allocated[0] = 1;
    st.readDelay = (o) => (o === 0 ? 300 : 0);
    try {
      const c = new RawClient(h.sock);
      await rawNegotiate(c, 'disk');
      c.write(Buffer.concat([request(Cmd.READ, 0, 4096, 21n), request(Cmd.DISC, 0, 0, 22n)]));
      expect(await simpleReplyOf(c)).toEqual([0, 21n]);
      await c.read(4096);
      expect(await c.waitClosed()).toBe(true);
    } finally {
      st.readDelay = undefined;
    }
  });

  it('a request sent after NBD_CMD_DISC (in the same packet) is not executed', async () => {
    for (const name of ['disk', 'null']) {
      const node = h.graph.find(name === 'disk' ? 'n0' : 'z0');
      const before = node.stats.wrOps;
      const c = new RawClient(h.sock);
      await rawNegotiate(c, name);
      c.write(Buffer.concat([request(Cmd.DISC, 0, 0, 31n), request(Cmd.WRITE, 0, 512, 32n), Buffer.alloc(512, 0xee)]));
      expect(await c.waitClosed()).toBe(true);
      expect(c.pending()).toBe(0);
      expect(node.stats.wrOps).toBe(before);
    }
  });

  it('a client that never finishes negotiating is cut off after handshake-max-seconds', async () => {
    const silent = new RawClient(h.sock);
    const partial = new RawClient(h.sock);
    await silent.read(18);
    await partial.read(18);
    partial.write(Buffer.from([0, 0, 0, 3, 0x49, 0x48])); // flags, then half an option header
    const t0 = Date.now();
    expect(await silent.waitClosed(4000)).toBe(true);
    expect(await partial.waitClosed(4000)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(3000);
    // Negotiated clients are not subject to the limit.
    const c = new RawClient(h.sock);
    await rawNegotiate(c, 'disk');
    await sleep(1500);
    c.write(request(Cmd.FLUSH, 0, 0, 1n));
    expect(await simpleReplyOf(c)).toEqual([0, 1n]);
    c.destroy();
  });

  it('a slow reader is not read from while its replies pile up: memory stays bounded', async () => {
    const node = h.graph.find('n0');
    const c = new RawClient(h.sock);
    await rawNegotiate(c, 'disk');
    c.socket.pause();
    const before = node.stats.rdOps;
    const N = 400;
    const reqs = Buffer.concat(Array.from({ length: N }, (_, i) => request(Cmd.READ, (i % 32) * MB, MB, BigInt(i))));
    c.write(reqs);
    await sleep(1000);
    const done = node.stats.rdOps - before;
    // Bounded by the in-flight limits (64 requests / 64 MiB) plus what the socket buffers hold.
    expect(done).toBeLessThan(150);
    const mem = process.memoryUsage().arrayBuffers;
    expect(mem).toBeLessThan(1024 * MB);
    c.socket.resume();
    let got = 0;
    for (let i = 0; i < N; i++) {
      const [err] = await simpleReplyOf(c, 20_000);
      expect(err).toBe(0);
      await c.read(MB, 20_000);
      got++;
    }
    expect(got).toBe(N);
    c.destroy();
  }, 60_000);

  it('a burst of requests the node finishes at once (null-co): replies in order, reading stops while they pile up', async () => {
    const node = h.graph.find('z0');
    const c = new RawClient(h.sock);
    await rawNegotiate(c, 'null');
    c.socket.pause();
    const before = { rd: node.stats.rdOps, wr: node.stats.wrOps };
    const N = 4000;
    const K = 4096;
    const parts: Buffer[] = [];
    for (let i = 0; i < N; i++) {
      if (i % 2) parts.push(request(Cmd.WRITE, (i % 64) * K, K, BigInt(i)), Buffer.alloc(K, i));
      else parts.push(request(Cmd.READ, (i % 64) * K, K, BigInt(i)));
    }
    c.write(Buffer.concat(parts));
    await sleep(500);
    // 2000 read replies are 8 MiB: more than the 4 MiB of queued replies after which reading stops.
    const done = node.stats.rdOps - before.rd + node.stats.wrOps - before.wr;
    expect(done).toBeGreaterThan(0);
    expect(done).toBeLessThan(N);
    c.socket.resume();
    for (let i = 0; i < N; i++) {
      const [err, cookie] = await simpleReplyOf(c, 20_000);
      expect([err, cookie]).toEqual([0, BigInt(i)]);
      if (i % 2 === 0) expect((await c.read(K, 20_000)).every((b) => b === 0)).toBe(true);
    }
    expect(node.stats.rdOps - before.rd).toBe(N / 2);
    expect(node.stats.wrOps - before.wr).toBe(N / 2);
    c.destroy();
    await healthy(h, 'null');
  }, 60_000);

  it('a client sending options without reading the replies is not read from (no amplification)', async () => {
    // 40 exports with 4 KiB descriptions: each 16-byte NBD_OPT_LIST asks for ~165 KiB of replies.
    for (let i = 0; i < 40; i++) h.registry.add(h.graph, { id: `many${i}`, nodeName: 'n0', name: `export-number-${i}`, description: 'x'.repeat(4096) });
    try {
      const c = new RawClient(h.sock);
      await c.read(18);
      c.socket.pause();
      const list = Buffer.alloc(16);
      list.writeBigUInt64BE(0x49484156454f5054n, 0);
      list.writeUInt32BE(3, 8); // NBD_OPT_LIST
      const before = process.memoryUsage().arrayBuffers;
      c.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), ...Array.from({ length: 200_000 }, () => list)]));
      await sleep(500);
      // Had the server read everything it would owe ~3 GiB of replies; it stopped reading instead.
      expect(c.socket.writableLength).toBeGreaterThan(0);
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * MB);
      c.destroy();
      await healthy(h);
    } finally {
      for (let i = 0; i < 40; i++) await h.registry.remove(`many${i}`, 'hard');
    }
  });

  it('200 simultaneous raw connections, each negotiating and reading', async () => {
    const clients = Array.from({ length: 200 }, () => new RawClient(h.sock));
    await Promise.all(clients.map((c) => rawNegotiate(c, 'disk')));
    expect(h.server.connections).toBeGreaterThanOrEqual(200);
    await Promise.all(clients.map(async (c, i) => {
      c.write(request(Cmd.READ, i * 4096, 4096, BigInt(i)));
      expect(await simpleReplyOf(c, 20_000)).toEqual([0, BigInt(i)]);
      await c.read(4096, 20_000);
    }));
    for (const c of clients) c.destroy();
    await until(() => h.server.connections === 0, 10_000);
    await healthy(h);
  }, 60_000);

  it('200 simultaneous libnbd connections over TCP', async () => {
    const out = await nbdsh(h.tcpUri('disk'), `
hs = []
for i in range(200):
    x = nbd.NBD(); x.connect_uri(uri); hs.append(x)
for i, x in enumerate(hs):
    x.pwrite(bytes([i % 256]) * 512, i * 512)
ok = all(x.pread(512, i * 512) == bytes([i % 256]) * 512 for i, x in enumerate(hs))
for x in hs: x.shutdown()
print(ok)
`, 120_000);
    expect(out.trim()).toBe('True');
    await until(() => h.server.connections === 0, 10_000);
  }, 120_000);
});

describe('max-connections', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness([{ driver: 'mem', 'node-name': 'n0', size: MB }], [{ id: 'e0', nodeName: 'n0', name: 'disk', writable: true }], { maxConnections: 2 });
  });
  afterAll(async () => h?.close());

  it('the client over the limit waits, ungreeted, until a slot frees (as qsd)', async () => {
    const a = new RawClient(h.sock);
    const b = new RawClient(h.sock);
    await a.read(18);
    await b.read(18);
    const c = new RawClient(h.sock);
    await expect(c.read(18, 500)).rejects.toThrow(/timed out/);
    a.destroy();
    const g = await c.read(18, 3000);
    expect(g.subarray(0, 8).toString()).toBe('NBDMAGIC');
    b.destroy();
    c.destroy();
  });

  it('multi-conn is advertised unless max-connections is 1', async () => {
    const info = JSON.parse(await runTool('nbdinfo', ['--json', h.unixUri('disk')]));
    expect(info.exports[0].can_multi_conn).toBe(true);
    const one = await startHarness([{ driver: 'mem', 'node-name': 'n0', size: MB }], [{ id: 'e0', nodeName: 'n0', writable: true }], { maxConnections: 1 });
    try {
      const i1 = JSON.parse(await runTool('nbdinfo', ['--json', one.unixUri('n0')]));
      expect(i1.exports[0].can_multi_conn).toBe(false);
    } finally {
      await one.close();
    }
  });
});

describe('shutting down', () => {
  it('export close: safe is refused while clients are connected, hard disconnects them', async () => {
    const h = await startHarness([{ driver: 'mem', 'node-name': 'n0', size: MB }], [{ id: 'e0', nodeName: 'n0', name: 'disk', writable: true }]);
    try {
      const c = new RawClient(h.sock);
      await rawNegotiate(c, 'disk');
      await until(() => h.registry.get('e0')!.connections() === 1);
      await expect(h.registry.remove('e0', 'safe')).rejects.toThrow("export 'e0' still in use");
      const deleted: string[] = [];
      h.registry.on('deleted', (id) => deleted.push(id));
      const node = h.graph.find('n0');
      expect(node.parents.length).toBe(1);
      await h.registry.remove('e0', 'hard');
      expect(await c.waitClosed()).toBe(true);
      expect(deleted).toEqual(['e0']);
      expect(node.parents.length).toBe(0);
      expect(h.registry.list()).toEqual([]);
      await expect(h.registry.remove('e0')).rejects.toThrow("Export 'e0' is not found");
    } finally {
      await h.close();
    }
  });

  it('server close: requests in flight finish and are answered, then connections close and new ones are refused', async () => {
    const h = await startHarness([{ driver: 'mem', 'node-name': 'n0', size: MB }], [{ id: 'e0', nodeName: 'n0', name: 'disk', writable: true }]);
    const st = h.mem.states.get('n0')!;
    st.allocated[0] = 1;
    st.readDelay = () => 300;
    const c = new RawClient(h.sock);
    await rawNegotiate(c, 'disk');
    c.write(request(Cmd.READ, 0, 4096, 1n));
    await sleep(50);
    const closing = h.server.close();
    expect(await simpleReplyOf(c)).toEqual([0, 1n]);
    await c.read(4096);
    expect(await c.waitClosed()).toBe(true);
    await closing;
    await expect(runTool('nbdinfo', ['--json', h.unixUri('disk')])).rejects.toThrow();
    await h.server.destroy();
  });
});
