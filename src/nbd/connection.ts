/**
 * One client connection: negotiation (with a time limit), then the
 * transmission phase, where many requests run at once and each reply goes
 * out, header corked with its data, as soon as its request completes.
 *
 * Backpressure: the socket is paused while the requests in flight exceed a
 * count or byte limit, or while more than WRITE_BUFFER_LIMIT bytes of
 * replies wait to be written, until 'drain'. What a connection
 * holds is therefore bounded: the in-flight limits, one payload being
 * assembled, one socket chunk.
 *
 * The connection talks only to its Transport (transport/): the plain
 * socket, or later a TLS one; it never touches a descriptor itself. An
 * option may ask for the transport to be swapped mid-negotiation (STARTTLS):
 * once its acknowledgement is written, the old transport is detached, the
 * `upgrade` function turns it into the new one, the connection attaches to
 * that, and the handshake forgets what was negotiated before.
 *
 * A connection in transmission can also move to another event loop (an
 * iothread serving its export, src/iothread): release() stops taking
 * requests at the next request boundary, waits for those in flight to reply
 * and their replies to be handed to the kernel, then gives up the socket
 * (a duplicate descriptor) with the bytes read but not yet framed. The
 * connection on the other side starts from there (resumed()); here it stays
 * as a stand-in ('remote': counted by its server and export, closed through
 * its RemoteEnd) until it ends there or comes back (returned()).
 */
import type { Logger } from 'pino';
import { Cmd, MAX_PAYLOAD, NbdErrno, cmdName } from '../nbd-protocol/constants.ts';
import { errorReply, execute, type CommandContext, type Reply } from './commands.ts';
import { RequestFramer, type Frame } from '../nbd-protocol/request-framer.ts';
import type { RequestHeader } from '../nbd-protocol/requests.ts';
import { Handshake, type HandshakeStep } from './handshake.ts';
import type { BufferPool } from '../util/buffer-pool.ts';
import type { ExportClient, NbdExport } from './exports.ts';
import type { Negotiated, NegotiationEnv, OptionHandler } from './options.ts';
import type { MovedConnection, RemoteEnd } from './moved-connection.ts';
import { negotiatedState } from './moved-connection.ts';
import type { Transport, TransportEvents } from './transport/transport.ts';
import { checkRequest, type ValidationContext } from './validate.ts';
import { EXPORT_OP, NODE_KIND } from './op-kinds.ts';
import { ExportOp } from '../export/io-stats.ts';

export interface ConnectionOptions {
  env: NegotiationEnv;
  log: Logger;
  /** Seconds a client may take to finish negotiation; 0 = no limit. */
  handshakeMaxSeconds: number;
  /** Stop reading requests while this many are in flight. */
  maxInflightRequests?: number;
  /** Stop reading requests while their buffers (read and write data) exceed this many bytes. */
  maxInflightBytes?: number;
  specErrnos?: boolean;
  /** Where large data buffers come from and go back to. */
  pool: BufferPool;
  /** The option handlers (default: OPTION_HANDLERS). One that answers `next: 'upgrade'` needs `upgrade`. */
  optionHandlers?: Readonly<Record<number, OptionHandler>>;
  /** Makes the upgraded transport from the current one (TLS: a TLS session over the same socket). */
  upgrade?: (current: Transport) => Promise<Transport>;
}

export const DEFAULT_MAX_INFLIGHT_REQUESTS = 64;
export const DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
/** Replies up to this size are copied into one buffer rather than written in pieces. */
const SMALL_REPLY = 16 * 1024;
/** Stop reading requests while more reply bytes than this wait for the socket (more than its high-water mark). */
const WRITE_BUFFER_LIMIT = 4 * 1024 * 1024;
/** How long a closing connection waits for the client to take its last replies. */
const END_GRACE_MS = 10_000;

/** 'moved': released, nothing left here; 'remote': a stand-in for the connection served in another event loop. */
type Phase = 'handshake' | 'transmission' | 'closing' | 'closed' | 'moved' | 'remote';

