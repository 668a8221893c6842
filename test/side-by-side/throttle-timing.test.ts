/**
 * Throttled exports take as long as on qemu-storage-daemon 7.2: fio (nbd
 * engine) reads a fixed amount through a throttle filter on each daemon, and
 * the run times agree within ±10 % (and with what QEMU's algorithm predicts,
 * src/util/throttle simulating the same client). A few seconds per case:
 * bps-total, iops-read, a burst (iops-total-max with -max-length 2) and
 * iops-size.
 *
 * And a drain under a throttled client is not held by the throttle: with
 * a client's reads queued at iops-read=2 (seconds of queue), blockdev-snapshot
 * of the node under the filter and blockdev-del of a sibling in the same
 * group complete in well under a second on both daemons, and the queued
 * reads go through with the drain; so does the pivot of a mirror of the filter
 * that holds the queued reads (job-complete to BLOCK_JOB_COMPLETED), the
 * export then reading the target.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';
import { requireTool, run, SYSTEM_PYTHON } from '../helpers/tools.ts';
import { applyLimits, emptyConfig, type ThrottleLimits } from '../../src/util/throttle/config.ts';
import { ThrottleState } from '../../src/util/throttle/leaky-bucket.ts';

const pairs: Pair[] = [];
afterAll(async () => { for (const p of pairs) await p.stop(); });

interface Job { bs: number; depth: number; ios: number; rw?: string }

/** fio reading `ios` requests of `bs` from `uri`; resolves to its run time in ms (fio's, without its start-up). */
function fio(uri: string, job: Job, extra: string[] = []): Promise<number> {
  const cmd = requireTool('fio');
  return new Promise((res, rej) => {
    const p = spawn(cmd, ['--name=t', '--ioengine=nbd', `--uri=${uri}`, `--rw=${job.rw ?? 'randread'}`, `--bs=${job.bs}`,
      `--iodepth=${job.depth}`, '--size=64m', `--io_size=${job.ios * job.bs}`, '--output-format=json', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.once('exit', (code) => {
      if (code !== 0) return rej(new Error(`fio failed (${code}): ${err}`));
      try {
        const j = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
        if (j.read.total_ios !== job.ios) return rej(new Error(`fio did ${j.read.total_ios} reads, not ${job.ios}`));
        res(j.read.runtime as number);
      } catch (e) { rej(e as Error); }
    });
  });
}

/** QEMU's algorithm: ms until the last of `ios` requests starts, for a client that always has one ready. */
function predictedMs(limits: ThrottleLimits, job: Job): number {
  const s = new ThrottleState(applyLimits(emptyConfig(), limits));
  let t = 0;
  for (let n = 0; n < job.ios;) {
    const w = s.wait('read', t);
    if (w > 0) { t += w; continue; }
    s.account('read', job.bs);
    n++;
  }
  return t;
}

function graph(limits: ThrottleLimits): string[] {
  const l = Object.entries(limits).map(([k, v]) => `limits.${k}=${v}`).join(',');
  return [
    '--object', `throttle-group,id=tg0,${l}`,
    // Not read-zeroes: qsd would answer reads of known zeroes from block status, which is not throttled.
    '--blockdev', 'null-co,node-name=n0,size=67108864',
    '--blockdev', 'throttle,node-name=t0,throttle-group=tg0,file=n0',
    '--export', 'nbd,id=e0,node-name=t0,name=e0',
  ];
}

const CASES: [string, ThrottleLimits, Job][] = [
  ['bps-total 4 MiB/s, 256k reads', { 'bps-total': 4194304 }, { bs: 262144, depth: 4, ios: 40 }],
  ['iops-read 200, 4k reads', { 'iops-read': 200 }, { bs: 4096, depth: 4, ios: 500 }],
  ['burst: iops-total 100, max 400 for 2 s', { 'iops-total': 100, 'iops-total-max': 400, 'iops-total-max-length': 2 }, { bs: 4096, depth: 8, ios: 1150 }],
  ['iops-size: iops-total 100, iops-size 4k, 16k reads', { 'iops-total': 100, 'iops-size': 4096 }, { bs: 16384, depth: 2, ios: 60 }],
];

describe('a throttled export takes as long as on qsd (fio, within ±10 %)', () => {
  it.each(CASES)('%s', async (_name, limits, job) => {
    const pair = await startPair(() => undefined, () => graph(limits));
    pairs.push(pair);
    try {
      // One at a time: the two clients would share the two cores otherwise.
      const ms: Record<string, number> = {};
      for (const who of BOTH) ms[who] = await fio(pair[who].uri('e0'), job);
      const want = predictedMs(limits, job);
      expect(want).toBeGreaterThan(1500);
      expect(Math.abs(ms.blockd! - ms.qsd!) / ms.qsd!, JSON.stringify({ ...ms, want })).toBeLessThan(0.1);
      // Both are what the algorithm predicts (qsd within a fraction of a per cent on a quiet machine).
      for (const who of BOTH) expect(Math.abs(ms[who]! - want) / want, JSON.stringify({ ...ms, want })).toBeLessThan(0.1);
    } finally {
      await pair.stop();
    }
  });
});

/**
 * A libnbd client that sends 8 reads at once to a node throttled at
 * iops-read=2 (over three seconds of queue) and reports when they are sent
 * and, at the end, how long they took (ms).
 */
function throttledClient(uri: string): { sent: Promise<void>; done: Promise<number> } {
  const script = [
    'import nbd, sys, time',
    'h = nbd.NBD()',
    `h.connect_uri(${JSON.stringify(uri)})`,
    't = time.time()',
    'bufs = [nbd.Buffer(4096) for i in range(8)]',
    'for i, b in enumerate(bufs): h.aio_pread(b, i * 65536)',
    'print("sent", flush=True)',
    'while h.aio_in_flight() > 0: h.poll(-1)',
    'print(int((time.time() - t) * 1000), flush=True)',
  ].join('\n');
  const p = spawn(SYSTEM_PYTHON, ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let sentResolve!: () => void;
  const sent = new Promise<void>((r) => (sentResolve = r));
  p.stdout.on('data', (d) => { out += d; if (out.includes('sent')) sentResolve(); });
  p.stderr.on('data', (d) => (err += d));
  const done = new Promise<number>((res, rej) => p.once('exit', (code) => {
    if (code !== 0) return rej(new Error(`client failed (${code}): ${err}`));
    res(Number(out.trim().split('\n').pop()));
  }));
  return { sent, done };
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

describe('a drain under a throttled client does not wait on the throttle', () => {
  it('blockdev-snapshot under the filter and blockdev-del of a sibling in the group finish at once', async () => {
    const pair = await startPair((dir) => {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '64M']);
      // Allocated data: qsd answers reads of unallocated zeroes from block status, unthrottled.
      run('qemu-io', ['-c', 'write -P 0xab 0 1M', join(dir, 'base.qcow2')]);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'top.qcow2'), '64M']);
    }, (dir) => [
      '--object', 'throttle-group,id=tg0,limits.iops-read=2',
      '--blockdev', `driver=qcow2,node-name=q0,file.driver=file,file.filename=${join(dir, 'base.qcow2')}`,
      '--blockdev', 'throttle,node-name=t0,throttle-group=tg0,file=q0',
      '--blockdev', 'null-co,node-name=n1',
      '--blockdev', 'throttle,node-name=t1,throttle-group=tg0,file=n1',
      '--export', 'nbd,id=e0,node-name=t0,name=e0',
    ]);
    pairs.push(pair);
    try {
      for (const who of BOTH) {
        const side = pair[who];
        const client = throttledClient(side.uri('e0'));
        await client.sent;
        await new Promise((r) => setTimeout(r, 300)); // the reads have reached the throttle: one ran, seven wait
        await side.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'o0', backing: null, file: { driver: 'file', filename: join(side.dir, 'top.qcow2') } });
        const snapshot = await timed(() => side.qmp.execute('blockdev-snapshot', { node: 'q0', overlay: 'o0' }));
        const del = await timed(() => side.qmp.execute('blockdev-del', { 'node-name': 't1' }));
        // The queued reads went through during the drain, not at 2 a second (over 3 s).
        const clientMs = await client.done;
        const got = JSON.stringify({ who, snapshot, del, clientMs });
        expect(snapshot, got).toBeLessThan(500);
        expect(del, got).toBeLessThan(500);
        expect(clientMs, got).toBeLessThan(1500);
      }
    } finally {
      await pair.stop();
    }
  });

  it('a mirror pivot of the node under the filter finishes at once', async () => {
    const pair = await startPair((dir) => {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '64M']);
      run('qemu-io', ['-c', 'write -P 0xab 0 1M', join(dir, 'base.qcow2')]);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'tgt.qcow2'), '64M']);
    }, (dir) => [
      '--object', 'throttle-group,id=tg0,limits.iops-read=2',
      '--blockdev', `driver=qcow2,node-name=q0,file.driver=file,file.filename=${join(dir, 'base.qcow2')}`,
      '--blockdev', `driver=qcow2,node-name=m0,file.driver=file,file.filename=${join(dir, 'tgt.qcow2')}`,
      '--blockdev', 'throttle,node-name=t0,throttle-group=tg0,file=q0',
      '--export', 'nbd,id=e0,node-name=t0,name=e0',
    ]);
    pairs.push(pair);
    try {
      for (const who of BOTH) {
        const side = pair[who];
        // Mirror wants a root node: the filter, so the pivot drains it with the reads queued in it.
        await side.qmp.execute('blockdev-mirror', { 'job-id': 'j0', device: 't0', target: 'm0', sync: 'full' });
        await waitFor(side.events, (e) => e.event === 'BLOCK_JOB_READY');
        const client = throttledClient(side.uri('e0'));
        await client.sent;
        await new Promise((r) => setTimeout(r, 300)); // one read ran, seven wait in the throttle
        const pivot = await timed(async () => {
          await side.qmp.execute('job-complete', { id: 'j0' });
          await waitFor(side.events, (e) => e.event === 'BLOCK_JOB_COMPLETED', 10_000);
        });
        const clientMs = await client.done;
        const completed = side.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!;
        const got = JSON.stringify({ who, pivot, clientMs, completed: completed.data });
        expect(completed.data.error, got).toBeUndefined();
        expect(pivot, got).toBeLessThan(500);
        expect(clientMs, got).toBeLessThan(1500);
        // The export reads the target now.
        const exports = (await side.qmp.execute('query-block-exports', {})) as { 'node-name': string }[];
        expect(exports[0]!['node-name'], got).toBe('m0');
      }
    } finally {
      await pair.stop();
    }
  });
});
