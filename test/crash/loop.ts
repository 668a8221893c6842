/**
 * The crash loop: blockd is SIGKILLed at a seeded random moment of a write
 * workload, `kills` times, on one qcow2 image with a persistent dirty bitmap.
 *
 * Each round starts blockd on the image (NBD export, QMP monitor) and a
 * libnbd writer: 4 KiB writes at fresh block indexes (each block has one
 * possible content), spread over the disk so allocations touch many L2 tables
 * and refcount blocks; some with FUA, some followed by a flush; every third
 * round also a full backup job (blockdev-backup into a second qcow2 image)
 * runs while the writes go on. After the kill:
 * - qemu-img check of the image (and of the backup target) reports no
 *   corruption and no check error (leaks are allowed, and repaired);
 * - every write acknowledged with FUA or before an acknowledged flush reads
 *   back (all rounds so far);
 * - the stored bitmap is consistent and covers every acknowledged write.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';
import { existingBitmaps } from '../../src/blockdev/bitmaps/registry.ts';

const BLOCKD = join(dirname(fileURLToPath(import.meta.url)), '../../bin/blockd');
const BLOCK = 4096;
const SIZE = 64 << 20;

const WRITER = `
import nbd, sys, random
sock, seed, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
h = nbd.NBD(); h.connect_uri("nbd+unix:///d0?socket=" + sock)
pending = []
i = start
nblocks = ${SIZE / BLOCK}
try:
    while True:
        idx = (i * 7919) % nblocks; i += 1
        buf = bytes([idx % 251 + 1]) * ${BLOCK}
        k = rnd.random()
        if k < 0.3:
            h.pwrite(buf, idx * ${BLOCK}, nbd.CMD_FLAG_FUA)
            print("A", idx, flush=True)
            print("D", idx, flush=True)
        else:
            h.pwrite(buf, idx * ${BLOCK})
            print("A", idx, flush=True)
            pending.append(idx)
            if k > 0.9:
                h.flush()
                for p in pending: print("D", p, flush=True)
                pending = []
except Exception as e:
    print("END", e, flush=True)
`;

export interface CrashLoopResult {
  kills: number;
  imagesChecked: number;
  writesVerified: number;
  bitmapWritesCovered: number;
  jobsKilled: number;
  corruptions: number;
  failures: string[];
}

function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(path: string, proc: ChildProcess, err: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`blockd exited with ${proc.exitCode}: ${err()}`);
    if (existsSync(path) && await new Promise<boolean>((r) => { const s = connect(path); s.once('connect', () => { s.destroy(); r(true); }); s.once('error', () => r(false)); })) return;
    if (Date.now() > deadline) throw new Error(`blockd did not come up: ${err()}`);
    await sleep(50);
  }
}

/** Sends QMP commands in order over one connection; resolves with the replies. */
function qmp(path: string, cmds: object[]): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    let buf = '';
    const replies: unknown[] = [];
    const queue = [{ execute: 'qmp_capabilities' }, ...cmds];
    s.on('data', (d) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const m = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        if ('QMP' in m || 'return' in m || 'error' in m) {
          if (!('QMP' in m)) replies.push(m);
          const next = queue.shift();
          if (next) s.write(JSON.stringify(next) + '\n'); else { s.end(); resolve(replies.slice(1)); }
        }
      }
    });
    s.on('error', reject);
  });
}

