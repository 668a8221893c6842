/**
 * The NBD client of one node: a connection in the transmission phase, the
 * requests in flight on it (many at once, matched to replies by cookie), and
 * QEMU's reconnect behaviour (block/nbd.c):
 *
 *   connected ──lost──► connecting-wait (reconnect-delay > 0): requests wait, in order
 *       ▲                    │ delay over: waiting requests fail with EIO
 *       │                    ▼
 *       └──reconnected── connecting-nowait: new requests fail with EIO at once
 *
 * Reconnection runs in the background after a loss (QEMU's connection
 * thread: at once, then after 1, 2, 4, 8, 16, 16... s). Requests that were
 * in flight when the connection went are sent again after the reconnect in
 * their submission order, so writes are neither lost nor reordered. A reply
 * that breaks the protocol ends the client (QEMU's NBD_CLIENT_QUIT): no
 * reconnect, every request fails.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { BlockError } from '../../../util/errors.ts';
import { buildRequest, Cmd, CmdFlag, ReplyDecoder, type DecodedReply } from './protocol.ts';
import { connectSocket } from './connect.ts';
import { TlsSessionError, startClientSession } from '../../../objects/tls/session.ts';
import { negotiate, type NegotiatedExport } from './negotiate.ts';
import { applyReply, type NbdRequest } from './requests.ts';
import type { NbdConfig } from './options.ts';
import type { Extent } from '../../request.ts';

/** Most requests on the wire at once (more wait in the client, in order). */
const MAX_IN_FLIGHT = 32;
const MAX_RETRY_S = 16;

type State = 'connected' | 'connecting-wait' | 'connecting-nowait' | 'quit';

export type NbdSubmit = Pick<NbdRequest, 'type' | 'flags' | 'offset' | 'length' | 'data' | 'buf' | 'contextId'>;

function eio(what = 'Input/output error'): BlockError {
  return new BlockError('EIO', what);
}

/** Connects and negotiates once. */
async function establish(cfg: NbdConfig): Promise<{ sock: Socket; info: NegotiatedExport }> {
  const sock = await connectSocket(cfg.server);
  const tls = cfg.tls;
  const upgrade = tls ? (plain: Socket) => startClientSession(tls.creds, plain, tls.hostname) : undefined;
  try {
    const info = await negotiate(sock, { exportName: cfg.export, context: cfg.xDirtyBitmap ?? 'base:allocation', upgrade });
    return { sock: info.socket, info };
  } catch (e) {
    sock.destroy();
    if (e instanceof TlsSessionError) throw new BlockError('EIO', e.message);
    throw e;
  }
}

export class NbdClient {
  private state: State = 'connected';
  private sock!: Socket;
  private decoder!: ReplyDecoder;
  /** The current connection negotiated extended headers (a reconnect may land on a server that did not). */
  private extended = false;
  private readonly inflight = new Map<number, NbdRequest>();
  /** Accepted, not on the wire: over MAX_IN_FLIGHT, or waiting for a reconnect. Kept in `seq` order. */
  private waiting: NbdRequest[] = [];
  private seq = 0;
  private cookie = 0;
  private delayTimer?: NodeJS.Timeout;
  private retryTimer?: NodeJS.Timeout;
  private reconnecting = false;
  /** Counts of what happened, for tests and logs. */
  readonly stats = { reconnects: 0, resent: 0 };

  private constructor(private readonly cfg: NbdConfig, readonly info: NegotiatedExport, sock: Socket, private readonly log: Logger) {
    this.attach(sock, info);
  }

  /** The first connection; with open-timeout, retried (1, 2, 4... s apart) until that many seconds have passed. */
  static async open(cfg: NbdConfig, log: Logger): Promise<NbdClient> {
    const deadline = Date.now() + cfg.openTimeoutMs;
    for (let wait = 1;; wait = Math.min(wait * 2, MAX_RETRY_S)) {
      try {
        const { sock, info } = await establish(cfg);
        return new NbdClient(cfg, info, sock, log);
      } catch (e) {
        const left = deadline - Date.now();
        if (left <= 0) throw e;
        log.debug({ err: (e as Error).message }, 'nbd: first connection failed; retrying');
        await new Promise((r) => setTimeout(r, Math.min(wait * 1000, left)));
        if (Date.now() >= deadline) throw e;
      }
    }
  }

