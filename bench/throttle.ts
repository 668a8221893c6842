/**
 * Throttling accuracy, bin/blockd side by side with qemu-storage-daemon 7.2
 * (npm run bench:throttle [-- --runtime SECONDS]).
 *
 * 1. For six limit sets, a null-co disk under a throttle filter is exported
 *    over NBD and read by fio (nbd engine) as fast as it will go for the
 *    runtime (default 10 s). The table shows the configured limit, what
 *    QEMU's algorithm predicts for that run (src/util/throttle simulating a
 *    greedy client: the initial slack and any burst included; the check is
 *    against this), and the rate each daemon gave, with its error.
 * 2. Two exports in one group (iops-total=400), each read by its own fio at
 *    different queue depths: each one's share and the sum.
 *
 * The disks are null-co without read-zeroes: qsd answers reads of known
 * zeroes from block status, which the throttle does not see.
 *
 * Each daemon runs alone (qsd first, then blockd) on a quiet machine; the
 * lead runs it, helpers only check it starts (--runtime 1).
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { applyLimits, emptyConfig, type ThrottleLimits } from '../src/util/throttle/config.ts';
import { ThrottleState } from '../src/util/throttle/leaky-bucket.ts';

const ROOT = resolve(import.meta.dirname, '..');
const argRuntime = process.argv.indexOf('--runtime');
const RUNTIME = argRuntime >= 0 ? Number(process.argv[argRuntime + 1]) : 10;
if (!(RUNTIME > 0)) throw new Error('--runtime takes a positive number of seconds');

type Who = 'qsd' | 'blockd';
interface LimitSet { name: string; limits: ThrottleLimits; unit: 'iops' | 'bps'; bs: number; depth: number; rw: 'randread' | 'read'; configured: number }

const MiB = 1048576;
const SETS: LimitSet[] = [
  { name: 'bps-total 8 MiB/s, 64k', limits: { 'bps-total': 8 * MiB }, unit: 'bps', bs: 65536, depth: 4, rw: 'randread', configured: 8 * MiB },
  { name: 'bps-read 4 MiB/s, 128k seq', limits: { 'bps-read': 4 * MiB }, unit: 'bps', bs: 131072, depth: 2, rw: 'read', configured: 4 * MiB },
  { name: 'iops-total 500, 4k', limits: { 'iops-total': 500 }, unit: 'iops', bs: 4096, depth: 8, rw: 'randread', configured: 500 },
  { name: 'iops-read 200, 4k qd1', limits: { 'iops-read': 200 }, unit: 'iops', bs: 4096, depth: 1, rw: 'randread', configured: 200 },
  { name: 'burst 100 / max 1000 x 2 s', limits: { 'iops-total': 100, 'iops-total-max': 1000, 'iops-total-max-length': 2 }, unit: 'iops', bs: 4096, depth: 8, rw: 'randread', configured: 100 },
  { name: 'iops-total 200, iops-size 4k, 16k', limits: { 'iops-total': 200, 'iops-size': 4096 }, unit: 'iops', bs: 16384, depth: 4, rw: 'randread', configured: 50 },
];

/** What QEMU's algorithm gives a client that always has a request ready, per second over `seconds`. */
function predicted(set: LimitSet, seconds: number): number {
  const s = new ThrottleState(applyLimits(emptyConfig(), set.limits));
  let t = 0;
  let n = 0;
  while (t < seconds * 1000) {
    const w = s.wait('read', t);
    if (w > 0) { t += w; continue; }
    s.account('read', set.bs);
    n++;
  }
  return (set.unit === 'iops' ? n : n * set.bs) / seconds;
}

function limitArgs(l: ThrottleLimits): string {
  return Object.entries(l).map(([k, v]) => `limits.${k}=${v}`).join(',');
}

