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
import { run } from '../helpers/tools.ts';
import { BOTH, type Who } from '../helpers/pair.ts';

type Stats = { 'node-name'?: string; stats: Record<string, unknown>; parent?: Stats; 'driver-specific'?: Record<string, unknown> };

/** Counters qsd 7.2 does not keep at node level (blockd does). */
const COUNTED = ['rd_bytes', 'wr_bytes', 'unmap_bytes', 'rd_operations', 'wr_operations', 'flush_operations', 'unmap_operations'];
function qsdView(s: Stats): Stats {
  const stats = { ...s.stats };
  for (const k of COUNTED) stats[k] = 0;
  return { ...s, stats, ...(s.parent ? { parent: qsdView(s.parent) } : {}) };
}

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
  });
});
