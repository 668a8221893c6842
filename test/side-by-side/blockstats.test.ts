/**
 * query-blockstats, block-set-write-threshold (BLOCK_WRITE_THRESHOLD) and
 * query-block side by side with qemu-storage-daemon 7.2: after the same NBD
 * I/O, what qsd reports at node level (the nodes and their order, parents,
 * wr_highest_offset, the file driver's discard counters, error counters)
 * equals blockd's; the thresholds fire at the same writes, once, with the
 * same amounts; and blockd's own operation and byte counters on the
 * exported node are exactly the client's I/O (qsd leaves them at 0).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon, type Ev } from '../helpers/live.ts';
import { nbdsh, run } from '../helpers/tools.ts';
import { BOTH, type Who } from '../helpers/pair.ts';

type Stats = { 'node-name'?: string; stats: Record<string, unknown>; parent?: Stats; 'driver-specific'?: Record<string, unknown> };

/** Counters qsd 7.2 does not keep at node level (blockd does). */
const COUNTED = ['rd_bytes', 'wr_bytes', 'unmap_bytes', 'rd_operations', 'wr_operations', 'flush_operations', 'unmap_operations',
  'rd_total_time_ns', 'wr_total_time_ns', 'flush_total_time_ns', 'unmap_total_time_ns',
  'invalid_rd_operations', 'invalid_wr_operations', 'invalid_flush_operations', 'invalid_unmap_operations'];
/** What qsd would show of blockd's statistics: its own counters at 0, no idle time or histograms, accounting flags off. */
function qsdView(s: Stats): Stats {
  const stats = { ...s.stats };
  for (const k of COUNTED) stats[k] = 0;
  for (const k of ['idle_time_ns', 'rd_latency_histogram', 'wr_latency_histogram', 'flush_latency_histogram']) delete stats[k];
  stats.account_invalid = false;
  stats.account_failed = false;
  return { ...s, stats, ...(s.parent ? { parent: qsdView(s.parent) } : {}) };
}

type Histogram = { boundaries: number[]; bins: number[] };
const binsTotal = (h: unknown) => (h as Histogram).bins.reduce((a, b) => a + b, 0);

