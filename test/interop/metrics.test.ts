/**
 * The /metrics endpoint (--metrics, beyond qsd): scraped while fio (nbd
 * engine) runs against an export, every scrape parses as strict Prometheus
 * text, every counter only grows, and at the end the export's and the
 * node's counters equal fio's totals (within 1 %); a running job shows its
 * progress and rate, a throttle group the requests it holds back, and the
 * process its memory and event-loop delay.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { requireTool, run, SYSTEM_PYTHON } from '../helpers/tools.ts';
import { httpGetUnix, parsePrometheusText, sampleValue, type PromFamily } from '../helpers/prometheus.ts';

const MiB = 1024 * 1024;

interface FioTotals { read: { io_bytes: number; total_ios: number }; write: { io_bytes: number; total_ios: number } }

function fio(uri: string, args: string[]): Promise<FioTotals> {
  const cmd = requireTool('fio');
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, ['--name=m', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`fio failed (${code}): ${err}`));
      try { resolve(JSON.parse(out.slice(out.indexOf('{'))).jobs[0] as FioTotals); } catch (e) { reject(e as Error); }
    });
  });
}

/** Every counter series of a scrape, by series key. */
function counters(f: Map<string, PromFamily>): Map<string, number> {
  const out = new Map<string, number>();
  for (const fam of f.values()) {
    if (fam.type !== 'counter' && fam.type !== 'histogram') continue;
    for (const s of fam.samples) {
      if (fam.type === 'histogram' && s.name.endsWith('_sum')) continue;
      out.set(`${s.name}${JSON.stringify(Object.entries(s.labels).sort())}`, s.value);
    }
  }
  return out;
}

