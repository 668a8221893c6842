/**
 * The transport upgrade hook (what STARTTLS will use): an option outcome asks
 * the connection to swap its transport; after the swap the negotiated state
 * (structured replies, meta contexts) is forgotten and plaintext sent behind
 * the request is dropped. Driven with a fake upgrade over in-memory transports.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { pino } from 'pino';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { ExportRegistry } from '../helpers/exports.ts';
import { Handshake, HANDSHAKE_STATES } from '../../src/nbd/handshake.ts';
import { NbdConnection } from '../../src/nbd/connection.ts';
import { OPTION_HANDLERS, type NegotiationEnv, type OptionHandler } from '../../src/nbd/options.ts';
import type { Transport, TransportEvents } from '../../src/nbd/transport/transport.ts';
import { BufferPool } from '../../src/util/buffer-pool.ts';
import { ByteQueue } from '../../src/nbd-protocol/byte-queue.ts';
import {
  CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, Cmd, Info, NbdErrno, Opt, Rep, SIMPLE_REPLY_MAGIC, TxFlag,
} from '../../src/nbd-protocol/constants.ts';
import { buildClientFlags } from '../../src/nbd-protocol/handshake.ts';
import { buildInfoRequestData, buildMetaContextRequestData, buildOptionRequest } from '../../src/nbd-protocol/option-requests.ts';
import { buildOptionReply, decodeOptionReply, parseInfoPayload, type OptionReply } from '../../src/nbd-protocol/option-replies.ts';
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

/** STARTTLS as a server with TLS answers it: ACK, then the upgrade. */
const starttlsUpgrade: OptionHandler = (_env, _s, option) => ({ replies: [buildOptionReply(option, Rep.ACK)], next: 'upgrade' });
const handlers = { ...OPTION_HANDLERS, [Opt.STARTTLS]: starttlsUpgrade };

const negotiateBefore = Buffer.concat([
  buildClientFlags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES),
  buildOptionRequest(Opt.STRUCTURED_REPLY),
  buildOptionRequest(Opt.SET_META_CONTEXT, buildMetaContextRequestData({ exportName: 'e0', queries: ['base:allocation'] })),
]);
const go = buildOptionRequest(Opt.GO, buildInfoRequestData({ name: 'e0', requests: [] }));
const starttls = buildOptionRequest(Opt.STARTTLS);

function replies(bufs: Buffer[]): OptionReply[] {
  const q = new ByteQueue();
  for (const b of bufs) q.push(b);
  const out: OptionReply[] = [];
  for (let r = decodeOptionReply(q); r; r = decodeOptionReply(q)) out.push(r);
  expect(q.length).toBe(0);
  return out;
}
const exportFlags = (rs: OptionReply[]) => {
  const item = rs.filter((r) => r.type === Rep.INFO).map((r) => parseInfoPayload(r.payload)).find((i) => i.type === Info.EXPORT);
  return (item as { transmissionFlags: number }).transmissionFlags;
};

