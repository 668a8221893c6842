/**
 * FORCEDTLS negotiation (src/nbd/tls-options.ts) on the pure handshake, and
 * replies over a transport without a fast path (TLS): each reply's header
 * and payload are written inside one cork, so node:tls encrypts them as one
 * write instead of a record per piece.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { pino } from 'pino';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { ExportRegistry } from '../helpers/exports.ts';
import { Handshake } from '../../src/nbd/handshake.ts';
import { NbdConnection } from '../../src/nbd/connection.ts';
import { tlsOptionHandlers } from '../../src/nbd/tls-options.ts';
import { TlsTransport } from '../../src/nbd/transport/tls.ts';
import type { NegotiationEnv } from '../../src/nbd/options.ts';
import type { Transport, TransportEvents } from '../../src/nbd/transport/transport.ts';
import { BufferPool } from '../../src/util/buffer-pool.ts';
import { ByteQueue } from '../../src/nbd-protocol/byte-queue.ts';
import { CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, Cmd, Opt, Rep } from '../../src/nbd-protocol/constants.ts';
import { buildClientFlags } from '../../src/nbd-protocol/handshake.ts';
import { buildInfoRequestData, buildOptionRequest } from '../../src/nbd-protocol/option-requests.ts';
import { decodeOptionReply, type OptionReply } from '../../src/nbd-protocol/option-replies.ts';
import { buildRequest, cookieFrom } from '../../src/nbd-protocol/requests.ts';
import { memDriver } from '../helpers/nbd.ts';

let env: NegotiationEnv;
beforeAll(async () => {
  const graph = new BlockGraph();
  graph.register(memDriver());
  await graph.add({ driver: 'mem', 'node-name': 'disk', size: 1 << 20 });
  const registry = new ExportRegistry();
  registry.add(graph, { id: 'e0', nodeName: 'disk', name: 'e0', writable: true });
  env = { findExport: (n) => registry.byName(n), listExports: () => registry.list(), multiConn: true };
});

const flags = buildClientFlags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
const go = buildOptionRequest(Opt.GO, buildInfoRequestData({ name: 'e0', requests: [] }));

function replies(bufs: Buffer[]): OptionReply[] {
  const q = new ByteQueue();
  for (const b of bufs) q.push(b);
  const out: OptionReply[] = [];
  for (let r = decodeOptionReply(q); r; r = decodeOptionReply(q)) out.push(r);
  return out;
}

describe('FORCEDTLS (doc/proto.md)', () => {
  it('before STARTTLS: TLS_REQD for every option (unknown ones too), ABORT acknowledged, EXPORT_NAME ends the session', () => {
    const active = false;
    const hs = new Handshake(env, tlsOptionHandlers(() => active));
    const out = hs.push(Buffer.concat([flags, buildOptionRequest(Opt.LIST), go, buildOptionRequest(Opt.STRUCTURED_REPLY), buildOptionRequest(99)]));
    expect(replies(out.send).map((r) => [r.option, r.type, r.payload.toString()])).toEqual([
      [Opt.LIST, Rep.ERR_TLS_REQD, 'Option 0x3 not permitted before TLS'],
      [Opt.GO, Rep.ERR_TLS_REQD, 'Option 0x7 not permitted before TLS'],
      [Opt.STRUCTURED_REPLY, Rep.ERR_TLS_REQD, 'Option 0x8 not permitted before TLS'],
      [99, Rep.ERR_TLS_REQD, 'Option 0x63 not permitted before TLS'],
    ]);
    expect(hs.session.structured).toBe(false);
    const abort = new Handshake(env, tlsOptionHandlers(() => active)).push(Buffer.concat([flags, buildOptionRequest(Opt.ABORT)]));
    expect(replies(abort.send).map((r) => r.type)).toEqual([Rep.ACK]);
    expect(abort.done).toMatchObject({ kind: 'close', clean: true });
    const name = new Handshake(env, tlsOptionHandlers(() => active)).push(Buffer.concat([flags, buildOptionRequest(Opt.EXPORT_NAME, Buffer.from('e0'))]));
    expect(name.send).toEqual([]);
    expect(name.done).toMatchObject({ kind: 'close', reason: 'Option 0x1 not permitted before TLS' });
  });

  it('STARTTLS asks for the upgrade; afterwards options are served and a second STARTTLS is refused', () => {
    let active = false;
    const hs = new Handshake(env, tlsOptionHandlers(() => active));
    const out = hs.push(Buffer.concat([flags, buildOptionRequest(Opt.STARTTLS), go]));
    expect(out.upgrade).toBe(true);
    expect(replies(out.send).map((r) => [r.option, r.type])).toEqual([[Opt.STARTTLS, Rep.ACK]]);
    active = true;
    hs.upgraded();
    const after = hs.push(Buffer.concat([buildOptionRequest(Opt.STARTTLS), buildOptionRequest(Opt.STARTTLS, Buffer.from('x')), buildOptionRequest(99), go]));
    const rs = replies(after.send);
    expect(rs.slice(0, 3).map((r) => [r.option, r.type, r.payload.toString()])).toEqual([
      [Opt.STARTTLS, Rep.ERR_INVALID, 'TLS already enabled'],
      [Opt.STARTTLS, Rep.ERR_INVALID, "option 'starttls' has unexpected length"],
      [99, Rep.ERR_UNSUP, 'Unsupported option 99 (<unknown>)'],
    ]);
    expect(rs.at(-1)!.type).toBe(Rep.ACK);
    expect(after.done?.kind).toBe('transmission');
  });

  it('STARTTLS with data before TLS is refused and ends the session', () => {
    const hs = new Handshake(env, tlsOptionHandlers(() => false));
    const out = hs.push(Buffer.concat([flags, buildOptionRequest(Opt.STARTTLS, Buffer.from('xy'))]));
    expect(replies(out.send).map((r) => [r.type, r.payload.toString()])).toEqual([[Rep.ERR_INVALID, "option 'starttls' has unexpected length"]]);
    expect(out.done?.kind).toBe('close');
  });
});

/** Records the order of cork, write and uncork calls; no fast path, like TLS. */
class Recorder implements Transport {
  readonly transientReads = false;
  readonly fastPath = false;
  readonly peer = 'rec';
  readonly log: string[] = [];
  events?: TransportEvents;
  private corks = 0;
  get writableLength(): number { return 0; }
  get writable(): boolean { return true; }
  private dead = false;
  get destroyed(): boolean { return this.dead; }
  attach(e: TransportEvents): void { this.events = e; }
  detach(): void { this.events = undefined; }
  pause(): void {}
  resume(): void {}
  write(buf: Buffer, done?: () => void): void { this.log.push(`${this.corks > 0 ? 'corked' : 'UNCORKED'} write ${buf.length}`); done?.(); }
  cork(): void { this.corks++; this.log.push('cork'); }
  uncork(): void { this.corks--; this.log.push('uncork'); }
  trySend(): number { return 0; }
  end(): void {}
  destroy(): void { if (this.dead) return; this.dead = true; this.events?.close(); }
}