async function daemon(who: Who, dir: string, args: string[]): Promise<ChildProcess> {
  const sock = join(dir, 'nbd.sock');
  const cmd = who === 'qsd' ? 'qemu-storage-daemon' : join(ROOT, 'bin/blockd');
  const p = spawn(cmd, ['--nbd-server', `addr.type=unix,addr.path=${sock}`, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 400 && !existsSync(sock) && p.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(sock)) { p.kill('SIGKILL'); throw new Error(`${who} did not start`); }
  return p;
}

async function stop(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return;
  const exited = new Promise((r) => p.once('exit', r));
  p.kill('SIGTERM');
  await exited;
}

/** Runs fio on `uri` for the runtime; resolves to [iops, bytes per second]. */
function fio(uri: string, set: Pick<LimitSet, 'bs' | 'depth' | 'rw'>): Promise<[number, number]> {
  return new Promise((res, rej) => {
    const p = spawn('fio', ['--name=t', '--ioengine=nbd', `--uri=${uri}`, `--rw=${set.rw}`, `--bs=${set.bs}`, `--iodepth=${set.depth}`,
      '--size=1g', '--time_based', `--runtime=${RUNTIME}`, '--output-format=json'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.once('exit', (code) => {
      if (code !== 0) return rej(new Error(`fio exited with ${code}`));
      const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
      const seconds = job.job_runtime / 1000;
      res([job.read.total_ios / seconds, job.read.io_bytes / seconds]);
    });
  });
}

function exportArgs(node: string, id: string): string[] {
  return ['--export', `nbd,id=${id},node-name=${node},name=${id}`];
}

async function accuracy(dir: string): Promise<void> {
  console.log(`## Accuracy (${RUNTIME} s per run; rates in IOPS or MiB/s)\n`);
  console.log('| limit set | configured | predicted | qsd | err | blockd | err |');
  console.log('|---|---|---|---|---|---|---|');
  for (const set of SETS) {
    const row: string[] = [];
    const fmt = (v: number) => (set.unit === 'bps' ? (v / MiB).toFixed(2) : v.toFixed(1));
    const want = predicted(set, RUNTIME);
    for (const who of ['qsd', 'blockd'] as const) {
      const d = join(dir, `${who}-${SETS.indexOf(set)}`);
      execFileSync('mkdir', ['-p', d]);
      const p = await daemon(who, d, [
        '--object', `throttle-group,id=tg0,${limitArgs(set.limits)}`,
        '--blockdev', 'null-co,node-name=n0,size=1073741824',
        '--blockdev', 'throttle,node-name=t0,throttle-group=tg0,file=n0',
        ...exportArgs('t0', 'e0'),
      ]);
      try {
        const [iops, bps] = await fio(`nbd+unix:///e0?socket=${join(d, 'nbd.sock')}`, set);
        const got = set.unit === 'iops' ? iops : bps;
        row.push(fmt(got), `${(((got - want) / want) * 100).toFixed(1)} %`);
      } finally {
        await stop(p);
      }
    }
    console.log(`| ${set.name} | ${fmt(set.configured)} | ${fmt(want)} | ${row.join(' | ')} |`);
  }
}

async function sharing(dir: string): Promise<void> {
  console.log('\n## Two exports in one group (iops-total=400; 4k random reads, queue depths 1 and 8)\n');
  console.log('| daemon | e0 (qd1) IOPS | e1 (qd8) IOPS | e0/e1 | sum | sum vs 400 |');
  console.log('|---|---|---|---|---|---|');
  for (const who of ['qsd', 'blockd'] as const) {
    const d = join(dir, `${who}-share`);
    execFileSync('mkdir', ['-p', d]);
    const p = await daemon(who, d, [
      '--object', 'throttle-group,id=tg0,limits.iops-total=400',
      '--blockdev', 'null-co,node-name=n0,size=1073741824',
      '--blockdev', 'null-co,node-name=n1,size=1073741824',
      '--blockdev', 'throttle,node-name=t0,throttle-group=tg0,file=n0',
      '--blockdev', 'throttle,node-name=t1,throttle-group=tg0,file=n1',
      ...exportArgs('t0', 'e0'), ...exportArgs('t1', 'e1'),
    ]);
    try {
      const sock = join(d, 'nbd.sock');
      const [[a], [b]] = await Promise.all([
        fio(`nbd+unix:///e0?socket=${sock}`, { bs: 4096, depth: 1, rw: 'randread' }),
        fio(`nbd+unix:///e1?socket=${sock}`, { bs: 4096, depth: 8, rw: 'randread' }),
      ]);
      console.log(`| ${who} | ${a.toFixed(1)} | ${b.toFixed(1)} | ${(a / b).toFixed(3)} | ${(a + b).toFixed(1)} | ${(((a + b - 400) / 400) * 100).toFixed(1)} % |`);
    } finally {
      await stop(p);
    }
  }
}

const dir = mkdtempSync(join(tmpdir(), 'blockd-bench-throttle-'));
try {
  await accuracy(dir);
  await sharing(dir);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
