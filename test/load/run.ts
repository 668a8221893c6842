/**
 * Load on a blockd daemon (a real process, so its RSS is what a user sees):
 * - `connections` NBD clients at once over a Unix socket, then again over TCP:
 *   RSS with all of them idle, then while each does `requests` pipelined 4 KiB
 *   reads and writes (4 in flight);
 * - a flood: `floodClients` clients pipelining 64 KiB reads that never read a
 *   reply; RSS must stay bounded (per-connection in-flight caps and write
 *   backpressure) and a fresh client must still be served;
 * - slowloris: clients that send their handshake a byte a second and clients
 *   that stall mid-request; the daemon keeps serving others and drops the
 *   slow handshakes at handshake-max-seconds;
 * - `qmpClients` QMP clients at once, each negotiating and running commands;
 *   one more than the monitor's limit is refused.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RawNbd, type Endpoint } from './nbd-raw.ts';

const BLOCKD = join(dirname(fileURLToPath(import.meta.url)), '../../bin/blockd');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MiB = 1 << 20;

export interface LoadOptions {
  dir: string;
  connections: number;
  requests: number;
  floodClients: number;
  slowClients: number;
  qmpClients: number;
  log?: (s: string) => void;
}

export interface LoadFigures {
  [transport: string]: number | string;
}

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

function freePort(): Promise<number> {
  return new Promise((r) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => r(p)); }); });
}

async function startBlockd(o: LoadOptions, addr: string, qmpSock: string, ready: () => Promise<boolean>): Promise<ChildProcess> {
  const proc = spawn(BLOCKD, [
    '--blockdev', `driver=file,node-name=f0,filename=${join(o.dir, 'disk.raw')}`,
    '--nbd-server', `${addr},max-connections=${o.connections + o.floodClients + o.slowClients * 2 + 50}`,
    '--export', 'type=nbd,id=e0,node-name=f0,name=d0,writable=on',
    '--chardev', `socket,id=m0,path=${qmpSock},server=on,wait=off`,
    '--monitor', 'chardev=m0',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const deadline = Date.now() + 30_000;
  while (!(existsSync(qmpSock) && await ready())) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`blockd did not come up: ${err}`);
    await sleep(50);
  }
  return proc;
}

async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

/** Opens `n` negotiated connections, a batch at a time. */
async function openMany(ep: Endpoint, n: number): Promise<{ conns: RawNbd[]; failed: number }> {
  const conns: RawNbd[] = [];
  let failed = 0;
  for (let i = 0; i < n; i += 100) {
    const batch = Array.from({ length: Math.min(100, n - i) }, () => new RawNbd(ep));
    const res = await Promise.allSettled(batch.map((c) => c.negotiate('d0')));
    res.forEach((r, k) => { if (r.status === 'fulfilled') conns.push(batch[k]!); else { failed++; batch[k]!.close(); } });
  }
  return { conns, failed };
}

/** `requests` 4 KiB reads/writes per connection, 4 in flight each; returns [served, errors]. */
async function busy(conns: RawNbd[], requests: number, sample: () => void): Promise<[number, number]> {
  let served = 0;
  let errors = 0;
  const timer = setInterval(sample, 100);
  await Promise.all(conns.map(async (c, ci) => {
    const blocks = Math.floor(c.size / 4096);
    let next = 0;
    const lane = async () => {
      while (next < requests) {
        const i = next++;
        const off = ((ci * 7919 + i * 104729) % blocks) * 4096;
        const err = i % 2 ? await c.request(1, off, 4096, Buffer.alloc(4096, ci & 0xff)) : await c.request(0, off, 4096);
        if (err === 0) served++; else errors++;
      }
    };
    await Promise.all([lane(), lane(), lane(), lane()]);
  }));
  clearInterval(timer);
  sample();
  return [served, errors];
}

/** A fresh client's read latency (ms), or -1 if it was not served within 5 s. */
async function probe(ep: Endpoint): Promise<number> {
  const c = new RawNbd(ep);
  try {
    const t0 = Date.now();
    await c.negotiate('d0', 5000);
    const err = await Promise.race([c.request(0, 0, 4096), sleep(5000).then(() => -2)]);
    return err === 0 ? Date.now() - t0 : -1;
  } catch {
    return -1;
  } finally {
    c.close();
  }
}

async function qmpClient(path: string, cmds: string[]): Promise<{ ok: number; errors: number; refused: boolean }> {
  return new Promise((resolve) => {
    const s = connect(path);
    let buf = '';
    let ok = 0;
    let errors = 0;
    let greeted = false;
    const queue = ['qmp_capabilities', ...cmds];
    const finish = (refused: boolean) => { s.destroy(); resolve({ ok, errors, refused }); };
    s.on('data', (d) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const m = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        if ('QMP' in m) greeted = true;
        else if ('return' in m) ok++;
        else if ('error' in m) errors++;
        else continue;
        const next = queue.shift();
        if (next) s.write(JSON.stringify({ execute: next }) + '\n'); else finish(false);
      }
    });
    s.on('close', () => finish(!greeted));
    s.on('error', () => finish(!greeted));
  });
}