describe('block statistics and write thresholds, side by side with qemu-storage-daemon', () => {
  const dir = tempDir('blockd-stats-');
  const d = {} as Record<Who, { proc: Running; qmp: QmpClient; events: Ev[]; uri: string }>;

  beforeAll(async () => {
    for (const who of BOTH) {
      const sub = join(dir, who);
      run('mkdir', ['-p', sub]);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(sub, 'd.qcow2'), '16M']);
      const r = await qmpDaemon(who, sub, ['--blockdev', `driver=file,node-name=f0,filename=${join(sub, 'd.qcow2')},discard=unmap`,
        '--blockdev', 'driver=qcow2,node-name=d0,file=f0,discard=unmap', '--nbd-server', `addr.type=unix,addr.path=${join(sub, 'nbd.sock')}`,
        '--export', 'type=nbd,id=e0,node-name=d0,writable=on']);
      d[who] = { ...r, uri: `nbd+unix:///d0?socket=${join(sub, 'nbd.sock')}` };
    }
  }, 60_000);
  afterAll(async () => {
    for (const x of Object.values(d)) { x.qmp.close(); await x.proc.stop(); }
  });

  it('the same refusals, an empty query-block, and the thresholds shown in query-named-block-nodes', async () => {
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const { qmp } = d[who];
      seen[who].push(await qmp.execute('block-set-write-threshold', { 'node-name': 'nope', 'write-threshold': 1 }).catch((e: Error) => e.message));
      seen[who].push(await qmp.execute('query-block'));
      seen[who].push(await qmp.execute('query-blockstats'));
      await qmp.execute('block-set-write-threshold', { 'node-name': 'd0', 'write-threshold': 100000 });
      await qmp.execute('block-set-write-threshold', { 'node-name': 'f0', 'write-threshold': 6 * 65536 });
      const nodes = (await qmp.execute('query-named-block-nodes')) as { 'node-name': string; write_threshold: number }[];
      seen[who].push(nodes.map((n) => [n['node-name'], n.write_threshold]));
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd[3]).toEqual([['d0', 100000], ['f0', 393216]]);
  });

  it('after the same I/O: the node-level statistics qsd keeps, and the threshold events, are equal', async () => {
    const stats: Record<Who, Stats[]> = { qsd: [], blockd: [] };
    const thresholds: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const { qmp, uri, events } = d[who];
      // Allocating writes cover whole clusters: into a new cluster qsd zeroes what a partial write leaves out
      // (the file's highest offset is the cluster's end), blockd does not write it at all (README).
      run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 1 0 64k', '-c', 'read 0 4k', '-c', 'write -P 2 192k 64k', '-c', 'write -z 1M 64k',
        '-c', 'discard 0 64k', '-c', 'write -P 3 2M 64k', '-c', 'flush']);
      // Events come over the monitor socket; give the last one a moment.
      await new Promise((r) => setTimeout(r, 300));
      thresholds[who] = events.filter((e) => e.event === 'BLOCK_WRITE_THRESHOLD').map((e) => e.data);
      stats[who] = (await qmp.execute('query-blockstats', { 'query-nodes': true })) as Stats[];
      const nodes = (await qmp.execute('query-named-block-nodes')) as { 'node-name': string; write_threshold: number }[];
      expect(nodes.map((n) => n.write_threshold)).toEqual([0, 0]);
    }
    expect(thresholds.blockd).toEqual(thresholds.qsd);
    expect(thresholds.qsd.map((t) => (t as Record<string, unknown>)['node-name']).sort()).toEqual(['d0', 'f0']);
    expect(stats.blockd.map(qsdView)).toEqual(stats.qsd);
    expect(stats.qsd.find((s) => s['node-name'] === 'f0')!['driver-specific']).toMatchObject({ driver: 'file' });

    // blockd's counters on the exported node: the client's requests, write-zeroes as writes, trims as unmaps.
    const d0 = stats.blockd.find((s) => s['node-name'] === 'd0')!.stats;
    expect(d0).toMatchObject({
      rd_operations: 1, rd_bytes: 4096, wr_operations: 4, wr_bytes: 4 * 65536,
      unmap_operations: 1, unmap_bytes: 65536, failed_wr_operations: 0,
    });
    expect(d0.flush_operations).toBeGreaterThanOrEqual(1);
    // Times, idle time and histograms (beyond qsd): each timed request is in its histogram, and took some time.
    expect(d0).toMatchObject({ account_invalid: true, account_failed: true, timed_stats: [], invalid_rd_operations: 0 });
    for (const k of ['rd', 'wr', 'flush', 'unmap']) expect(d0[`${k}_total_time_ns`]).toBeGreaterThan(0);
    expect(binsTotal(d0.rd_latency_histogram)).toBe(1);
    expect(binsTotal(d0.wr_latency_histogram)).toBe(4);
    expect(binsTotal(d0.flush_latency_histogram)).toBe(d0.flush_operations);
    const h = d0.rd_latency_histogram as Histogram;
    expect(h.bins.length).toBe(h.boundaries.length + 1);
    expect(h.boundaries.slice(0, 3)).toEqual([1000, 2000, 4000]);
    expect(d0.idle_time_ns).toBeGreaterThan(0);
    expect(d0.idle_time_ns).toBeLessThan(60e9);
  });

  it('requests an NBD client sends out of range count as invalid on the exported node (qsd: no device, no count)', async () => {
    const { qmp, uri } = d.blockd;
    const before = ((await qmp.execute('query-blockstats', { 'query-nodes': true })) as Stats[]).find((s) => s['node-name'] === 'd0')!.stats;
    // libnbd checks ranges itself unless told not to (strict mode off).
    const sock = uri.split('socket=')[1];
    nbdsh(`h = nbd.NBD()
h.set_strict_mode(0)
h.set_export_name('d0')
h.connect_unix(${JSON.stringify(sock)})
for f in (lambda: h.pread(4096, 16 * 1024 * 1024), lambda: h.pwrite(b'x' * 4096, 16 * 1024 * 1024), lambda: h.trim(4096, 16 * 1024 * 1024)):
    try:
        f()
        raise SystemExit('no error')
    except nbd.Error:
        pass
h.shutdown()`);
    const after = ((await qmp.execute('query-blockstats', { 'query-nodes': true })) as Stats[]).find((s) => s['node-name'] === 'd0')!.stats;
    expect([after.invalid_rd_operations, after.invalid_wr_operations, after.invalid_unmap_operations].map((v, i) =>
      (v as number) - ([before.invalid_rd_operations, before.invalid_wr_operations, before.invalid_unmap_operations][i] as number))).toEqual([1, 1, 1]);
    expect(after.rd_operations).toBe(before.rd_operations);
  });
});