  get connected(): boolean { return this.state === 'connected'; }

  /** Requests accepted and not yet answered (multi-conn sends new ones to the least loaded connection). */
  get load(): number { return this.inflight.size + this.waiting.length; }

  /** Sends a request (now, or once the connection allows) and settles when its last reply has arrived. */
  submit(s: NbdSubmit): Promise<void> {
    return this.enqueue(s).then(() => undefined);
  }

  /** A BLOCK_STATUS request: the extents of `contextId` the server sent (undefined: none). */
  status(s: NbdSubmit): Promise<Extent[] | undefined> {
    return this.enqueue(s);
  }

  private enqueue(s: NbdSubmit): Promise<Extent[] | undefined> {
    if (this.state === 'quit' || this.state === 'connecting-nowait') return Promise.reject(eio());
    return new Promise<Extent[] | undefined>((resolve, reject) => {
      const r: NbdRequest = { ...s, seq: this.seq++, resolve, reject };
      if (this.state === 'connected' && this.inflight.size < MAX_IN_FLIGHT && this.waiting.length === 0) this.send(r);
      else this.waiting.push(r);
    });
  }

  private attach(sock: Socket, info: NegotiatedExport): void {
    this.sock = sock;
    this.extended = info.extended;
    this.decoder = new ReplyDecoder({
      readLength: (c) => { const r = this.inflight.get(c.cookieLo); return r?.type === Cmd.READ ? r.length : 0; },
      extended: info.extended,
    });
    if (info.rest.length > 0) this.decoder.push(info.rest.take(info.rest.length));
    sock.on('data', (b: Buffer) => this.onData(sock, b));
    sock.on('error', (e) => this.log.debug({ err: e.message }, 'nbd: connection error'));
    sock.once('close', () => this.onClose(sock));
  }

  private send(r: NbdRequest): void {
    this.cookie = (this.cookie + 1) >>> 0;
    this.inflight.set(this.cookie, r);
    // Extended headers: a WRITE's length is its payload's, which NBD_CMD_FLAG_PAYLOAD_LEN says.
    const extended = this.extended;
    const flags = extended && r.data ? r.flags | CmdFlag.PAYLOAD_LEN : r.flags;
    const header = buildRequest({ cookieHi: 0, cookieLo: this.cookie, flags, type: r.type, offset: r.offset, length: r.length, extended });
    r.error = undefined;
    r.extents = undefined;
    if (r.data) {
      this.sock.cork();
      this.sock.write(header);
      this.sock.write(r.data);
      this.sock.uncork();
    } else this.sock.write(header);
  }

  private pump(): void {
    while (this.state === 'connected' && this.inflight.size < MAX_IN_FLIGHT && this.waiting.length > 0) this.send(this.waiting.shift()!);
  }

  private onData(sock: Socket, b: Buffer): void {
    if (sock !== this.sock || this.state !== 'connected') return;
    this.decoder.push(b);
    try {
      for (let reply = this.decoder.next(); reply; reply = this.decoder.next()) this.onReply(reply);
    } catch (e) {
      this.quit(e instanceof BlockError ? e : eio(String(e)));
      return;
    }
    this.pump();
  }

  private onReply(reply: DecodedReply): void {
    const r = reply.cookieHi === 0 ? this.inflight.get(reply.cookieLo) : undefined;
    if (!r) throw eio(`server sent a reply to an unknown cookie ${reply.cookieHi}:${reply.cookieLo}`);
    if (reply.kind === 'chunk' && reply.offset !== undefined && reply.offset !== r.offset) {
      throw eio(`server sent a reply for offset ${reply.offset} to a request at ${r.offset}`);
    }
    if (!applyReply(r, reply)) return;
    this.inflight.delete(reply.cookieLo);
    if (r.error) r.reject(r.error);
    else r.resolve(r.extents);
  }

