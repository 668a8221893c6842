/**
 * One iothread, seen from the main loop: a worker thread with its own event
 * loop (worker/runtime.ts) that serves the NBD exports leased to it, as
 * QEMU's IOThread runs the AioContext an export's nodes were moved into.
 *
 * A lease: the worker opens its own copy of the export's nodes (only those
 * whose drivers keep no state in memory can move: subtree.ts) and the
 * export's connections move there, each at a request boundary (the socket
 * as a duplicate descriptor, with the bytes read but not framed). Here each
 * stays as a stand-in (NbdConnection phase 'remote'): still counted by its
 * server and export, closed through the worker. New connections to a
 * leased export move as soon as they enter transmission.
 *
 * A recall (before anything in the main loop may change the graph: every
 * QMP command but the queries, see iothreads.ts): the worker hands each
 * connection back at a request boundary, closes its copy and reports its
 * last statistics; the main loop's nodes, untouched meanwhile, serve on.
 *
 * Statistics: the worker counts; the main loop's counters (query-blockstats,
 * the metrics endpoint) get what it counted on every recall and on
 * syncStats(), a synchronous request over a second port (the main thread
 * waits on a shared flag, then reads the answer off the port).
 */
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import type { Logger } from 'pino';
import { NbdConnection } from '../nbd/connection.ts';
import type { NbdExport } from '../nbd/exports.ts';
import { PlainSocketTransport } from '../nbd/transport/plain.ts';
import type { BlockNode } from '../blockdev/node.ts';
import { addDelta } from './stats-delta.ts';
import { inlineOptions, subtreeNodes } from './subtree.ts';
import type { FromWorker, StatsAnswer, StatsReport, ToWorker } from './messages.ts';
import type { IothreadWorkerData } from './worker/runtime.ts';

/** How long the main thread waits for a statistics answer before going on without it. */
const STATS_WAIT_MS = 2000;

interface Lease {
  exp: NbdExport;
  /** The main loop's nodes the worker has copies of (subtree order: the reports' order). */
  nodes: BlockNode[];
  /** Connections on their way to the worker. */
  moving: Set<Promise<void>>;
  recalling: boolean;
}

const LEVELS: Record<number, 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal'> = {
  10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal',
};

export class Iothread {
  private readonly worker: Worker;
  private readonly ready: Promise<void>;
  private readonly statsPort: MessagePort;
  private readonly statsFlag = new Int32Array(new SharedArrayBuffer(4));
  /** performance.now() of the worker minus ours, in ns. */
  private clockShiftNs = 0;
  private readonly leases = new Map<string, Lease>();
  /** Stand-ins of the connections the worker serves, by the id they have there. */
  private readonly stands = new Map<number, NbdConnection>();
  private nextCid = 1;
  private readonly waiting = new Map<string, (m: FromWorker | undefined) => void>();
  private readonly log: Logger;
  private exited?: Error;
  /** The worker loop's polling counters, as of its last statistics answer. */
  poll = { polls: 0, hits: 0 };

  /** `pollMaxNs`: the worker's event loop busy-waits up to this long before it sleeps (0: never), as the main loop does. */
  constructor(readonly id: string, log: Logger, pollMaxNs: number) {
    this.log = log.child({ iothread: id });
    const { port1, port2 } = new MessageChannel();
    this.statsPort = port1;
    this.statsPort.unref();
    const workerData: IothreadWorkerData = { id, logLevel: log.level, pollMaxNs, statsPort: port2, statsFlag: this.statsFlag.buffer as SharedArrayBuffer };
    this.worker = new Worker(new URL('./worker/entry.mjs', import.meta.url), { workerData, transferList: [port2], name: `iothread ${id}` });
    this.worker.unref();
    let started!: () => void;
    let failed!: (e: Error) => void;
    this.ready = new Promise<void>((res, rej) => { started = res; failed = rej; });
    this.ready.catch(() => undefined);
    this.worker.on('message', (m: FromWorker) => {
      if (m.type === 'ready') {
        this.clockShiftNs = (m.timeOrigin - performance.timeOrigin) * 1e6;
        return started();
      }
      this.onMessage(m);
    });
    this.worker.on('error', (err) => {
      this.log.error({ err }, `iothread '${id}' failed`);
      failed(err);
    });
    this.worker.on('exit', (code) => {
      this.exited = new Error(`iothread '${id}' exited (code ${code})`);
      failed(this.exited);
      this.lost();
    });
  }

  /** Whether the export is served here now (leased, not being recalled). */
  serves(exportId: string): boolean {
    const l = this.leases.get(exportId);
    return l !== undefined && !l.recalling;
  }

  /** Starts serving the export here; false (logged) if the worker could not open its nodes. */
  async lease(exp: NbdExport): Promise<boolean> {
    await this.ready;
    const reply = await this.ask(`lease:${exp.id}`, {
      type: 'lease', exportId: exp.id, options: inlineOptions(exp.node),
      settings: { name: exp.name, description: exp.description, bitmaps: [], allocationDepth: exp.allocationDepth },
      writable: exp.writable, writethrough: exp.writethrough,
    });
    if (reply?.type !== 'leased') {
      const why = reply?.type === 'lease-failed' ? `could not open its nodes: ${reply.message}` : 'exited';
      this.log.warn(`export '${exp.id}' stays in the main loop: iothread '${this.id}' ${why}`);
      return false;
    }
    const lease: Lease = { exp, nodes: subtreeNodes(exp.node), moving: new Set(), recalling: false };
    this.leases.set(exp.id, lease);
    exp.placement = (conn) => this.move(lease, conn);
    for (const c of exp.clients()) if (c instanceof NbdConnection && c.state === 'transmission') this.move(lease, c);
    this.log.debug({ export: exp.id }, 'export served by its iothread');
    return true;
  }