describe('handshake: upgrade outcome', () => {
  it('has its state in the table, reachable from every option state, going back to options', () => {
    expect(HANDSHAKE_STATES.upgrading.next).toEqual(['option-header', 'closed']);
    for (const s of ['option-header', 'option-data', 'option-skip'] as const) expect(HANDSHAKE_STATES[s].next).toContain('upgrading');
  });

  it('waits in upgrading with the plaintext behind the request dropped; upgraded() forgets structured replies and contexts', () => {
    const hs = new Handshake(env, handlers);
    const sent: Buffer[] = [];
    hs.feed(Buffer.concat([negotiateBefore, starttls, go]));
    let step = hs.next();
    for (; step && !step.upgrade; step = hs.next()) sent.push(...step.send);
    expect(step?.upgrade).toBe(true);
    sent.push(...step!.send);
    expect(replies(sent).map((r) => [r.option, r.type])).toEqual([
      [Opt.STRUCTURED_REPLY, Rep.ACK], [Opt.SET_META_CONTEXT, Rep.META_CONTEXT], [Opt.SET_META_CONTEXT, Rep.ACK], [Opt.STARTTLS, Rep.ACK],
    ]);
    expect(hs.state).toBe('upgrading');
    expect(hs.session.structured).toBe(true);
    expect(hs.next()).toBeUndefined();
    expect(() => hs.feed(go)).toThrow("handshake: input in state 'upgrading'");

    hs.upgraded();
    expect(hs.state).toBe('option-header');
    expect(hs.session).toMatchObject({ structured: false, meta: undefined, fixedNewstyle: true });
    expect(hs.next()).toBeUndefined(); // the GO sent in plaintext behind STARTTLS was not kept
    const out = hs.push(go);
    expect(out.done?.kind).toBe('transmission');
    const n = (out.done as { negotiated: { structured: boolean; contexts: unknown[]; transmissionFlags: number } }).negotiated;
    expect(n.structured).toBe(false);
    expect(n.contexts).toEqual([]);
    expect(n.transmissionFlags & TxFlag.SEND_DF).toBe(0);
    expect(() => hs.upgraded()).toThrow("handshake: upgraded() in state 'transmission'");
  });

  it('upgraded() forgets extended headers too (the spec: they must be renegotiated after STARTTLS)', () => {
    const hs = new Handshake(env, handlers);
    const out = hs.push(Buffer.concat([buildClientFlags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES), buildOptionRequest(Opt.EXTENDED_HEADERS), starttls]));
    expect(out.upgrade).toBe(true);
    expect(hs.session).toMatchObject({ extended: true, structured: true });
    hs.upgraded();
    expect(hs.session).toMatchObject({ extended: false, structured: false });
    const done = hs.push(go).done as { negotiated: { extended: boolean; structured: boolean } };
    expect(done.negotiated).toMatchObject({ extended: false, structured: false });
  });

  it('without the upgrade handler STARTTLS is refused as before (qsd without tls-creds)', () => {
    const out = new Handshake(env).push(Buffer.concat([negotiateBefore, starttls]));
    expect(out.upgrade).toBeUndefined();
    const last = replies(out.send).pop()!;
    expect([last.option, last.type, last.payload.toString()]).toEqual([Opt.STARTTLS, Rep.ERR_POLICY, 'TLS not configured']);
  });
});

/** An in-memory transport: what the connection writes is recorded; deliver() plays the client. */
class FakeTransport implements Transport {
  readonly transientReads = false;
  readonly fastPath = false;
  readonly peer = 'fake';
  readonly written: Buffer[] = [];
  events?: TransportEvents;
  paused = true;
  detached = false;
  destroyed = false;
  ended = false;
  /** Bytes pretended to be still queued. */
  queued = 0;
  constructor(readonly name: string) {}
  get writableLength(): number { return this.queued; }
  get writable(): boolean { return !this.destroyed && !this.ended; }
  attach(events: TransportEvents): void { this.events = events; }
  detach(): void { this.events = undefined; this.paused = true; this.detached = true; }
  pause(): void { this.paused = true; }
  resume(): void { this.paused = false; }
  write(buf: Buffer, done?: () => void): void { this.written.push(Buffer.from(buf)); done?.(); }
  cork(): void {}
  uncork(): void {}
  trySend(): number { return 0; }
  end(): void { this.ended = true; queueMicrotask(() => this.destroy()); }
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.events?.close();
  }
  deliver(b: Buffer): void {
    expect(this.paused, `${this.name} read while paused`).toBe(false);
    this.events!.data(b);
  }
}

const tick = () => new Promise((r) => setImmediate(r));

function connection(plain: FakeTransport, upgrade?: (t: Transport) => Promise<Transport>) {
  return new NbdConnection(plain, {
    env, log: pino({ level: 'silent' }), handshakeMaxSeconds: 0, pool: new BufferPool(), optionHandlers: handlers, upgrade,
  });
}