describe('/metrics during fio, a job and a throttled client', () => {
  const dir = tempDir('blockd-metrics-');
  const msock = join(dir, 'metrics.sock');
  const nsock = join(dir, 'nbd.sock');
  let d: { proc: Running; qmp: QmpClient };
  const scrape = async () => {
    const r = await httpGetUnix(msock, '/metrics');
    expect(r.status).toBe(200);
    expect(r.type).toBe('text/plain; version=0.0.4; charset=utf-8');
    return parsePrometheusText(r.body);
  };

  beforeAll(async () => {
    run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'disk.raw'), '64M']);
    d = await qmpDaemon('blockd', dir, [
      '--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'disk.raw')}`,
      '--blockdev', 'driver=raw,node-name=d0,file=f0',
      '--object', 'throttle-group,id=tg0,limits.iops-read=2',
      '--blockdev', 'driver=null-co,node-name=slow0,size=67108864',
      '--blockdev', 'driver=throttle,node-name=thr0,throttle-group=tg0,file=slow0',
      '--blockdev', 'driver=null-co,node-name=src0,size=67108864',
      '--blockdev', 'driver=null-co,node-name=tgt0,size=67108864',
      '--nbd-server', `addr.type=unix,addr.path=${nsock}`,
      '--export', 'type=nbd,id=e0,node-name=d0,writable=on',
      '--export', 'type=nbd,id=e1,node-name=thr0',
      '--metrics', `addr.type=unix,addr.path=${msock}`,
    ]);
  }, 60_000);
  afterAll(async () => {
    d?.qmp.close();
    await d?.proc.stop();
  });

  it('answers only GET /metrics', async () => {
    expect((await httpGetUnix(msock, '/')).status).toBe(404);
    expect((await httpGetUnix(msock, '/metrics', 'POST')).status).toBe(405);
    const f = await scrape();
    expect(f.get('process_resident_memory_bytes')?.samples[0].value).toBeGreaterThan(10 * MiB);
    expect(f.get('nodejs_eventloop_lag_seconds')?.type).toBe('gauge');
    expect(sampleValue(f, 'blockd_node_info', 'blockd_node_info', { node: 'd0', driver: 'raw' })).toBe(1);
    expect(sampleValue(f, 'blockd_export_info', 'blockd_export_info', { export: 'e0', type: 'nbd', node: 'd0' })).toBe(1);
  });

  it('scraped during a fio run: strict text, monotonic counters, totals equal to fio\'s', async () => {
    const before = await scrape();
    const base = (fam: string, labels: Record<string, string>) => sampleValue(before, fam, fam, labels) ?? 0;
    const startBytes = { read: base('blockd_export_bytes_total', { export: 'e0', op: 'read' }), write: base('blockd_export_bytes_total', { export: 'e0', op: 'write' }) };
    const startOps = { read: base('blockd_export_requests_total', { export: 'e0', op: 'read' }), write: base('blockd_export_requests_total', { export: 'e0', op: 'write' }) };
    const startNode = { read: base('blockd_node_operations_total', { node: 'd0', op: 'read' }), write: base('blockd_node_operations_total', { node: 'd0', op: 'write' }) };
    const startConns = base('blockd_nbd_server_connections_total', { server: '0', listen: `unix ${nsock}` });

    const job = fio(`nbd+unix:///d0?socket=${nsock}`, ['--rw=randrw', '--bs=4k', '--iodepth=8', '--size=64m', `--io_size=${24 * MiB}`]);
    let done = false;
    void job.finally(() => { done = true; });
    const scrapes: Map<string, PromFamily>[] = [];
    let sawClient = false;
    while (!done) {
      const f = await scrape();
      scrapes.push(f);
      if ((sampleValue(f, 'blockd_export_clients', 'blockd_export_clients', { export: 'e0' }) ?? 0) > 0) sawClient = true;
      await new Promise((r) => setTimeout(r, 50));
    }
    const totals = await job;
    scrapes.push(await scrape());
    expect(scrapes.length).toBeGreaterThanOrEqual(3);
    expect(sawClient).toBe(true);

    let prev = counters(before);
    for (const f of scrapes) {
      const now = counters(f);
      for (const [key, v] of prev) {
        if (now.has(key)) expect([key, now.get(key)! >= v]).toEqual([key, true]);
      }
      prev = now;
    }

    const end = scrapes[scrapes.length - 1];
    const val = (fam: string, labels: Record<string, string>) => sampleValue(end, fam, fam, labels) ?? NaN;
    const within1pct = (got: number, want: number) => expect(Math.abs(got - want)).toBeLessThanOrEqual(want * 0.01);
    expect(totals.read.io_bytes).toBeGreaterThan(0);
    expect(totals.write.io_bytes).toBeGreaterThan(0);
    within1pct(val('blockd_export_bytes_total', { export: 'e0', op: 'read' }) - startBytes.read, totals.read.io_bytes);
    within1pct(val('blockd_export_bytes_total', { export: 'e0', op: 'write' }) - startBytes.write, totals.write.io_bytes);
    within1pct(val('blockd_export_requests_total', { export: 'e0', op: 'read' }) - startOps.read, totals.read.total_ios);
    within1pct(val('blockd_export_requests_total', { export: 'e0', op: 'write' }) - startOps.write, totals.write.total_ios);
    within1pct(val('blockd_node_operations_total', { node: 'd0', op: 'read' }) - startNode.read, totals.read.total_ios);
    within1pct(val('blockd_node_operations_total', { node: 'd0', op: 'write' }) - startNode.write, totals.write.total_ios);
    // Each request is in its latency histogram once; none failed.
    const hist = end.get('blockd_export_request_duration_seconds')!;
    const count = hist.samples.find((s) => s.name.endsWith('_count') && s.labels.export === 'e0' && s.labels.op === 'read')!.value;
    expect(count).toBe(val('blockd_export_requests_total', { export: 'e0', op: 'read' }));
    expect(val('blockd_export_errors_total', { export: 'e0', op: 'write' })).toBe(0);
    expect(val('blockd_node_failed_operations_total', { node: 'd0', op: 'read' })).toBe(0);
    expect(val('blockd_nbd_server_connections_total', { server: '0', listen: `unix ${nsock}` }) - startConns).toBeGreaterThanOrEqual(1);
    expect(val('blockd_node_write_highest_offset_bytes', { node: 'd0' })).toBeGreaterThan(0);
  }, 120_000);

  it('a running job shows its progress and rate; a throttle group its queued requests', async () => {
    await d.qmp.execute('blockdev-mirror', { 'job-id': 'm0', device: 'src0', target: 'tgt0', sync: 'full', speed: 4 * MiB });
    // A client with 6 reads in flight against iops-read=2: most wait in the group.
    const reader = spawn(SYSTEM_PYTHON, ['-c', `import nbd, time
h = nbd.NBD()
h.set_export_name('thr0')
h.connect_unix(${JSON.stringify(nsock)})
bufs = [nbd.Buffer(4096) for i in range(6)]
for i, b in enumerate(bufs):
    h.aio_pread(b, i * 4096)
print('sent', flush=True)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.shutdown()`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    reader.stderr.on('data', (b) => (err += b));
    const exited = new Promise<number | null>((r) => reader.once('exit', r));
    const sent = await Promise.race([new Promise<boolean>((r) => reader.stdout.once('data', () => r(true))), exited.then(() => false)]);
    expect([sent, err]).toEqual([true, '']);
    await new Promise((r) => setTimeout(r, 300));
    const first = await scrape();
    await new Promise((r) => setTimeout(r, 1000));
    const second = await scrape();
    const job = { job: 'm0', type: 'mirror' };
    expect(sampleValue(second, 'blockd_job_info', 'blockd_job_info', { ...job, status: 'running' })).toBe(1);
    const p1 = sampleValue(first, 'blockd_job_progress_current', 'blockd_job_progress_current', job)!;
    const p2 = sampleValue(second, 'blockd_job_progress_current', 'blockd_job_progress_current', job)!;
    expect(p2).toBeGreaterThan(p1);
    expect(sampleValue(second, 'blockd_job_progress_total', 'blockd_job_progress_total', job)).toBe(64 * MiB);
    const ratio = sampleValue(second, 'blockd_job_progress_ratio', 'blockd_job_progress_ratio', job)!;
    expect(ratio).toBeGreaterThan(0);
    expect(ratio).toBeLessThan(1);
    // 4 MiB/s, measured over about a second between the scrapes.
    const rate = sampleValue(second, 'blockd_job_rate_per_second', 'blockd_job_rate_per_second', job)!;
    expect(rate).toBeGreaterThan(1 * MiB);
    expect(rate).toBeLessThan(12 * MiB);

    const queued = sampleValue(first, 'blockd_throttle_group_queued_requests', 'blockd_throttle_group_queued_requests', { group: 'tg0', direction: 'read' })!;
    expect(queued).toBeGreaterThanOrEqual(2);
    expect(sampleValue(first, 'blockd_export_inflight_requests', 'blockd_export_inflight_requests', { export: 'e1' })).toBeGreaterThanOrEqual(queued);
    expect(sampleValue(first, 'blockd_throttle_group_members', 'blockd_throttle_group_members', { group: 'tg0' })).toBe(1);
    await d.qmp.execute('block-job-cancel', { device: 'm0', force: true });
    expect(await exited).toBe(0);
    const last = await scrape();
    expect(sampleValue(last, 'blockd_throttle_group_queued_requests', 'blockd_throttle_group_queued_requests', { group: 'tg0', direction: 'read' })).toBe(0);
    expect(sampleValue(last, 'blockd_export_requests_total', 'blockd_export_requests_total', { export: 'e1', op: 'read' })).toBe(6);
  }, 60_000);
});