export class NbdConnection implements ExportClient {
  private phase: Phase = 'handshake';
  private readonly handshake: Handshake;
  private framer?: RequestFramer;
  private negotiated?: Negotiated;
  private cmdCtx?: CommandContext;
  private valCtx?: ValidationContext;
  private exp?: NbdExport;
  private timer?: NodeJS.Timeout;
  /** Cuts off a client that never takes our last replies (see endSocket). */
  private endTimer?: NodeJS.Timeout;
  /** A transport swap in progress: 'flushing' until the last old-transport bytes are out, then 'swapping'. */
  private upgradeState?: 'flushing' | 'swapping';
  private inflight = 0;
  private inflightBytes = 0;
  private writeBlocked = false;
  private corked = false;
  /** pump() is taking frames (requests completing synchronously must not re-enter it). */
  private pumping = false;
  private socketClosed = false;
  private done = false;
  /** A release() in progress: resolves with the moved state, or undefined if the connection ends first. */
  private releasing?: (m: MovedConnection | undefined) => void;
  private released?: Promise<MovedConnection | undefined>;
  private remote?: RemoteEnd;
  private readonly maxRequests: number;
  private readonly maxBytes: number;
  private finishedResolve!: () => void;
  /** Resolves once the socket is closed and no request of this connection is in flight. */
  readonly finished: Promise<void>;
  log: Logger;

  private readonly pool: BufferPool;

  private readonly events: TransportEvents = {
    data: (chunk) => this.onData(chunk),
    end: () => this.onEnd(),
    error: (err) => this.log.debug({ err }, 'NBD connection error'),
    close: () => this.onClose(),
    drain: () => {
      this.writeBlocked = false;
      if (this.upgradeState === 'flushing') return this.swapTransport();
      this.pump();
    },
  };

  constructor(private transport: Transport, private readonly opts: ConnectionOptions) {
    this.log = opts.log;
    this.pool = opts.pool;
    this.handshake = new Handshake(opts.env, opts.optionHandlers);
    this.maxRequests = opts.maxInflightRequests ?? DEFAULT_MAX_INFLIGHT_REQUESTS;
    this.maxBytes = opts.maxInflightBytes ?? DEFAULT_MAX_INFLIGHT_BYTES;
    this.finished = new Promise((r) => (this.finishedResolve = r));
  }

  /** The export being served, once negotiation chose one. */
  get export(): NbdExport | undefined { return this.exp; }
  get state(): Phase { return this.phase; }
  get requestsInFlight(): number { return this.inflight; }
  /** The per-request server settings, for the side a moved connection goes to. */
  get limits(): { maxInflightRequests: number; maxInflightBytes: number; specErrnos?: boolean } {
    return { maxInflightRequests: this.maxRequests, maxInflightBytes: this.maxBytes, specErrnos: this.opts.specErrnos };
  }

  start(): void {
    this.transport.attach(this.events);
    if (this.opts.handshakeMaxSeconds > 0) {
      this.timer = setTimeout(() => {
        if (this.phase === 'transmission' || this.socketClosed) return;
        this.log.warn({ seconds: this.opts.handshakeMaxSeconds }, 'NBD client did not finish negotiation in time; disconnecting');
        this.abort();
      }, this.opts.handshakeMaxSeconds * 1000);
      this.timer.unref();
    }
    this.send([this.handshake.greeting()]);
    this.updateReading();
  }

  /**
   * A connection moved here from another event loop (its release() there):
   * transmission goes on from `rest`, the bytes read there and not framed.
   */
  static resumed(transport: Transport, opts: ConnectionOptions, n: Negotiated, rest: Buffer): NbdConnection {
    const conn = new NbdConnection(transport, opts);
    conn.transport.attach(conn.events);
    conn.endHandshake({ kind: 'transmission', negotiated: n, rest } as NonNullable<HandshakeStep['done']>);
    return conn;
  }

  /** Graceful: take no more requests, let those in flight reply, then close. */
  close(): Promise<void> {
    if (this.phase === 'remote') return this.remote!.close(), this.finished;
    if (this.phase === 'handshake') this.abort();
    else if (this.phase === 'transmission') this.finish('server closing');
    return this.finished;
  }

