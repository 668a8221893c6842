/**
 * The /metrics endpoint (--metrics, beyond qsd): scraped while fio (nbd
 * engine) runs against an export, every scrape parses as strict Prometheus
 * text, every counter only grows, and at the end the export's and the
 * node's counters equal fio's totals (within 1 %); failed and refused
 * requests are counted as errors and invalid requests; a running job shows
 * its progress and rate, a throttle group the requests it holds back, and
 * the process its memory and event-loop delay. --metrics' refusals, and
 * "metrics" in a config file on TCP.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { BLOCKD, startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { getPort } from '../helpers/port.ts';
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
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'bad.qcow2'), '64M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write 0 64k', join(dir, 'bad.qcow2')]);
    d = await qmpDaemon('blockd', dir, [
      '--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'disk.raw')}`,
      '--blockdev', 'driver=raw,node-name=d0,file=f0',
      '--object', 'throttle-group,id=tg0,limits.iops-read=2',
      '--blockdev', 'driver=null-co,node-name=slow0,size=67108864',
      '--blockdev', 'driver=throttle,node-name=thr0,throttle-group=tg0,file=slow0',
      '--blockdev', 'driver=null-co,node-name=src0,size=67108864',
      '--blockdev', 'driver=null-co,node-name=tgt0,size=67108864',
      // qcow2 raises read_aio on its file as it reads a data cluster: from then on blkdebug fails reads with EIO.
      '--blockdev', `driver=file,node-name=f2,filename=${join(dir, 'bad.qcow2')}`,
      '--blockdev', 'driver=blkdebug,node-name=bd2,image=f2,inject-error.0.event=read_aio,inject-error.0.errno=5',
      '--blockdev', 'driver=qcow2,node-name=bad0,file=bd2',
      '--nbd-server', `addr.type=unix,addr.path=${nsock}`,
      '--export', 'type=nbd,id=e0,node-name=d0,writable=on',
      '--export', 'type=nbd,id=e1,node-name=thr0',
      '--export', 'type=nbd,id=e2,node-name=bad0',
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

    // Rate-limited (2000 IOPS per direction, about 1.5 s) so that even a fast machine is scraped several times meanwhile.
    const job = fio(`nbd+unix:///d0?socket=${nsock}`, ['--rw=randrw', '--bs=4k', '--iodepth=8', '--size=64m', `--io_size=${24 * MiB}`, '--rate_iops=2000']);
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
    expect(scrapes.length).toBeGreaterThanOrEqual(5);
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

  it('failed and refused requests: errors and invalid requests of the export, failed and invalid operations of the node', async () => {
    const out = run(SYSTEM_PYTHON, ['-c', `import nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.set_export_name('bad0')
h.connect_unix(${JSON.stringify(nsock)})
for f in (lambda: h.pread(4096, 0), lambda: h.pread(4096, 64 * 1024 * 1024), lambda: h.pread(4096, 0)):
    try:
        f()
        print('ok')
    except nbd.Error as e:
        print('error', e.errno)
h.shutdown()`]);
    expect(out.trim().split('\n')).toEqual(['error EIO', 'error EINVAL', 'error EIO']);
    const f = await scrape();
    const v = (fam: string, labels: Record<string, string>) => sampleValue(f, fam, fam, labels);
    expect(v('blockd_export_errors_total', { export: 'e2', op: 'read' })).toBe(2);
    expect(v('blockd_export_requests_total', { export: 'e2', op: 'read' })).toBe(2);
    expect(v('blockd_export_invalid_requests_total', { export: 'e2', op: 'read' })).toBe(1);
    expect(v('blockd_node_failed_operations_total', { node: 'bad0', op: 'read' })).toBe(2);
    expect(v('blockd_node_invalid_operations_total', { node: 'bad0', op: 'read' })).toBe(1);
    expect(v('blockd_node_operations_total', { node: 'bad0', op: 'read' })).toBe(0);
    expect(v('blockd_node_failed_operations_total', { node: 'bd2', op: 'read' })).toBe(2);
    // Failed requests are timed too (account_failed).
    const count = f.get('blockd_node_request_duration_seconds')!.samples.find((s) => s.name.endsWith('_count') && s.labels.node === 'bad0' && s.labels.op === 'read');
    expect(count?.value).toBe(2);
  });

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

describe('--metrics options', () => {
  it('refuses what it cannot serve, with the option in the message', () => {
    const cases: [string[], string][] = [
      [['--metrics', 'addr.type=vsock,addr.cid=1,addr.port=1'], "blockd: --metrics addr.type=vsock,addr.cid=1,addr.port=1: Parameter 'type' does not accept value 'vsock'"],
      // Members of qsd's InetSocketAddress the endpoint would not act on are refused, not ignored.
      [['--metrics', 'addr.type=inet,addr.host=127.0.0.1,addr.port=0,addr.ipv6=on'], "blockd: --metrics addr.type=inet,addr.host=127.0.0.1,addr.port=0,addr.ipv6=on: Parameter 'addr.ipv6' is unexpected"],
      [['--metrics', 'addr.type=inet,addr.host=127.0.0.1,addr.port=http'], 'blockd: --metrics addr.type=inet,addr.host=127.0.0.1,addr.port=http: address resolution failed for 127.0.0.1:http'],
      [['--metrics', 'addr.type=unix'], "blockd: --metrics addr.type=unix: Parameter 'addr.path' is missing"],
      [['--metrics', 'addr.type=unix,addr.path=/nonexistent/dir/m.sock'], 'blockd: --metrics addr.type=unix,addr.path=/nonexistent/dir/m.sock:'],
      [['--metrics', 'addr.type=unix,addr.path=a', '--metrics', 'addr.type=unix,addr.path=b'], 'blockd: --metrics may be given only once'],
    ];
    for (const [args, text] of cases) {
      const r = spawnSync(BLOCKD, ['--blockdev', 'driver=null-co,node-name=n0', ...args], { encoding: 'utf8', timeout: 30_000 });
      expect([args, r.status, r.stderr.split('\n')[0].slice(0, text.length)]).toEqual([args, 1, text]);
    }
  });

  it('"metrics" in a config file, on TCP', async () => {
    const dir = tempDir('blockd-metrics-cfg-');
    const port = await getPort();
    const cfg = join(dir, 'blockd.json');
    const qmp = join(dir, 'qmp.sock');
    writeFileSync(cfg, JSON.stringify({
      blockdev: ['driver=null-co,node-name=n0'],
      chardev: [`socket,id=m0,path=${qmp},server=on,wait=off`], monitor: ['chardev=m0'],
      metrics: { addr: { type: 'inet', host: '127.0.0.1', port: String(port) } },
    }));
    const d = await startDaemon('blockd', ['--config', cfg], qmp);
    try {
      const body = await new Promise<string>((resolve, reject) => {
        request({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
          let b = '';
          res.setEncoding('utf8');
          res.on('data', (x: string) => (b += x));
          res.on('end', () => resolve(b));
        }).on('error', reject).end();
      });
      expect(sampleValue(parsePrometheusText(body), 'blockd_node_info', 'blockd_node_info', { node: 'n0', driver: 'null-co' })).toBe(1);
    } finally {
      await d.stop();
    }
  });
});