function check(image: string): { corruptions: number; text: string } {
  let out = '';
  try {
    out = execFileSync('qemu-img', ['check', '-f', 'qcow2', '--output=json', image], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  } catch (e) {
    out = String((e as { stdout?: Buffer }).stdout ?? '');
  }
  const j = JSON.parse(out || '{"check-errors":1}') as { corruptions?: number; 'check-errors'?: number; leaks?: number };
  if ((j.leaks ?? 0) > 0) execFileSync('qemu-img', ['check', '-q', '-r', 'leaks', image], { stdio: 'ignore' });
  return { corruptions: (j.corruptions ?? 0) + (j['check-errors'] ?? 0), text: out };
}

/** The stored bitmap b0 and the durable blocks, read through blockd (read-only). */
async function verify(image: string, durable: Set<number>, acked: Set<number>): Promise<string[]> {
  const problems: string[] = [];
  const g = new BlockGraph();
  registerDrivers(g);
  const node = await g.add({ driver: 'qcow2', 'node-name': 'ro', 'read-only': true, file: { driver: 'file', filename: image, 'read-only': true } });
  try {
    const buf = Buffer.alloc(BLOCK);
    for (const idx of durable) {
      await node.read(idx * BLOCK, buf);
      if (buf[0] !== (idx % 251) + 1 || buf[BLOCK - 1] !== (idx % 251) + 1) problems.push(`durable block ${idx} lost (reads ${buf[0]})`);
    }
    const bm = existingBitmaps(node).find((b) => b.name === 'b0');
    if (!bm) problems.push('bitmap b0 missing');
    else if (bm.inconsistent) problems.push('bitmap b0 inconsistent after the kill');
    else {
      const ext = [...bm.extents()];
      for (const idx of acked) {
        const off = idx * BLOCK;
        if (!ext.some(([a, b]) => a <= off && off + BLOCK <= b)) { problems.push(`acknowledged block ${idx} not in bitmap b0`); break; }
      }
    }
  } finally {
    await g.closeAll();
  }
  return problems;
}

export async function crashLoop(opts: { dir: string; kills: number; seed: number; log?: (s: string) => void }): Promise<CrashLoopResult> {
  const r = prng(opts.seed);
  const img = join(opts.dir, 'crash.qcow2');
  const target = join(opts.dir, 'backup.qcow2');
  const sock = join(opts.dir, 'nbd.sock');
  const qmpSock = join(opts.dir, 'qmp.sock');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', img, String(SIZE)]);
  execFileSync('qemu-img', ['bitmap', '--add', img, 'b0']);
  const res: CrashLoopResult = { kills: 0, imagesChecked: 0, writesVerified: 0, bitmapWritesCovered: 0, jobsKilled: 0, corruptions: 0, failures: [] };
  const durable = new Set<number>();
  const acked = new Set<number>();
  let next = 0;
  for (let round = 0; round < opts.kills; round++) {
    rmSync(sock, { force: true });
    rmSync(qmpSock, { force: true });
    const withJob = round % 3 === 2;
    if (withJob) execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', target, String(SIZE)]);
    const proc = spawn(BLOCKD, [
      '--blockdev', `driver=file,node-name=f0,filename=${img}`,
      '--blockdev', 'driver=qcow2,node-name=d0,file=f0',
      '--nbd-server', `addr.type=unix,addr.path=${sock}`,
      '--export', 'type=nbd,id=e0,node-name=d0,writable=on',
      '--chardev', `socket,id=m0,path=${qmpSock},server=on,wait=off`,
      '--monitor', 'chardev=m0',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    proc.stderr!.on('data', (d) => (err += d));
    const exited = new Promise((res2) => proc.once('exit', res2));
    await waitFor(sock, proc, () => err);
    await waitFor(qmpSock, proc, () => err);
    const w = spawn('/usr/bin/python3', ['-c', WRITER, sock, String(opts.seed + round), String(next)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    w.stdout!.on('data', (x) => (out += x));
    const writerDone = new Promise((res2) => w.once('exit', res2));
    if (withJob) {
      const replies = await qmp(qmpSock, [
        { execute: 'blockdev-add', arguments: { driver: 'qcow2', 'node-name': 't0', file: { driver: 'file', filename: target } } },
        { execute: 'blockdev-backup', arguments: { 'job-id': 'j0', device: 'd0', target: 't0', sync: 'full', speed: 8 << 20 } },
      ]);
      if (replies.some((x) => (x as { error?: unknown }).error)) res.failures.push(`round ${round}: job did not start: ${JSON.stringify(replies)}`);
    }
    // The kill comes at a random moment once writes flow (the writer's connection and a job's start take a while).
    for (const until = Date.now() + 10_000; !out.includes('A ') && Date.now() < until;) await sleep(20);
    await sleep(100 + Math.floor(r() * 1500));
    proc.kill('SIGKILL');
    await exited;
    await writerDone;
    res.kills++;
    const roundAcked = [...out.matchAll(/^A (\d+)$/gm)].map((m) => Number(m[1]));
    for (const m of out.matchAll(/^D (\d+)$/gm)) durable.add(Number(m[1]));
    for (const a of roundAcked) acked.add(a);
    next += roundAcked.length + 1;
    const c = check(img);
    res.imagesChecked++;
    if (c.corruptions) { res.corruptions += c.corruptions; res.failures.push(`round ${round}: qemu-img check: ${c.text.slice(0, 500)}`); }
    if (withJob) {
      const t = check(target);
      res.imagesChecked++;
      res.jobsKilled++;
      if (t.corruptions) { res.corruptions += t.corruptions; res.failures.push(`round ${round}: backup target: ${t.text.slice(0, 500)}`); }
    }
    const problems = await verify(img, durable, acked);
    if (problems.length) { res.corruptions += problems.length; res.failures.push(...problems.slice(0, 5).map((p) => `round ${round}: ${p}`)); }
    opts.log?.(`kill ${round + 1}: ${roundAcked.length} writes acknowledged, ${durable.size} durable so far${withJob ? ', backup job running' : ''}${problems.length || c.corruptions ? ' PROBLEMS' : ''}`);
  }
  res.writesVerified = durable.size;
  res.bitmapWritesCovered = acked.size;
  return res;
}