  /** Forced: close the socket now; resolves once the requests still running in the block layer are done. */
  destroy(): Promise<void> {
    if (this.phase === 'remote') return this.remote!.destroy(), this.finished;
    if (this.phase === 'moved') return this.finished;
    this.abort();
    return this.finished;
  }

  // ---- moving to another event loop ----

  /**
   * Stops at the next request boundary and gives the connection up (see the
   * header comment); undefined if it cannot move (a TLS session, not in
   * transmission) or ends first. The caller then either forgets it (forget)
   * or keeps it as a stand-in (goRemote).
   */
  release(): Promise<MovedConnection | undefined> {
    if (this.released) return this.released;
    const released = new Promise<MovedConnection | undefined>((r) => (this.releasing = r));
    this.released = released;
    if (this.phase !== 'transmission' || !this.transport.moveOut) this.endRelease(undefined);
    else this.pump();
    return released;
  }

  private endRelease(m: MovedConnection | undefined): void {
    const r = this.releasing;
    this.releasing = undefined;
    this.released = undefined;
    r?.(m);
  }

  /** Gives up the socket once nothing of this connection is left in this event loop but the unframed bytes. */
  private checkReleased(): void {
    if (!this.releasing || this.phase !== 'transmission') return;
    if (!this.framer!.atBoundary || this.inflight > 0 || this.corked || this.transport.writableLength > 0) return;
    const rest = this.framer!.takeBuffered();
    const fd = this.transport.moveOut!();
    this.phase = 'moved';
    this.endRelease({ fd, rest, negotiated: negotiatedState(this.negotiated!) });
  }

  /** After a release: this side is done with the connection (it lives on elsewhere). */
  forget(): void {
    if (this.phase !== 'moved') throw new Error(`assertion failed: forget() in phase ${this.phase}`);
    this.socketClosed = true;
    this.maybeFinished();
  }

  /** After a release: this side stands in for the connection served elsewhere, which `end` closes. */
  goRemote(end: RemoteEnd): void {
    if (this.phase !== 'moved') throw new Error(`assertion failed: goRemote() in phase ${this.phase}`);
    this.phase = 'remote';
    this.remote = end;
  }

  /** The connection served elsewhere has closed. */
  remoteEnded(): void {
    if (this.phase !== 'remote') return;
    this.remote = undefined;
    this.phase = 'moved';
    this.forget();
  }

  /** The connection served elsewhere came back (released there): transmission goes on here, from `m.rest`. */
  returned(transport: Transport, rest: Buffer): void {
    if (this.phase !== 'remote' && this.phase !== 'moved') throw new Error(`assertion failed: returned() in phase ${this.phase}`);
    this.remote = undefined;
    this.transport = transport;
    this.phase = 'transmission';
    this.writeBlocked = false;
    transport.attach(this.events);
    this.framer = new RequestFramer({ alloc: (n) => this.pool.acquire(n), transient: transport.transientReads, extended: this.negotiated!.extended });
    this.framer.push(rest);
    this.pump();
    if (transport.transientReads) this.framer.retainUnconsumed();
  }

  // ---- input ----

  /**
   * Input. From a transport with transient reads (one reused read buffer:
   * no allocation per read, which at 1 MiB writes was mostly
   * garbage-collector time) nothing may keep a view of `chunk` past this
   * call. Returning false pauses reading (backpressure).
   */
  private onData(chunk: Buffer): boolean {
    const transient = this.transport.transientReads;
    if (this.phase === 'handshake') {
      this.onHandshakeData(transient ? Buffer.from(chunk) : chunk);
    } else if (this.phase === 'transmission') {
      this.framer!.push(chunk);
      this.pump();
      if (transient) this.framer!.retainUnconsumed();
    }
    return !this.readingBlocked();
  }

  private onHandshakeData(chunk: Buffer): void {
    // Bytes behind an upgrade request came before the new transport: dropped, as the handshake dropped those it held.
    if (this.upgradeState) return;
    this.handshake.feed(chunk);
    this.pumpHandshake();
  }

