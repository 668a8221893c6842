/**
 * An iothread, inside its worker thread: its own event loop, its own block
 * graph holding copies of the exports' nodes it serves, and the NBD
 * connections of those exports (the same NbdConnection as in the main loop,
 * started in transmission from a moved socket). The main loop keeps QMP,
 * the real graph and everything else; it leases an export here and recalls
 * it before it changes anything (src/iothread/iothread.ts).
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { pino, type Logger } from 'pino';
import { BlockGraph } from '../../blockdev/graph.ts';
import { registerDrivers } from '../../blockdev/drivers/index.ts';
import type { BlockNode } from '../../blockdev/node.ts';
import { NbdExport } from '../../nbd/exports.ts';
import { DEFAULT_PROVIDERS } from '../../nbd/meta.ts';
import { NbdConnection } from '../../nbd/connection.ts';
import { PlainSocketTransport } from '../../nbd/transport/plain.ts';
import { negotiatedFor, type MovedConnection } from '../../nbd/moved-connection.ts';
import { BufferPool } from '../../util/buffer-pool.ts';
import { native } from '../../platform/native.ts';
import { delta, flatten } from '../stats-delta.ts';
import { subtreeNodes } from '../subtree.ts';
import type { FromWorker, ServingLimits, StatsAnswer, StatsReport, ToWorker } from '../messages.ts';

export interface IothreadWorkerData {
  id: string;
  logLevel: string;
  /** poll-max-ns: the window this loop busy-waits for its next event (native/src/loop_poll.c); 0: off. */
  pollMaxNs: number;
  /** Answers the main thread's synchronous statistics requests. */
  statsPort: MessagePort;
  /** Int32Array over it: set to 1 (and notified) once an answer is posted. */
  statsFlag: SharedArrayBuffer;
}

interface Served {
  exp: NbdExport;
  nodes: BlockNode[];
  /** Last reported counters, to send differences. */
  prev?: { export: number[]; nodes: number[][] };
}

const port = parentPort!;
const data = workerData as IothreadWorkerData;
const post = (m: FromWorker, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer);

const log: Logger = pino({ level: data.logLevel, base: undefined, timestamp: false }, {
  write: (line: string) => post({ type: 'log', line }),
});

native().loopPollSet(data.pollMaxNs);
const graph = new BlockGraph({ log });
registerDrivers(graph);
const pool = new BufferPool();
const served = new Map<string, Served>();
const connections = new Map<number, { conn: NbdConnection; exportId: string }>();

/** Counters since the last report (all of them the first time). */
function report(s: Served): StatsReport {
  const cur = { export: flatten(s.exp.ioStats), nodes: s.nodes.map((n) => flatten(n.stats)) };
  const out = {
    export: delta(cur.export, s.prev?.export, s.exp.ioStats),
    nodes: cur.nodes.map((c, i) => delta(c, s.prev?.nodes[i], s.nodes[i]!.stats)),
  };
  s.prev = cur;
  return out;
}

async function lease(m: Extract<ToWorker, { type: 'lease' }>): Promise<void> {
  try {
    // Implicit: once the export's edge goes, the whole copy closes with it.
    const root = await graph.add(m.options, true);
    const common = { type: 'nbd', id: m.exportId, graph, node: root, writable: m.writable, writethrough: m.writethrough };
    const exp = new NbdExport(common, m.settings, [], DEFAULT_PROVIDERS);
    const s: Served = { exp, nodes: subtreeNodes(root) };
    // The main loop's counters already hold everything before now.
    report(s);
    served.set(m.exportId, s);
    post({ type: 'leased', exportId: m.exportId });
  } catch (e) {
    post({ type: 'lease-failed', exportId: m.exportId, message: (e as Error).message });
  }
}

function take(exportId: string, cid: number, moved: MovedConnection, limits: ServingLimits): void {
  const s = served.get(exportId);
  if (!s) throw new Error(`assertion failed: connection ${cid} for export '${exportId}', which is not served here`);
  const transport = PlainSocketTransport.fromDescriptor(moved.fd);
  const conn = NbdConnection.resumed(transport, {
    env: { findExport: () => undefined, listExports: () => [], multiConn: true },
    log: log.child({ conn: cid, export: s.exp.name }),
    handshakeMaxSeconds: 0,
    pool,
    ...limits,
  }, negotiatedFor(moved.negotiated, s.exp), moved.rest);
  connections.set(cid, { conn, exportId });
  void conn.finished.then(() => {
    // Released connections are reported as 'returned' by recall; the others ended here.
    if (connections.get(cid)?.conn !== conn) return;
    connections.delete(cid);
    post({ type: 'ended', cid });
  });
}

async function recall(exportId: string): Promise<void> {
  const s = served.get(exportId);
  if (!s) throw new Error(`assertion failed: recall of export '${exportId}', which is not served here`);
  const mine = [...connections].filter(([, c]) => c.exportId === exportId);
  await Promise.all(mine.map(async ([cid, { conn }]) => {
    const moved = await conn.release();
    if (!moved) return conn.finished; // ending here: reported as 'ended'
    connections.delete(cid);
    conn.forget();
    post({ type: 'returned', cid, moved });
  }));
  served.delete(exportId);
  const stats = report(s);
  // Connections that were ending are gone; the export's edge goes and the copy of its nodes closes with it.
  await s.exp.unlink();
  post({ type: 'recalled', exportId, stats });
}

port.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'lease': return void lease(m);
    case 'connection': return take(m.exportId, m.cid, m.moved, m.limits);
    case 'close': return void connections.get(m.cid)?.conn.close();
    case 'destroy': return void connections.get(m.cid)?.conn.destroy();
    case 'recall': return void recall(m.exportId).catch((err: unknown) => {
      log.error({ err }, `recall of export '${m.exportId}' failed`);
      throw err;
    });
  }
});

const flag = new Int32Array(data.statsFlag);
data.statsPort.on('message', () => {
  const { polls, hits } = native().loopPollStats();
  const answer: StatsAnswer = { exports: {}, poll: { polls, hits } };
  for (const [id, s] of served) answer.exports[id] = report(s);
  data.statsPort.postMessage(answer);
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
});

post({ type: 'ready', timeOrigin: performance.timeOrigin });
