/**
 * The /metrics families: what the daemon's parts count, read when scraped.
 *
 *   blockd_node_*          every node of the graph (query-blockstats' counters, latency histograms, in flight)
 *   blockd_export_*        every export: its clients' requests by kind, bytes, errors, refusals, latency, clients
 *   blockd_nbd_server_*    each NBD server: connections open, served, refused, waiting
 *   blockd_job_*           each job: status, progress, rate since the previous scrape
 *   blockd_throttle_*      each throttle group: requests queued by direction, members
 *   blockd_event_loop_*    each event loop (main, every iothread's): how often it polled before sleeping, and caught an event
 *   process_*, nodejs_*    prom-client's default metrics (memory, CPU, event-loop delay, GC)
 */
import { collectDefaultMetrics, Registry } from 'prom-client';
import type { BlockGraph } from '../../blockdev/graph.ts';
import type { BlockNode } from '../../blockdev/node.ts';
import type { BlockExports } from '../../export/registry.ts';
import { EXPORT_OP_NAMES } from '../../export/io-stats.ts';
import type { NbdServer } from '../../nbd/server.ts';
import type { JobManager } from '../../blockdev/jobs/manager.ts';
import type { Job } from '../../blockdev/jobs/job.ts';
import type { ObjectRegistry } from '../../objects/registry.ts';
import type { ThrottleGroup } from '../../util/throttle/group.ts';
import { collected, collectedHistogram, type HistogramSample, type Sample } from './families.ts';

/** What is measured: the daemon's parts (src/daemon/daemon.ts). */
export interface MetricsSources {
  graph: BlockGraph;
  exports: BlockExports;
  nbdServers: readonly NbdServer[];
  jobs: JobManager;
  objects: ObjectRegistry;
  /** Which iothread serves an export now (undefined: the main loop). */
  servedBy?: (exportId: string) => string | undefined;
  /** Every event loop's polling counters ('main', then each iothread by id). */
  polling?: () => { loop: string; polls: number; hits: number }[];
}

type NodeOp = 'read' | 'write' | 'flush' | 'unmap';

function nodeSamples(graph: BlockGraph, pick: (n: BlockNode, op: NodeOp) => number | undefined, ops: readonly NodeOp[]): Sample[] {
  const out: Sample[] = [];
  for (const n of graph.nodes.values()) {
    for (const op of ops) {
      const value = pick(n, op);
      if (value !== undefined) out.push({ labels: { node: n.nodeName, op }, value });
    }
  }
  return out;
}

function registerNodes(r: Registry, graph: BlockGraph): void {
  const ALL: NodeOp[] = ['read', 'write', 'flush', 'unmap'];
  collected(r, 'counter', 'blockd_node_operations_total', 'Requests completed successfully on a node (write-zeroes count as writes, discards as unmaps), as query-blockstats counts them.', () =>
    nodeSamples(graph, (n, op) => {
      const s = n.stats;
      return op === 'read' ? s.rdOps : op === 'write' ? s.wrOps + s.zeroOps : op === 'flush' ? s.flushOps : s.discardOps;
    }, ALL));
  collected(r, 'counter', 'blockd_node_bytes_total', 'Bytes of the requests completed successfully on a node.', () =>
    nodeSamples(graph, (n, op) => {
      const s = n.stats;
      return op === 'read' ? s.rdBytes : op === 'write' ? s.wrBytes + s.zeroBytes : op === 'unmap' ? s.discardBytes : undefined;
    }, ALL));
  collected(r, 'counter', 'blockd_node_failed_operations_total', 'Requests that failed on a node.', () =>
    nodeSamples(graph, (n, op) => {
      const s = n.stats;
      return op === 'read' ? s.failedRd : op === 'write' ? s.failedWr : op === 'flush' ? s.failedFlush : s.failedUnmap;
    }, ALL));
  collected(r, 'counter', 'blockd_node_invalid_operations_total', 'Requests for a node refused as invalid before they ran (e.g. an NBD request out of range).', () =>
    nodeSamples(graph, (n, op) => {
      const s = n.stats;
      return op === 'read' ? s.invalidRd : op === 'write' ? s.invalidWr : op === 'flush' ? s.invalidFlush : s.invalidUnmap;
    }, ALL));
  collectedHistogram(r, 'blockd_node_request_duration_seconds', 'Time from a request reaching a node to its end (failed ones included).', () => {
    const out: HistogramSample[] = [];
    for (const n of graph.nodes.values()) {
      const s = n.stats;
      out.push({ labels: { node: n.nodeName, op: 'read' }, histogram: s.rdLatency }, { labels: { node: n.nodeName, op: 'write' }, histogram: s.wrLatency },
        { labels: { node: n.nodeName, op: 'flush' }, histogram: s.flushLatency }, { labels: { node: n.nodeName, op: 'unmap' }, histogram: s.unmapLatency });
    }
    return out;
  });
  collected(r, 'gauge', 'blockd_node_inflight_requests', 'Requests running on a node now.', () =>
    [...graph.nodes.values()].map((n) => ({ labels: { node: n.nodeName }, value: n.inFlight })));
  collected(r, 'gauge', 'blockd_node_write_highest_offset_bytes', 'End of the highest write on a node (query-blockstats wr_highest_offset).', () =>
    [...graph.nodes.values()].map((n) => ({ labels: { node: n.nodeName }, value: n.stats.wrHighestOffset })));
  collected(r, 'gauge', 'blockd_node_info', 'A node of the graph (value 1): its driver.', () =>
    [...graph.nodes.values()].map((n) => ({ labels: { node: n.nodeName, driver: n.driver.name }, value: 1 })));
}