  /** Handles buffered options one at a time while the client takes our replies. */
  private pumpHandshake(): void {
    while (this.phase === 'handshake' && !this.writeBlocked) {
      let step;
      try {
        step = this.handshake.next();
      } catch (err) {
        this.log.error({ err }, 'NBD negotiation failed');
        return this.abort();
      }
      if (!step) break;
      this.send(step.send);
      if (step.done) return this.endHandshake(step.done);
      if (step.upgrade) return this.beginUpgrade();
    }
    this.updateReading();
  }

  private endHandshake(done: NonNullable<HandshakeStep['done']>): void {
    if (done.kind === 'close') {
      // The handshake timer stays armed: a client that never reads our last reply is still cut off.
      if (done.clean) this.log.debug(done.reason);
      else this.log.warn({ reason: done.reason }, 'NBD option negotiation failed');
      this.phase = 'closing';
      this.updateReading();
      this.endSocket();
      return;
    }
    clearTimeout(this.timer);
    this.beginTransmission(done.negotiated, done.rest);
  }

  private beginTransmission(n: Negotiated, rest: Buffer): void {
    if (!n.exp.attach(this)) {
      this.log.warn({ export: n.exp.name }, 'export went away during negotiation');
      return this.abort();
    }
    this.exp = n.exp;
    this.negotiated = n;
    this.phase = 'transmission';
    this.log = this.log.child({ export: n.exp.name });
    this.cmdCtx = { exp: n.exp, structured: n.structured, contexts: n.contexts, log: this.log, pool: this.pool };
    this.valCtx = {
      size: n.exp.size,
      readOnly: !n.exp.writable,
      structured: n.structured,
      extended: n.extended,
      metaContexts: n.contexts.length,
      specErrnos: this.opts.specErrnos,
    };
    this.log.debug({ structured: n.structured, extended: n.extended, contexts: n.contexts.map((c) => c.name) }, 'NBD negotiation done');
    const transient = this.transport.transientReads;
    this.framer = new RequestFramer({ alloc: (n) => this.pool.acquire(n), transient, extended: n.extended });
    this.framer.push(rest);
    this.pump();
    if (transient) this.framer.retainUnconsumed();
    // An export an iothread serves takes its connections there.
    n.exp.placement?.(this);
  }

  /**
   * While closing, input is read and dropped (never blocked) so the client's
   * hang-up is noticed; otherwise reading stops under backpressure.
   */
  private readingBlocked(): boolean {
    if (this.phase !== 'transmission') return this.phase === 'handshake' && (this.writeBlocked || this.upgradeState !== undefined);
    // Releasing: the frame being received is finished, nothing after it taken.
    if (this.releasing && this.framer!.atBoundary) return true;
    return this.writeBlocked || this.inflight >= this.maxRequests || this.inflightBytes >= this.maxBytes;
  }

  // ---- transport upgrade ----

  private beginUpgrade(): void {
    if (!this.opts.upgrade) {
      this.log.error('an NBD option asked for a transport upgrade this server does not offer');
      return this.abort();
    }
    this.upgradeState = 'flushing';
    this.updateReading();
    // The acknowledgement is the last message over the old transport: it must be out before the new one starts.
    if (this.transport.writableLength === 0) this.swapTransport();
  }

  private swapTransport(): void {
    this.upgradeState = 'swapping';
    const old = this.transport;
    old.detach();
    this.opts.upgrade!(old).then((next) => {
      if (this.phase !== 'handshake') return next.destroy(); // aborted meanwhile
      this.transport = next;
      this.upgradeState = undefined;
      next.attach(this.events);
      this.handshake.upgraded();
      this.log.debug('NBD transport upgraded');
      this.pumpHandshake();
    }, (err: unknown) => {
      if (this.phase !== 'handshake') return;
      this.log.warn(`NBD transport upgrade failed, disconnecting: ${(err as Error).message}`);
      this.abort();
    });
  }

  /** Takes frames while backpressure allows, then pauses or resumes the socket to match. */
  private pump(): void {
    if (this.phase === 'handshake') return this.pumpHandshake();
    if (this.phase === 'transmission') {
      this.pumping = true;
      try {
        // (A DISC or a bad magic ends transmission: what follows it is not taken.)
        while (this.phase === 'transmission' && !this.readingBlocked()) {
          const f = this.framer!.next();
          if (!f) break;
          this.dispatch(f);
        }
      } finally {
        this.pumping = false;
      }
    }
    this.updateReading();
  }

