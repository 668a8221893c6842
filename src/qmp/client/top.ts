/**
 * blockctl top: a live view of a daemon, refreshed every second from
 * query-blockstats (query-nodes), query-jobs and query-block-exports (and,
 * with --metrics, the clients of each export from the /metrics endpoint).
 * Rates and latency percentiles are over the last refresh interval: IOPS
 * and MiB/s from the counters' deltas, p50/p99 from the latency histograms'
 * deltas (blockd reports them always), a job's rate from its progress.
 * `q` (or Ctrl-C) quits.
 */
import { request } from 'node:http';
import { quantileNs } from '../../util/stats/latency-histogram.ts';
import type { QmpClient } from './qmp-client.ts';
import { humanSize, progress } from './tables.ts';

type Row = Record<string, unknown>;
interface Histogram { boundaries: number[]; bins: number[] }
interface NodeStatsEntry { 'node-name'?: string; stats: Row }
interface JobEntry { id: string; type: string; status: string; 'current-progress': number; 'total-progress': number; error?: string }
interface ExportEntry { id: string; type: string; 'node-name': string; 'shutting-down': boolean }

/** One refresh's answers, and when they came (seconds). */
export interface TopSample {
  t: number;
  stats: NodeStatsEntry[];
  jobs: JobEntry[];
  exports: ExportEntry[];
  /** Clients per export id, from /metrics (absent without --metrics). */
  clients?: Map<string, number>;
}

const MiB = 1024 * 1024;

function delta(cur: Row, prev: Row | undefined, key: string): number {
  return (cur[key] as number ?? 0) - ((prev?.[key] as number | undefined) ?? 0);
}

function binsDelta(cur: unknown, prev: unknown): number[] | undefined {
  const c = cur as Histogram | undefined;
  if (!c) return undefined;
  const p = prev as Histogram | undefined;
  return c.bins.map((b, i) => b - (p?.bins[i] ?? 0));
}

function latency(ns: number | undefined): string {
  if (ns === undefined) return '-';
  if (ns < 1e6) return `${(ns / 1e3).toFixed(0)}us`;
  if (ns < 1e9) return `${(ns / 1e6).toFixed(1)}ms`;
  return `${(ns / 1e9).toFixed(2)}s`;
}

function pct(bins: number[] | undefined): string {
  if (!bins) return '-';
  const p50 = quantileNs(bins, 0.5);
  if (p50 === undefined) return '-';
  return `${latency(p50)}/${latency(quantileNs(bins, 0.99))}`;
}

function table(header: string[], rows: string[][], right: Set<number>): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (vals: string[]) => vals.map((v, i) => (right.has(i) ? v.padStart(widths[i]) : v.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)];
}

/** The screen for `cur`, with rates against `prev` (the previous refresh), cut to `width` columns. */
export function renderTop(prev: TopSample | undefined, cur: TopSample, opts: { title: string; width: number }): string[] {
  const dt = prev ? Math.max(1e-3, cur.t - prev.t) : 0;
  const rate = (d: number) => (dt > 0 ? d / dt : 0);
  const out: string[] = [`${opts.title}  ${new Date().toISOString().slice(11, 19)}  (q quits)`, ''];

  out.push(`EXPORTS (${cur.exports.length})`);
  const exportRows = [...cur.exports].sort((a, b) => a.id.localeCompare(b.id)).map((e) => [
    e.id, e.type, e['node-name'], cur.clients ? String(cur.clients.get(e.id) ?? 0) : '-', e['shutting-down'] ? 'shutting down' : 'serving',
  ]);
  out.push(...(exportRows.length ? table(['ID', 'TYPE', 'NODE', 'CLIENTS', 'STATE'], exportRows, new Set([3])) : ['(none)']), '');

  out.push(`NODES (${cur.stats.length})`);
  const prevNodes = new Map((prev?.stats ?? []).map((s) => [s['node-name'], s.stats]));
  const nodeRows = cur.stats.map((s) => {
    const p = prevNodes.get(s['node-name']);
    const st = s.stats;
    const rdIops = rate(delta(st, p, 'rd_operations'));
    const wrIops = rate(delta(st, p, 'wr_operations'));
    return [
      s['node-name'] ?? '',
      rdIops.toFixed(0), (rate(delta(st, p, 'rd_bytes')) / MiB).toFixed(1),
      wrIops.toFixed(0), (rate(delta(st, p, 'wr_bytes')) / MiB).toFixed(1),
      rate(delta(st, p, 'flush_operations')).toFixed(0),
      pct(binsDelta(st.rd_latency_histogram, p?.rd_latency_histogram)),
      pct(binsDelta(st.wr_latency_histogram, p?.wr_latency_histogram)),
      String((st.failed_rd_operations as number) + (st.failed_wr_operations as number) + (st.failed_flush_operations as number) + (st.failed_unmap_operations as number)),
      humanSize(st.wr_highest_offset),
    ];
  });
  out.push(...(nodeRows.length
    ? table(['NODE', 'RD IOPS', 'RD MiB/s', 'WR IOPS', 'WR MiB/s', 'FLUSH/s', 'RD p50/p99', 'WR p50/p99', 'ERRORS', 'WR HIGHEST'], nodeRows, new Set([1, 2, 3, 4, 5, 8, 9]))
    : ['(none)']), '');

  out.push(`JOBS (${cur.jobs.length})`);
  const prevJobs = new Map((prev?.jobs ?? []).map((j) => [j.id, j]));
  const jobRows = cur.jobs.map((j) => {
    const p = prevJobs.get(j.id);
    const r = p ? rate(j['current-progress'] - p['current-progress']) : 0;
    return [j.id, j.type, j.status, progress(j['current-progress'], j['total-progress'], 24), `${(r / MiB).toFixed(1)} MiB/s`, j.error ?? ''];
  });
  out.push(...(jobRows.length ? table(['ID', 'TYPE', 'STATUS', 'PROGRESS', 'RATE', 'ERROR'], jobRows, new Set([4])) : ['(none)']));
  return out.map((l) => (l.length > opts.width ? l.slice(0, opts.width) : l));
}