function registerExports(r: Registry, exports: BlockExports, servedBy?: (exportId: string) => string | undefined): void {
  const perOp = (pick: (e: ReturnType<BlockExports['list']>[number], i: number) => number | undefined) => (): Sample[] => {
    const out: Sample[] = [];
    for (const e of exports.list()) {
      EXPORT_OP_NAMES.forEach((op, i) => {
        const value = pick(e, i);
        if (value !== undefined) out.push({ labels: { export: e.id, op }, value });
      });
    }
    return out;
  };
  collected(r, 'gauge', 'blockd_export_info', 'An export (value 1): its type and the node it serves.', () =>
    exports.list().map((e) => ({ labels: { export: e.id, type: e.type, node: e.node.nodeName }, value: 1 })));
  collected(r, 'gauge', 'blockd_export_iothread', "An export with iothread=: 1 while its iothread serves it, 0 while the main loop does (its nodes cannot move, or a command or job has it back).", () =>
    exports.list().filter((e) => e.iothread !== undefined).map((e) => ({
      labels: { export: e.id, iothread: e.iothread! }, value: servedBy?.(e.id) === e.iothread ? 1 : 0,
    })));
  collected(r, 'counter', 'blockd_export_requests_total', "Requests of an export's clients that ran (successfully or not), by kind.", perOp((e, i) => e.ioStats.ops[i]));
  collected(r, 'counter', 'blockd_export_bytes_total', "Bytes of an export's successful read, write, write-zeroes and trim requests.", perOp((e, i) => (i <= 3 ? e.ioStats.bytes[i] : undefined)));
  collected(r, 'counter', 'blockd_export_errors_total', "Requests of an export's clients that ran and failed.", perOp((e, i) => e.ioStats.errors[i]));
  collected(r, 'counter', 'blockd_export_invalid_requests_total', "Requests of an export's clients refused before they ran (out of range, not allowed).", perOp((e, i) => e.ioStats.invalid[i]));
  collectedHistogram(r, 'blockd_export_request_duration_seconds', 'Time from a request being taken from the wire to its reply.', () => {
    const out: HistogramSample[] = [];
    for (const e of exports.list()) EXPORT_OP_NAMES.forEach((op, i) => out.push({ labels: { export: e.id, op }, histogram: e.ioStats.latency[i] }));
    return out;
  });
  collected(r, 'gauge', 'blockd_export_inflight_requests', "Requests of an export's clients running now.", () =>
    exports.list().map((e) => ({ labels: { export: e.id }, value: e.ioStats.inFlight })));
  collected(r, 'gauge', 'blockd_export_clients', 'Clients an export serves now.', () =>
    exports.list().map((e) => ({ labels: { export: e.id }, value: e.connections() })));
  collected(r, 'counter', 'blockd_export_clients_total', 'Clients an export has served.', () =>
    exports.list().map((e) => ({ labels: { export: e.id }, value: e.clientsTotal })));
}