  private updateReading(): void {
    if (this.socketClosed || this.phase === 'moved' || this.phase === 'remote') return;
    if (this.readingBlocked()) this.transport.pause();
    else this.transport.resume();
    this.checkReleased();
  }

  private dispatch(f: Frame): void {
    if (f.kind === 'bad-magic') {
      // As qsd: the bad request is answered (EINVAL), then the connection is closed.
      const reason = `invalid magic (got 0x${(f.magic >>> 0).toString(16)})`;
      this.log.warn({ reason }, 'NBD protocol violation; disconnecting');
      this.send(errorReply(this.cmdCtx!, f.req, NbdErrno.EINVAL, reason));
      return this.finish('invalid magic');
    }
    if (f.kind === 'payload-too-big') {
      // Extended headers: the spec's hard disconnect rather than reading a 64-bit length's worth of payload.
      const reason = `payload length (${f.req.length}) is larger than max len (${MAX_PAYLOAD})`;
      this.log.warn({ reason }, 'NBD protocol violation; disconnecting');
      this.send(errorReply(this.cmdCtx!, f.req, NbdErrno.EINVAL, reason));
      return this.finish('payload too big');
    }
    const req = f.req;
    if (req.type === Cmd.DISC) {
      this.log.debug('client sent NBD_CMD_DISC');
      return this.finish('client disconnect');
    }
    const rejected = checkRequest(req, this.valCtx!);
    if (rejected) {
      this.log.debug({ cmd: cmdName(req.type), offset: req.offset, length: req.length, reason: rejected.reason }, 'NBD request rejected');
      this.send(errorReply(this.cmdCtx!, req, rejected.errno, rejected.reason));
      this.pool.release(f.payload);
      this.countRefused(req.type);
      return;
    }
    this.runRequest(req, f.payload);
  }

  /** A request refused by validation: invalid for the export, and for its node as a guest device's invalid request is for its drive. */
  private countRefused(type: number): void {
    const op = EXPORT_OP[type];
    if (op === undefined) return;
    this.exp!.ioStats.refused(op);
    const kind = NODE_KIND[op];
    if (kind) this.exp!.node.stats.invalid(kind);
  }

  private runRequest(req: RequestHeader, payload?: Buffer): void {
    const bytes = req.type === Cmd.READ || req.type === Cmd.WRITE ? req.length : 0;
    this.inflight++;
    this.inflightBytes += bytes;
    const t0 = this.exp!.ioStats.started();
    const reply = execute(this.cmdCtx!, req, payload);
    if (reply instanceof Promise) void reply.then((r) => this.complete(r, bytes, req, t0));
    else this.complete(reply, bytes, req, t0);
  }

  /** A request's reply goes out; a request that completed inside pump() leaves the taking of the next frame to pump()'s loop. */
  private complete(reply: Reply, bytes: number, req: RequestHeader, t0: number): void {
    this.exp!.ioStats.ended(EXPORT_OP[req.type] ?? ExportOp.READ, req.length, t0, reply.failed === true);
    this.send(reply.bufs, reply.release);
    this.inflight--;
    this.inflightBytes -= bytes;
    if (this.inflight === 0) this.onIdle();
    if (!this.pumping) this.pump();
  }

  // ---- output ----