  /** Takes the export back into the main loop (its connections, its statistics); resolves once it is back. */
  async recall(exportId: string): Promise<void> {
    const lease = this.leases.get(exportId);
    if (!lease || lease.recalling) return;
    lease.recalling = true;
    lease.exp.placement = undefined;
    try {
      await Promise.all(lease.moving);
      if (this.exited) return;
      const reply = await this.ask(`recall:${exportId}`, { type: 'recall', exportId });
      if (reply?.type === 'recalled') this.merge(lease, reply.stats);
    } finally {
      this.leases.delete(exportId);
    }
    this.log.debug({ export: exportId }, 'export back in the main loop');
  }

  /** Brings the main loop's counters up to date with what the worker counted (blocks for the answer). */
  syncStats(): void {
    if (this.exited) return;
    Atomics.store(this.statsFlag, 0, 0);
    this.statsPort.postMessage(null);
    if (Atomics.wait(this.statsFlag, 0, 0, STATS_WAIT_MS) === 'timed-out') {
      this.log.warn(`iothread '${this.id}' did not report its statistics within ${STATS_WAIT_MS} ms`);
    }
    // Every answer is a difference since the one before: a late one from an earlier wait counts too.
    for (let m = receiveMessageOnPort(this.statsPort); m; m = receiveMessageOnPort(this.statsPort)) {
      const answer = m.message as StatsAnswer;
      this.poll = answer.poll;
      for (const [exportId, report] of Object.entries(answer.exports)) {
        const lease = this.leases.get(exportId);
        if (lease) this.merge(lease, report);
      }
    }
  }

  /** Recalls everything, then ends the worker. */
  async stop(): Promise<void> {
    for (const id of [...this.leases.keys()]) await this.recall(id);
    await this.worker.terminate();
  }

  // ---- internals ----

  /** Moves one connection to the worker once it reaches a request boundary. */
  private move(lease: Lease, conn: NbdConnection): void {
    const p = conn.release().then((moved) => {
      if (!moved) return; // ended, or cannot move (TLS): served here
      if (lease.recalling || this.exited) {
        conn.returned(PlainSocketTransport.fromDescriptor(moved.fd), moved.rest);
        return;
      }
      const cid = this.nextCid++;
      this.stands.set(cid, conn);
      conn.goRemote({ close: () => this.post({ type: 'close', cid }), destroy: () => this.post({ type: 'destroy', cid }) });
      this.post({ type: 'connection', exportId: lease.exp.id, cid, moved, limits: conn.limits });
    });
    lease.moving.add(p);
    void p.finally(() => lease.moving.delete(p));
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case 'returned': {
        const conn = this.stands.get(m.cid);
        this.stands.delete(m.cid);
        conn?.returned(PlainSocketTransport.fromDescriptor(m.moved.fd), m.moved.rest);
        return;
      }
      case 'ended': {
        const conn = this.stands.get(m.cid);
        this.stands.delete(m.cid);
        conn?.remoteEnded();
        return;
      }
      case 'log': return this.relayLog(m.line);
      case 'leased': case 'lease-failed': return this.answer(`lease:${m.exportId}`, m);
      case 'recalled': return this.answer(`recall:${m.exportId}`, m);
    }
  }

  private merge(lease: Lease, r: StatsReport): void {
    addDelta(lease.exp.ioStats, r.export, this.clockShiftNs);
    r.nodes.forEach((d, i) => addDelta(lease.nodes[i]!.stats, d, this.clockShiftNs));
  }

  private post(m: ToWorker): void {
    if (!this.exited) this.worker.postMessage(m);
  }

  /** Posts `m` and waits for the answer filed under `key`; undefined if the worker is gone. */
  private ask(key: string, m: ToWorker): Promise<FromWorker | undefined> {
    if (this.exited) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      this.waiting.set(key, resolve);
      this.post(m);
    });
  }

  private answer(key: string, m: FromWorker): void {
    const w = this.waiting.get(key);
    this.waiting.delete(key);
    w?.(m);
  }

  /** The worker is gone: its connections with it; the exports are served here again. */
  private lost(): void {
    for (const conn of this.stands.values()) conn.remoteEnded();
    this.stands.clear();
    for (const l of this.leases.values()) l.exp.placement = undefined;
    this.leases.clear();
    for (const w of this.waiting.values()) w(undefined);
    this.waiting.clear();
  }

  private relayLog(line: string): void {
    let rec: Record<string, unknown>;
    try { rec = JSON.parse(line) as Record<string, unknown>; } catch { return; }
    const { level, msg, ...rest } = rec;
    const fn = LEVELS[level as number] ?? 'info';
    this.log[fn](rest, typeof msg === 'string' ? msg : '');
  }
}