  /** The server went away (or the network did). */
  private onClose(sock: Socket): void {
    if (sock !== this.sock || this.state !== 'connected') return;
    const lost = [...this.inflight.values()];
    this.inflight.clear();
    if (this.cfg.reconnectDelayMs > 0) {
      this.log.warn({ inflight: lost.length, delayMs: this.cfg.reconnectDelayMs }, 'nbd: connection lost; reconnecting');
      this.state = 'connecting-wait';
      this.waiting = [...lost, ...this.waiting].sort((a, b) => a.seq - b.seq);
      this.stats.resent += lost.length;
      this.delayTimer = setTimeout(() => this.delayOver(), this.cfg.reconnectDelayMs);
    } else {
      this.log.warn({ inflight: lost.length }, 'nbd: connection lost');
      this.state = 'connecting-nowait';
      this.failAll([...lost, ...this.waiting.splice(0)]);
    }
    void this.reconnect();
  }

  private delayOver(): void {
    this.delayTimer = undefined;
    if (this.state !== 'connecting-wait') return;
    this.log.warn('nbd: reconnect-delay is over; failing the waiting requests');
    this.state = 'connecting-nowait';
    this.failAll(this.waiting.splice(0));
  }

  private failAll(list: NbdRequest[], e = eio()): void {
    for (const r of list) r.reject(e);
  }

  private async reconnect(): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    try {
      for (let wait = 1; this.state === 'connecting-wait' || this.state === 'connecting-nowait'; wait = Math.min(wait * 2, MAX_RETRY_S)) {
        try {
          const { sock, info } = await establish(this.cfg);
          if ((this.state as State) === 'quit') { sock.destroy(); return; }
          if (info.size !== this.info.size) {
            sock.destroy();
            throw eio(`export size changed from ${this.info.size} to ${info.size}`);
          }
          if (info.extended !== this.info.extended) {
            // The node's limits (64-bit lengths or not) were set from the first connection's header style.
            sock.destroy();
            throw eio(`the server ${info.extended ? 'now' : 'no longer'} offers extended headers`);
          }
          clearTimeout(this.delayTimer);
          this.delayTimer = undefined;
          this.state = 'connected';
          this.stats.reconnects++;
          this.attach(sock, info);
          this.log.warn({ waiting: this.waiting.length, reconnects: this.stats.reconnects }, 'nbd: reconnected');
          this.pump();
          return;
        } catch (e) {
          this.log.debug({ err: (e as Error).message }, 'nbd: reconnect attempt failed');
        }
        await new Promise<void>((r) => { this.retryTimer = setTimeout(r, wait * 1000); });
        this.retryTimer = undefined;
      }
    } finally {
      this.reconnecting = false;
    }
  }

  /** Ends the client after a protocol error: everything fails, nothing reconnects. */
  private quit(e: BlockError): void {
    this.log.error({ err: e.message }, 'nbd: protocol error; closing the connection');
    this.state = 'quit';
    this.sock.destroy();
    this.failAll([...this.inflight.values(), ...this.waiting.splice(0)], eio());
    this.inflight.clear();
  }

  /** Disconnects politely (NBD_CMD_DISC) once nothing is in flight; idempotent. */
  async close(): Promise<void> {
    const was = this.state;
    this.state = 'quit';
    clearTimeout(this.delayTimer);
    clearTimeout(this.retryTimer);
    this.failAll(this.waiting.splice(0));
    if (was === 'connected' && !this.sock.destroyed) {
      if (this.inflight.size === 0) {
        this.sock.write(buildRequest({ cookieHi: 0, cookieLo: 0, flags: 0, type: Cmd.DISC, offset: 0, length: 0, extended: this.extended }));
      }
      this.sock.end();
      const sock = this.sock;
      await new Promise<void>((r) => {
        const t = setTimeout(() => { sock.destroy(); r(); }, 1000);
        sock.once('close', () => { clearTimeout(t); r(); });
      });
    } else this.sock.destroy();
    this.failAll([...this.inflight.values()]);
    this.inflight.clear();
  }
}