  /**
   * Queues one reply (or negotiation message). The socket stays corked until
   * the current batch of completions is over (next tick), so replies that
   * complete together leave in one writev; small replies are copied into
   * one buffer, large data is passed by reference. `release` goes back to
   * the pool once written. Reading stops while more than
   * WRITE_BUFFER_LIMIT bytes wait to be written.
   */
  private send(bufs: Buffer[], release?: Buffer): void {
    const t = this.transport;
    if (bufs.length === 0 || this.socketClosed || !t.writable) return this.pool.release(release);
    let total = 0;
    for (const b of bufs) total += b.length;
    if (bufs.length > 1 && total <= SMALL_REPLY) {
      bufs = [Buffer.concat(bufs, total)];
      this.pool.release(release);
      release = undefined;
    }
    // A reply with no other request in flight (queue depth 1) and nothing
    // queued goes out at once through the transport's fast path (one
    // send(2) on a plain socket: node:net's write path costs several times
    // the syscall itself, which at depth 1 is the whole latency). Whatever
    // is not taken is queued behind it as usual. While more requests wait
    // in what was read, replies are corked instead.
    if (t.fastPath && !this.corked && this.inflight <= 1 && bufs.length === 1 && t.writableLength === 0 &&
        !(this.pumping && this.framer!.buffered > 0)) {
      const sent = t.trySend(bufs[0]);
      if (sent === bufs[0].length) return this.pool.release(release);
      if (sent > 0) bufs = [bufs[0].subarray(sent)];
    } else if (!this.corked) {
      // Replies completing in this turn of the event loop leave in one
      // writev: file I/O completions each run in a tick of their own, so
      // the uncork waits for the check phase, after the poll phase has run
      // every completion that was ready (one send per batch, not per reply).
      this.corked = true;
      t.cork();
      setImmediate(this.uncork);
    }
    for (let i = 0; i < bufs.length; i++) {
      if (bufs[i].length === 0) continue;
      if (i === bufs.length - 1 && release) t.write(bufs[i], () => this.pool.release(release));
      else t.write(bufs[i]);
    }
    if (t.writableLength > WRITE_BUFFER_LIMIT) this.writeBlocked = true;
  }

  private readonly uncork = (): void => {
    this.corked = false;
    if (this.phase === 'moved' || this.phase === 'remote') return;
    this.transport.uncork();
    // Written to the kernel now, or left queued until 'drain'.
    this.checkReleased();
  };

  // ---- ending ----

  /** Stops taking requests; once those in flight have replied, closes the socket. */
  /** Said goodbye (DISC, end of input) or closed: nothing more will be read (ExportClient.leaving). */
  get leaving(): boolean { return this.phase === 'closing' || this.phase === 'closed'; }

  private finish(why: string): void {
    if (this.phase === 'closing' || this.phase === 'closed' || this.phase === 'moved' || this.phase === 'remote') return;
    this.endRelease(undefined);
    this.log.debug({ why }, 'NBD connection finishing');
    this.phase = 'closing';
    this.updateReading();
    if (this.inflight === 0) this.onIdle();
  }

  /** Closes the socket now; replies of requests still running are dropped. */
  private abort(): void {
    clearTimeout(this.timer);
    if (this.phase === 'moved' || this.phase === 'remote') return;
    this.endRelease(undefined);
    if (this.phase !== 'closed') this.phase = 'closing';
    this.transport.destroy();
    // A detached transport (mid-upgrade) reports no close: the connection is closed now.
    if (this.upgradeState === 'swapping' && !this.socketClosed) this.onClose();
  }

  private onIdle(): void {
    if (this.phase === 'closing') this.endSocket();
    this.maybeFinished();
  }

  /** Ends our side once queued replies are written; a client that never reads them is cut off after a grace period. */
  private endSocket(): void {
    if (this.transport.destroyed || this.endTimer) return;
    this.transport.end();
    this.endTimer = setTimeout(() => this.transport.destroy(), END_GRACE_MS);
    this.endTimer.unref();
  }

  private onEnd(): void {
    // The client half-closed: nothing more will come. Finish what is in flight, then close.
    if (this.phase === 'handshake') {
      this.log.debug('client hung up during negotiation');
      return this.abort();
    }
    if (this.phase === 'transmission' && this.framer!.midFrame) {
      this.log.info('client disconnected in the middle of a request');
    }
    this.finish('client closed its end');
  }

  private onClose(): void {
    this.endRelease(undefined);
    this.socketClosed = true;
    clearTimeout(this.timer);
    clearTimeout(this.endTimer);
    if (this.phase === 'transmission' && this.framer!.midFrame) {
      this.log.info('client disconnected in the middle of a request');
    }
    if (this.phase !== 'closed') this.phase = 'closing';
    this.maybeFinished();
  }

  private maybeFinished(): void {
    if (this.done || !this.socketClosed || this.inflight > 0) return;
    this.done = true;
    this.phase = 'closed';
    this.exp?.detach(this);
    this.finishedResolve();
  }
}