describe('connection: transport swap', () => {
  it('acknowledges over the old transport, continues over the new one with the negotiated state reset', async () => {
    const plain = new FakeTransport('plain');
    const tls = new FakeTransport('tls');
    const from: Transport[] = [];
    const conn = connection(plain, async (t) => { from.push(t); await tick(); return tls; });
    conn.start();
    plain.queued = 7; // the ACK is still queued when STARTTLS is handled: the swap waits for drain
    plain.deliver(Buffer.concat([negotiateBefore, starttls, go]));
    expect(replies(plain.written.slice(1)).map((r) => [r.option, r.type]).pop()).toEqual([Opt.STARTTLS, Rep.ACK]);
    expect(plain.paused).toBe(true);
    expect(from).toEqual([]);
    plain.queued = 0;
    plain.events!.drain();
    expect(plain.detached).toBe(true);
    expect(from).toEqual([plain]);
    await tick();
    await tick();
    expect(tls.events).toBeDefined();
    expect(tls.paused).toBe(false);
    expect(tls.written).toEqual([]); // the plaintext GO got no answer

    tls.deliver(go);
    const rs = replies(tls.written);
    expect(rs.map((r) => r.type)).toEqual([Rep.INFO, Rep.INFO, Rep.ACK]);
    expect(exportFlags(rs) & TxFlag.SEND_DF).toBe(0);
    expect(conn.state).toBe('transmission');
    // No structured replies and no contexts any more: BLOCK_STATUS gets a simple EINVAL reply.
    tls.written.length = 0;
    tls.deliver(buildRequest({ ...cookieFrom(9n), flags: 0, type: Cmd.BLOCK_STATUS, offset: 0, length: 4096 }));
    expect(tls.written).toHaveLength(1);
    expect(tls.written[0].readUInt32BE(0)).toBe(SIMPLE_REPLY_MAGIC);
    expect(tls.written[0].readUInt32BE(4)).toBe(NbdErrno.EINVAL);
    tls.deliver(buildRequest({ ...cookieFrom(10n), flags: 0, type: Cmd.DISC, offset: 0, length: 0 }));
    await conn.finished;
    expect(plain.destroyed).toBe(false); // handed on, not closed: the new transport owns the stream
    expect(tls.destroyed).toBe(true);
  });

  it('without the swap the same client keeps structured replies (the control)', () => {
    const plain = new FakeTransport('plain');
    connection(plain).start();
    plain.deliver(Buffer.concat([negotiateBefore, go]));
    expect(exportFlags(replies(plain.written.slice(1))) & TxFlag.SEND_DF).toBe(TxFlag.SEND_DF);
  });

  it('a failed upgrade, or none offered, disconnects', async () => {
    const plain = new FakeTransport('plain');
    const conn = connection(plain, async () => { throw new Error('handshake failed'); });
    conn.start();
    plain.deliver(Buffer.concat([negotiateBefore, starttls]));
    await conn.finished;
    expect(plain.destroyed).toBe(true);

    const other = new FakeTransport('other');
    const none = connection(other);
    none.start();
    other.deliver(Buffer.concat([negotiateBefore, starttls]));
    await none.finished;
    expect(other.destroyed).toBe(true);
  });

  it('destroyed mid-swap: finishes, and the transport the upgrade then yields is closed', async () => {
    const plain = new FakeTransport('plain');
    const tls = new FakeTransport('tls');
    let release!: () => void;
    const conn = connection(plain, () => new Promise<Transport>((r) => (release = () => r(tls))));
    conn.start();
    plain.deliver(Buffer.concat([negotiateBefore, starttls]));
    await conn.destroy();
    release();
    await tick();
    expect(tls.destroyed).toBe(true);
    expect(tls.events).toBeUndefined();
  });
});