function registerNbdServers(r: Registry, servers: readonly NbdServer[]): void {
  const each = (pick: (s: NbdServer) => number) => (): Sample[] =>
    servers.map((s, i) => ({ labels: { server: String(i), listen: s.listenerNames().join(' ') }, value: pick(s) }));
  collected(r, 'gauge', 'blockd_nbd_server_connections', 'NBD connections open (negotiating or in transmission).', each((s) => s.connections));
  collected(r, 'counter', 'blockd_nbd_server_connections_total', 'NBD connections the server has taken on.', each((s) => s.counters.accepted));
  collected(r, 'counter', 'blockd_nbd_server_connections_refused_total', 'NBD clients turned away (no waiting slot left) or refused at TLS.', each((s) => s.counters.refused));
  collected(r, 'gauge', 'blockd_nbd_server_waiting_clients', 'NBD clients connected and waiting for a slot (beyond max-connections).', each((s) => s.waitingClients));
}

function registerJobs(r: Registry, jobs: JobManager): void {
  // The rate is measured between scrapes: the progress and time each job had at the previous one.
  let previous = new WeakMap<Job, { t: number; progress: number; rate: number }>();
  const rate = (j: Job, now: number): number => {
    const p = previous.get(j);
    if (!p) return 0;
    return now - p.t >= 0.001 ? (j.currentProgress - p.progress) / (now - p.t) : p.rate;
  };
  const label = (j: Job) => ({ job: j.info().id, type: j.info().type });
  collected(r, 'gauge', 'blockd_job_info', 'A job (value 1) and its status.', () => jobs.list().map((j) => ({ labels: { ...label(j), status: j.status }, value: 1 })));
  collected(r, 'gauge', 'blockd_job_progress_current', "A job's progress so far (QEMU's current-progress; bytes for block jobs).", () =>
    jobs.list().map((j) => ({ labels: label(j), value: j.currentProgress })));
  collected(r, 'gauge', 'blockd_job_progress_total', "A job's estimated total (QEMU's total-progress).", () =>
    jobs.list().map((j) => ({ labels: label(j), value: j.totalProgress })));
  collected(r, 'gauge', 'blockd_job_progress_ratio', "current-progress / total-progress (0 while the total is 0).", () =>
    jobs.list().map((j) => ({ labels: label(j), value: j.totalProgress > 0 ? j.currentProgress / j.totalProgress : 0 })));
  collected(r, 'gauge', 'blockd_job_rate_per_second', 'Progress per second since the previous scrape (bytes/s for block jobs).', () => {
    const now = performance.now() / 1000;
    const next = new WeakMap<Job, { t: number; progress: number; rate: number }>();
    const out = jobs.list().map((j) => {
      const value = rate(j, now);
      next.set(j, { t: now, progress: j.currentProgress, rate: value });
      return { labels: label(j), value };
    });
    previous = next;
    return out;
  });
}

function registerThrottleGroups(r: Registry, objects: ObjectRegistry): void {
  const groups = (): [string, ThrottleGroup][] =>
    objects.ids().flatMap((id) => {
      const g = objects.lookup<ThrottleGroup>(id, 'throttle-group');
      return g ? [[id, g] as [string, ThrottleGroup]] : [];
    });
  collected(r, 'gauge', 'blockd_throttle_group_queued_requests', "Requests a throttle group's members hold back now, by direction.", () =>
    groups().flatMap(([id, g]) => (['read', 'write'] as const).map((dir) => ({
      labels: { group: id, direction: dir }, value: g.members.reduce((n, m) => n + m.queued(dir), 0),
    }))));
  collected(r, 'gauge', 'blockd_throttle_group_members', 'Throttle nodes in a throttle group.', () =>
    groups().map(([id, g]) => ({ labels: { group: id }, value: g.members.length })));
}

function registerPolling(r: Registry, polling: NonNullable<MetricsSources['polling']>): void {
  collected(r, 'counter', 'blockd_event_loop_polls_total', 'Times an event loop busy-waited for its next event before sleeping (BLOCKD_POLL_MAX_NS, an iothread\'s poll-max-ns).', () =>
    polling().map((p) => ({ labels: { loop: p.loop }, value: p.polls })));
  collected(r, 'counter', 'blockd_event_loop_poll_hits_total', 'Times the event came while the loop busy-waited (the sleep and wake-up saved).', () =>
    polling().map((p) => ({ labels: { loop: p.loop }, value: p.hits })));
}

/** A registry with every family; scraping it reads the sources as they are then. */
export function metricsRegistry(src: MetricsSources): Registry {
  const r = new Registry();
  registerNodes(r, src.graph);
  registerExports(r, src.exports, src.servedBy);
  registerNbdServers(r, src.nbdServers);
  registerJobs(r, src.jobs);
  registerThrottleGroups(r, src.objects);
  if (src.polling) registerPolling(r, src.polling);
  collectDefaultMetrics({ register: r });
  return r;
}
