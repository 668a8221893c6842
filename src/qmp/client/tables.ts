/** Readable tables for the query commands; anything else is shown as indented JSON. */

type Row = Record<string, unknown>;

function table(rows: Row[], cols: [string, (r: Row) => unknown][]): string {
  if (rows.length === 0) return '(none)';
  const cells = rows.map((r) => cols.map(([, f]) => String(f(r) ?? '')));
  const widths = cols.map(([h], i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i])).join('  ').trimEnd();
  return [line(cols.map(([h]) => h.toUpperCase())), ...cells.map(line)].join('\n');
}

export function humanSize(n: unknown): string {
  if (typeof n !== 'number') return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

export function progress(cur: number, total: number, width = 30): string {
  const frac = total > 0 ? Math.min(1, cur / total) : 0;
  const full = Math.round(frac * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${(frac * 100).toFixed(1).padStart(5)}%`;
}

const FORMATTERS: Record<string, (ret: unknown) => string> = {
  'query-named-block-nodes': (ret) => table(ret as Row[], [
    ['node-name', (r) => r['node-name']],
    ['driver', (r) => r.drv],
    ['ro', (r) => (r.ro ? 'yes' : 'no')],
    ['size', (r) => humanSize((r.image as Row | undefined)?.['virtual-size'])],
    ['file', (r) => r.file],
  ]),
  'query-block-exports': (ret) => table(ret as Row[], [
    ['id', (r) => r.id], ['type', (r) => r.type], ['node-name', (r) => r['node-name']],
    ['shutting-down', (r) => (r['shutting-down'] ? 'yes' : 'no')],
  ]),
  'query-jobs': (ret) => table(ret as Row[], [
    ['id', (r) => r.id], ['type', (r) => r.type], ['status', (r) => r.status],
    ['progress', (r) => progress(r['current-progress'] as number, r['total-progress'] as number, 20)],
    ['error', (r) => r.error],
  ]),
  'query-block-jobs': (ret) => table(ret as Row[], [
    ['device', (r) => r.device], ['type', (r) => r.type], ['status', (r) => r.status],
    ['progress', (r) => progress(r.offset as number, r.len as number, 20)], ['speed', (r) => r.speed],
  ]),
  'query-commands': (ret) => (ret as Row[]).map((r) => r.name).sort().join('\n'),
};

const avgLatency = (ns: unknown, ops: unknown) => (typeof ns === 'number' && typeof ops === 'number' && ops > 0 ? `${(ns / ops / 1e3).toFixed(0)}us` : '-');

/** query-blockstats (query-nodes) as a table: one row per node. */
export function formatStats(ret: unknown): string {
  const rows = (ret as Row[]).map((r) => ({ name: r['node-name'], ...(r.stats as Row) }) as Row);
  return table(rows, [
    ['node', (r) => r.name],
    ['rd ops', (r) => r.rd_operations], ['rd bytes', (r) => humanSize(r.rd_bytes)], ['rd avg', (r) => avgLatency(r.rd_total_time_ns, r.rd_operations)],
    ['wr ops', (r) => r.wr_operations], ['wr bytes', (r) => humanSize(r.wr_bytes)], ['wr avg', (r) => avgLatency(r.wr_total_time_ns, r.wr_operations)],
    ['flush ops', (r) => r.flush_operations], ['unmap ops', (r) => r.unmap_operations],
    ['failed', (r) => (r.failed_rd_operations as number) + (r.failed_wr_operations as number) + (r.failed_flush_operations as number) + (r.failed_unmap_operations as number)],
    ['invalid', (r) => (r.invalid_rd_operations as number) + (r.invalid_wr_operations as number) + (r.invalid_flush_operations as number) + (r.invalid_unmap_operations as number)],
    ['idle', (r) => (typeof r.idle_time_ns === 'number' ? `${(r.idle_time_ns / 1e9).toFixed(1)}s` : '-')],
  ]);
}

export function formatReturn(command: string, ret: unknown): string {
  const f = FORMATTERS[command];
  if (f && Array.isArray(ret)) return f(ret);
  if (ret && typeof ret === 'object' && Object.keys(ret).length === 0) return '';
  return JSON.stringify(ret, null, 2);
}