describe('replies over a transport without a fast path (TLS)', () => {
  it('a 64 KiB read reply: header and payload inside one cork', async () => {
    const t = new Recorder();
    const conn = new NbdConnection(t, { env, log: pino({ level: 'silent' }), handshakeMaxSeconds: 0, pool: new BufferPool() });
    conn.start();
    t.events!.data(Buffer.concat([flags, go]));
    await new Promise((r) => setImmediate(r));
    t.log.length = 0;
    t.events!.data(buildRequest({ ...cookieFrom(1n), flags: 0, type: Cmd.READ, offset: 0, length: 65536 }));
    for (let i = 0; i < 20 && !t.log.includes('uncork'); i++) await new Promise((r) => setImmediate(r));
    const writes = t.log.filter((l) => l.includes('write'));
    expect(writes.length).toBeGreaterThan(0);
    expect(writes.every((l) => l.startsWith('corked'))).toBe(true);
    expect(writes.reduce((n, l) => n + Number(l.split(' ')[2]), 0)).toBe(16 + 65536);
    expect(t.log[0]).toBe('cork');
    expect(t.log.at(-1)).toBe('uncork');
    await conn.destroy();
  });

  it('the TLS transport has no fast path', () => {
    expect(TlsTransport.prototype.trySend.call({} as TlsTransport)).toBe(0);
    const fake = { pause() {}, on() {}, off() {} } as unknown as ConstructorParameters<typeof TlsTransport>[0];
    expect(new TlsTransport(fake, 'p').fastPath).toBe(false);
  });
});