/** Clients per export from a /metrics endpoint: a Unix socket path or host:port. */
function scrapeClients(target: string): Promise<Map<string, number>> {
  const tcp = /^(.*):(\d+)$/.exec(target);
  const where = tcp && !target.includes('/') ? { host: tcp[1] || '127.0.0.1', port: Number(tcp[2]) } : { socketPath: target };
  return new Promise((resolve, reject) => {
    const req = request({ ...where, path: '/metrics', timeout: 2000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        const m = new Map<string, number>();
        for (const x of body.matchAll(/^blockd_export_clients\{export="((?:[^"\\]|\\.)*)"\} (\S+)$/gm)) m.set(x[1].replace(/\\(.)/g, '$1'), Number(x[2]));
        resolve(m);
      });
    });
    req.on('timeout', () => req.destroy(new Error('metrics endpoint timed out')));
    req.on('error', reject);
    req.end();
  });
}

export async function sampleTop(client: QmpClient, metrics?: string): Promise<TopSample> {
  const [stats, jobs, exports, clients] = await Promise.all([
    client.execute<NodeStatsEntry[]>('query-blockstats', { 'query-nodes': true }),
    client.execute<JobEntry[]>('query-jobs'),
    client.execute<ExportEntry[]>('query-block-exports'),
    metrics ? scrapeClients(metrics).catch(() => undefined) : Promise.resolve(undefined),
  ]);
  return { t: performance.now() / 1000, stats, jobs, exports, clients };
}

/** Runs the view until q, Ctrl-C or the connection ends; `intervalMs` between refreshes. */
export async function runTop(client: QmpClient, opts: { title: string; metrics?: string; intervalMs?: number }): Promise<void> {
  const out = process.stdout;
  const input = process.stdin;
  const tty = out.isTTY;
  let quit!: () => void;
  const quitting = new Promise<void>((r) => (quit = r));
  const onKey = (d: Buffer) => {
    const s = d.toString('latin1');
    if (s.includes('q') || s.includes('Q') || s.includes('\x03')) quit();
  };
  if (input.isTTY) input.setRawMode(true);
  input.on('data', onKey);
  input.resume();
  client.once('close', () => quit());
  if (tty) out.write('\x1b[?1049h\x1b[?25l');
  let prev: TopSample | undefined;
  let stopped = false;
  void quitting.then(() => { stopped = true; });
  try {
    while (!stopped) {
      const cur = await Promise.race([sampleTop(client, opts.metrics), quitting.then(() => undefined)]);
      if (!cur) break;
      const lines = renderTop(prev, cur, { title: opts.title, width: out.columns || 200 });
      out.write(`${tty ? '\x1b[H\x1b[2J' : ''}${lines.join('\n')}\n`);
      prev = cur;
      await Promise.race([new Promise((r) => setTimeout(r, opts.intervalMs ?? 1000)), quitting]);
    }
  } finally {
    input.off('data', onKey);
    if (input.isTTY) input.setRawMode(false);
    input.pause();
    if (tty) out.write('\x1b[?25h\x1b[?1049l');
  }
}
