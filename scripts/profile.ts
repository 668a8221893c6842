/**
 * `npm run profile -- <job> [--target raw|null|qcow2] [--runtime S] [--tcp] [--servers blockd,qsd,nbdkit] [--size 1G] [--blockd DIR] [--top N]`
 *
 * Where the time of one fio job goes (#18), blockd beside qsd and nbdkit on
 * the same image over the same transport:
 * 1. per server: requests per second, CPU per request (user + system, all
 *    threads, from /proc/<pid>/stat) and system calls per request (strace -c
 *    -f attached for a second run: counts, not times — strace slows the
 *    server down but does not change what it calls);
 * 2. for blockd, a V8 CPU profile of a third run (node --cpu-prof) broken
 *    down by the stage of the request the time was spent in
 *    (scripts/profile/breakdown.ts), per request.
 * Jobs are the shared matrix's (../shared/bench/fio-nbd.py). CPU per request
 * moves much less than throughput when the machine is busy, so it is the
 * figure to compare across changes; throughput wants a quiet machine.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { breakdown, formatBreakdown, topFunctions, type CpuProfile } from './profile/breakdown.ts';

const JOBS: Record<string, { rw: string; bs: string; qd: number }> = {
  'randread-4k-qd1': { rw: 'randread', bs: '4k', qd: 1 },
  'randread-4k-qd32': { rw: 'randread', bs: '4k', qd: 32 },
  'randwrite-4k-qd32': { rw: 'randwrite', bs: '4k', qd: 32 },
  'randwrite-4k-qd1': { rw: 'randwrite', bs: '4k', qd: 1 },
  'read-1m-qd8': { rw: 'read', bs: '1m', qd: 8 },
  'write-1m-qd8': { rw: 'write', bs: '1m', qd: 8 },
};

const argv = process.argv.slice(2);
const opt = (name: string, d: string) => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1]! : d; };
const jobName = argv.find((a, i) => !a.startsWith('--') && (i === 0 || !argv[i - 1]!.startsWith('--') || argv[i - 1] === '--tcp'));
if (!jobName || !JOBS[jobName]) {
  console.error(`usage: npm run profile -- <${Object.keys(JOBS).join('|')}> [--target raw|null|qcow2] [--runtime S] [--tcp] [--servers blockd,qsd,nbdkit] [--size 1G] [--blockd DIR] [--top N]`);
  process.exit(2);
}
const job = JOBS[jobName]!;
const target = opt('target', 'raw');
const runtime = Number(opt('runtime', '5'));
const tcp = argv.includes('--tcp');
const servers = opt('servers', 'blockd,qsd,nbdkit').split(',');
const size = opt('size', '1G');
const top = Number(opt('top', '15'));
// --blockd DIR: the blockd tree to run (another checkout, to compare builds); default this one.
const root = opt('blockd', join(dirname(fileURLToPath(import.meta.url)), '..'));
const dir = mkdtempSync(join(tmpdir(), 'blockd-profile-'));
const cleanup = () => rmSync(dir, { recursive: true, force: true });
process.on('SIGINT', () => { cleanup(); process.exit(130); });

function need(tool: string): void {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is needed (Debian package: see .ci/run)`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const canConnect = (o: { path: string } | { port: number; host: string }) => new Promise<boolean>((r) => {
  const s = connect(o as never);
  s.once('connect', () => { s.destroy(); r(true); });
  s.once('error', () => r(false));
});

interface Server { proc: ChildProcess; uri: string; exited: Promise<void> }

let nextPort = 20000 + Math.floor(Math.random() * 20000);

async function startServer(who: string, image: string, profileDir?: string): Promise<Server> {
  const sock = join(dir, `${who}.sock`);
  rmSync(sock, { force: true });
  const port = nextPort++;
  const addr = tcp ? `addr.type=inet,addr.host=127.0.0.1,addr.port=${port}` : `addr.type=unix,addr.path=${sock}`;
  const uri = tcp ? `nbd://127.0.0.1:${port}/d` : `nbd+unix:///d?socket=${sock}`;
  const bytes = spawnSync('numfmt', ['--from=iec', size], { encoding: 'utf8' }).stdout.trim();
  const node = target === 'null' ? [`driver=null-co,node-name=d0,size=${bytes}`]
    : target === 'raw' ? [`driver=file,node-name=f0,filename=${image}`, 'driver=raw,node-name=d0,file=f0']
      : [`driver=file,node-name=f0,filename=${image}`, 'driver=qcow2,node-name=d0,file=f0'];
  const qsdArgs = [...node.flatMap((b) => ['--blockdev', b]), '--nbd-server', addr, '--export', 'type=nbd,id=e0,node-name=d0,name=d,writable=on'];
  let cmd: string;
  let args: string[];
  if (who === 'blockd') {
    cmd = process.execPath;
    args = [...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-interval', '250'] : []), join(root, 'bin/blockd'), ...qsdArgs];
  } else if (who === 'qsd') {
    cmd = 'qemu-storage-daemon';
    args = qsdArgs;
  } else {
    if (target === 'qcow2') throw new Error('nbdkit has no qcow2 writer');
    cmd = 'nbdkit';
    args = ['-f', '-e', 'd', ...(tcp ? ['-i', '127.0.0.1', '-p', String(port)] : ['-U', sock]),
      ...(target === 'null' ? ['null', `size=${bytes}`] : ['file', `file=${image}`])];
  }
  // stderr kept, not shown: the readiness probe's connections make qsd and nbdkit complain.
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => { if (err.length < 4096) err += d; });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  for (let i = 0; ; i++) {
    if (proc.exitCode !== null) throw new Error(`${who} exited with ${proc.exitCode}: ${err}`);
    if (tcp ? await canConnect({ port, host: '127.0.0.1' }) : existsSync(sock) && await canConnect({ path: sock })) break;
    if (i > 600) throw new Error(`${who} did not come up`);
    await sleep(50);
  }
  return { proc, uri, exited };
}

async function stopServer(s: Server): Promise<void> {
  s.proc.kill('SIGTERM');
  const t = setTimeout(() => s.proc.kill('SIGKILL'), 15_000);
  await s.exited;
  clearTimeout(t);
}

/** fio's nbd engine: requests completed and their rate. */
async function fio(uri: string, seconds: number): Promise<{ ops: number; iops: number }> {
  const p = spawn('fio', ['--name=t', '--ioengine=nbd', `--uri=${uri}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.qd}`,
    `--size=${size}`, '--time_based', `--runtime=${seconds}`, '--output-format=json'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((r) => p.once('exit', r));
  if (code !== 0) throw new Error(`fio exited with ${code}`);
  const j = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  const side = j.read.io_bytes ? j.read : j.write;
  return { ops: side.total_ios, iops: side.iops };
}

/** utime + stime of every thread of `pid`, in µs. */
function cpuUs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const hz = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
  return ticks * 1e6 / hz;
}

/** System calls made by `pid` (all threads) while `fn` runs: total and the five most frequent. */
async function syscalls(pid: number, fn: () => Promise<{ ops: number }>): Promise<{ perReq: number; top: string }> {
  const out = join(dir, `strace-${pid}.txt`);
  const st = spawn('strace', ['-c', '-f', '-p', String(pid), '-o', out], { stdio: 'ignore' });
  await sleep(500);
  const { ops } = await fn();
  st.kill('SIGINT');
  await new Promise((r) => st.once('exit', r));
  const rows = readFileSync(out, 'utf8').split('\n').map((l) => l.trim().split(/\s+/)).filter((c) => c.length >= 5 && /^\d/.test(c[0]!));
  const parsed = rows.map((c) => ({ calls: Number(c[3]), name: c[c.length - 1]! })).filter((r) => r.name !== 'total');
  const total = parsed.reduce((a, r) => a + r.calls, 0);
  const top = parsed.sort((a, b) => b.calls - a.calls).slice(0, 5).map((r) => `${r.name} ${(r.calls / ops).toFixed(2)}`).join(', ');
  return { perReq: total / ops, top };
}

async function main(): Promise<void> {
  for (const t of ['fio', 'strace', 'qemu-img', 'numfmt', ...servers.map((s) => s === 'qsd' ? 'qemu-storage-daemon' : s === 'nbdkit' ? 'nbdkit' : 'true')]) need(t);
  const seed = join(dir, 'seed');
  if (target !== 'null') {
    spawnSync('sh', ['-c', `head -c ${size} /dev/urandom > ${seed}`]);
    if (target === 'qcow2') spawnSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', seed, `${seed}.qcow2`]);
  }
  console.log(`# ${jobName} on ${target}, ${tcp ? 'TCP' : 'Unix socket'}, ${runtime} s per run, ${size}`);
  console.log(`${'server'.padEnd(8)}${'req/s'.padStart(10)}${'CPU µs/req'.padStart(12)}${'syscalls/req'.padStart(14)}  most frequent (per request)`);
  let blockdImage = '';
  for (const who of servers.filter((s) => !(s === 'nbdkit' && target === 'qcow2'))) {
    // One copy per server (as vs-qsd.sh), made by cp so all read alike.
    const image = join(dir, `${who}.img`);
    if (target !== 'null') copyFileSync(target === 'qcow2' ? `${seed}.qcow2` : seed, image);
    if (who === 'blockd') blockdImage = image;
    const s = await startServer(who, image);
    try {
      const before = cpuUs(s.proc.pid!);
      const r = await fio(s.uri, runtime);
      const cpu = (cpuUs(s.proc.pid!) - before) / r.ops;
      const sc = await syscalls(s.proc.pid!, () => fio(s.uri, Math.max(2, Math.ceil(runtime / 2))));
      console.log(`${who.padEnd(8)}${r.iops.toFixed(0).padStart(10)}${cpu.toFixed(1).padStart(12)}${sc.perReq.toFixed(2).padStart(14)}  ${sc.top}`);
    } finally {
      await stopServer(s);
    }
  }
  if (servers.includes('blockd')) {
    const profDir = join(dir, 'prof');
    mkdirSync(profDir);
    const s = await startServer('blockd', blockdImage, profDir);
    let r;
    const from = Number(process.hrtime.bigint() / 1000n);
    let to = 0;
    try {
      r = await fio(s.uri, runtime);
      to = Number(process.hrtime.bigint() / 1000n);
    } finally {
      await stopServer(s);
    }
    const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
    if (!file) throw new Error('blockd wrote no CPU profile');
    const p = JSON.parse(readFileSync(join(profDir, file), 'utf8')) as CpuProfile;
    console.log(`\n# blockd main thread, V8 CPU profile of a run at ${r.iops.toFixed(0)} req/s (${r.ops} requests; profiling slows it)`);
    console.log(formatBreakdown(breakdown(p, { from, to }), r.ops));
    console.log(`\n# the ${top} functions with the most self time (µs per request, stage, function, file)`);
    console.log(topFunctions(p, r.ops, top, { from, to }));
  }
}

try {
  await main();
} finally {
  cleanup();
}