export async function runLoad(o: LoadOptions): Promise<Record<string, number>> {
  const f: Record<string, number> = {};
  const log = o.log ?? (() => undefined);
  execFileSync('truncate', ['-s', '256M', join(o.dir, 'disk.raw')]);
  for (const transport of ['unix', 'tcp'] as const) {
    const qmpSock = join(o.dir, `qmp-${transport}.sock`);
    let ep: Endpoint;
    let addr: string;
    if (transport === 'unix') { const path = join(o.dir, 'nbd.sock'); ep = { path }; addr = `addr.type=unix,addr.path=${path}`; }
    else { const port = await freePort(); ep = { host: '127.0.0.1', port }; addr = `addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`; }
    const canConnect = () => new Promise<boolean>((r) => { const s = 'path' in ep ? connect(ep.path) : connect(ep.port, ep.host); s.once('connect', () => { s.destroy(); r(true); }); s.once('error', () => r(false)); });
    const proc = await startBlockd(o, addr, qmpSock, canConnect);
    const pid = proc.pid!;
    try {
      await sleep(500);
      const base = rssOf(pid);
      f[`${transport} rss base MiB`] = base / MiB;
      const { conns, failed } = await openMany(ep, o.connections);
      await sleep(500);
      const idle = rssOf(pid);
      f[`${transport} connections held`] = conns.length;
      f[`${transport} connections failed`] = failed;
      f[`${transport} rss idle KiB/conn`] = (idle - base) / 1024 / Math.max(1, conns.length);
      log(`${transport}: ${conns.length} connections held, RSS ${(idle / MiB).toFixed(0)} MiB`);
      let peak = 0;
      const [served, errors] = await busy(conns, o.requests, () => { peak = Math.max(peak, rssOf(pid)); });
      f[`${transport} requests served`] = served;
      f[`${transport} request errors`] = errors;
      f[`${transport} rss busy KiB/conn`] = (peak - base) / 1024 / Math.max(1, conns.length);
      f[`${transport} connections lost`] = conns.filter((c) => c.closed).length;
      log(`${transport}: ${served} requests served, ${errors} errors, peak RSS ${(peak / MiB).toFixed(0)} MiB`);
      for (const c of conns) c.close();

      if (transport === 'unix') {
        // Flood: pipelined 64 KiB reads, replies never read.
        await sleep(500);
        const before = rssOf(pid);
        const flood = (await openMany(ep, o.floodClients)).conns;
        for (const c of flood) c.socket.pause();
        const h = Buffer.alloc(28);
        let sent = 0;
        for (let round = 0; round < 40; round++) {
          for (const c of flood) {
            const batch: Buffer[] = [];
            for (let k = 0; k < 64; k++) {
              h.writeUInt32BE(0x25609513, 0); h.writeUInt16BE(0, 6); h.writeBigUInt64BE(BigInt(round * 64 + k + 1), 8);
              h.writeBigUInt64BE(BigInt(((round * 64 + k) % 4000) * 65536), 16); h.writeUInt32BE(65536, 24);
              batch.push(Buffer.from(h));
            }
            c.socket.write(Buffer.concat(batch));
            sent += 64;
          }
          await sleep(50);
        }
        let floodPeak = 0;
        for (let k = 0; k < 20; k++) { floodPeak = Math.max(floodPeak, rssOf(pid)); await sleep(100); }
        f['flood requests sent'] = sent;
        f['flood clients'] = flood.length;
        f['flood rss growth MiB'] = (floodPeak - before) / MiB;
        f['flood rss MiB/client'] = (floodPeak - before) / MiB / Math.max(1, flood.length);
        f['flood probe ms'] = await probe(ep);
        log(`flood: ${flood.length} clients, ${sent} requests unread, RSS +${((floodPeak - before) / MiB).toFixed(0)} MiB, probe ${f['flood probe ms']} ms`);
        for (const c of flood) c.close();

        // Slowloris: handshakes a byte a second; stalled mid-request writers.
        const slowHs = Array.from({ length: o.slowClients }, () => new RawNbd(ep));
        const stalled = (await openMany(ep, o.slowClients)).conns;
        for (const c of stalled) c.socket.write(Buffer.from([0x25, 0x60, 0x95])); // a request header's first bytes, never the rest
        const flags = Buffer.from([0, 0, 0, 3]);
        const probes: number[] = [];
        for (let s = 0; s < 13; s++) {
          for (const c of slowHs) if (!c.closed && s < 4) c.socket.write(flags.subarray(s, s + 1));
          if (s % 3 === 0) probes.push(await probe(ep));
          await sleep(1000);
        }
        f['slowloris handshakes'] = slowHs.length;
        f['slowloris handshakes dropped'] = slowHs.filter((c) => c.closed).length;
        f['slowloris stalled requests'] = stalled.length;
        f['slowloris worst probe ms'] = probes.some((p) => p < 0) ? -1 : Math.max(...probes);
        log(`slowloris: ${f['slowloris handshakes dropped']}/${slowHs.length} slow handshakes dropped, worst probe ${f['slowloris worst probe ms']} ms`);
        for (const c of [...slowHs, ...stalled]) c.close();

        // QMP: many clients at once, then one past the limit (128 per monitor).
        const cmds = ['query-version', 'query-block-exports', 'query-named-block-nodes', 'query-jobs', 'query-block'];
        const rs = await Promise.all(Array.from({ length: o.qmpClients }, () => qmpClient(qmpSock, cmds)));
        f['qmp clients'] = o.qmpClients;
        f['qmp replies'] = rs.reduce((a, r) => a + r.ok, 0);
        f['qmp errors'] = rs.reduce((a, r) => a + r.errors, 0);
        f['qmp refused'] = rs.filter((r) => r.refused).length;
        const holders = Array.from({ length: 128 }, () => connect(qmpSock));
        await sleep(1000);
        const extra = await qmpClient(qmpSock, ['query-version']);
        f['qmp client past the limit refused'] = extra.refused ? 1 : 0;
        for (const s of holders) s.destroy();
        log(`qmp: ${f['qmp replies']} replies to ${o.qmpClients} clients, ${f['qmp errors']} errors; the 129th client ${extra.refused ? 'refused' : 'served'}`);
      }
      f[`${transport} rss end MiB`] = rssOf(pid) / MiB;
    } finally {
      await stop(proc);
    }
  }
  return f;
}
