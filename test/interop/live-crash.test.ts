/**
 * Fault test: bin/blockd killed (SIGKILL) during block-stream, an
 * intermediate block-commit or an active block-commit leaves a chain that
 * opens and reads correctly.
 *
 * A 3-image chain base ← mid ← top is made with qemu-io (distinct patterns
 * per cluster and layer, partial clusters and zeroed ranges in the upper
 * layers), so the guest view is known. blockd exports top; a client writes
 * through the export the whole time (some writes FUA, some followed by a
 * flush) while a rate-limited job runs, and the daemon is killed at a seeded
 * point: part-way through the copy, while an active commit mirrors writes
 * after READY, or just after job-finalize (the backing link being
 * rewritten, and while it settles). Afterwards:
 *   - `qemu-img check` finds no corruption in any image (leaks are allowed);
 *   - the chain read by qemu-img convert and by blockd again over NBD is the
 *     same, and every 512-byte sector holds what the model allows: where the
 *     client never wrote, the original guest view exactly; elsewhere the
 *     data of the last durable write (flushed or FUA; the original if none)
 *     or of a later write to the same place (acknowledged or in flight) —
 *     never data from anywhere else.
 */
import { describe, it, expect } from 'vitest';
import { closeSync, openSync, readFileSync, readSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir } from '../helpers/daemons.ts';
import { run, tryRun } from '../helpers/tools.ts';
import { rng } from '../helpers/qcow2.ts';
import { RawClient, rawNegotiate, request, simpleReplyOf } from '../helpers/nbd.ts';
import { readAll, qmpDaemon, waitFor, type Ev, cleanupsAfterEach } from '../helpers/live.ts';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';

const SIZE = 8 * 1024 * 1024;
const CLUSTER = 64 * 1024;
const SECTOR = 512;
/**
 * Slow enough that a job over this chain runs for several seconds: at a
 * kill point 90 % through, the last chunks (512 KiB each) still take about
 * a second, which the test's query-jobs polling must not miss on a loaded
 * machine (at 3 MiB/s a CI run once saw the job done before it looked).
 */
const SPEED = 1.5 * 1024 * 1024;
const CMD_WRITE = 1;
const CMD_FLUSH = 3;
const FLAG_FUA = 1;

// ---------------------------------------------------------------- the chain

type Op = { kind: 'write'; pattern: number; offset: number; length: number } | { kind: 'zero'; offset: number; length: number };

/** qemu-io commands per layer (seeded), bottom first. */
function layout(): Record<'base' | 'mid' | 'top', Op[]> {
  const r = rng(7);
  const base: Op[] = [];
  for (let i = 0; i < SIZE / CLUSTER; i++) {
    if (r() < 0.8) base.push({ kind: 'write', pattern: 1 + ((i * 7) % 190), offset: i * CLUSTER, length: CLUSTER });
  }
  // Upper layers: ranges not aligned to clusters (a partial cluster copies the rest from below), some zeroed.
  const pieces = (n: number, first: number, zeroes: number): Op[] => {
    const out: Op[] = [];
    for (let i = 0; i < n; i++) {
      const length = (1 + Math.floor(r() * 32)) * 4096;
      const offset = Math.floor(r() * ((SIZE - length) / SECTOR)) * SECTOR;
      out.push(i < zeroes ? { kind: 'zero', offset, length } : { kind: 'write', pattern: first + (i % 25), offset, length });
    }
    return out;
  };
  return { base, mid: pieces(40, 200, 6), top: pieces(16, 228, 3) };
}

function ioCommand(op: Op): string {
  return op.kind === 'write' ? `write -P ${op.pattern} ${op.offset} ${op.length}` : `write -z ${op.offset} ${op.length}`;
}

/** base.qcow2 ← mid.qcow2 ← top.qcow2 in `dir`; returns the guest view of top. */
function makeChain(dir: string): Buffer {
  const lay = layout();
  const view = Buffer.alloc(SIZE);
  let below: string | undefined;
  for (const name of ['base', 'mid', 'top'] as const) {
    const img = join(dir, `${name}.qcow2`);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', ...(below ? ['-b', below, '-F', 'qcow2'] : []), img, String(SIZE)]);
    run('qemu-io', ['-f', 'qcow2', ...lay[name].flatMap((op) => ['-c', ioCommand(op)]), img]);
    for (const op of lay[name]) view.fill(op.kind === 'write' ? op.pattern : 0, op.offset, op.offset + op.length);
    below = img;
  }
  return view;
}

// ---------------------------------------------------------------- the client

interface WriteRec {
  seq: number;
  offset: number;
  data: Buffer;
  fua: boolean;
  /** sent: no reply seen (it may or may not have landed); durable: FUA or covered by a flush that succeeded. */
  state: 'sent' | 'acked' | 'durable' | 'failed';
}

/**
 * Writes through the export until the connection dies, remembering every
 * write and which ones are durable. Writes in flight never overlap, so two
 * writes to one sector happen in the order they were sent.
 */
class RecordingWriter {
  readonly recs: WriteRec[] = [];
  private readonly inflight = new Map<bigint, WriteRec | WriteRec[]>();
  private cookie = 1n;
  private ops = 0;
  private done?: Promise<void>;

  constructor(private readonly c: RawClient, private readonly r: () => number, private readonly depth = 4) {}

  private writesInFlight(): WriteRec[] {
    return [...this.inflight.values()].filter((v): v is WriteRec => !Array.isArray(v));
  }

  private pump(): void {
    while (!this.c.closed && this.writesInFlight().length < this.depth) {
      const ck = this.cookie++;
      if (++this.ops % 10 === 0) {
        // A flush makes every write acknowledged before it durable once it succeeds.
        this.inflight.set(ck, this.recs.filter((w) => w.state === 'acked'));
        this.c.write(request(CMD_FLUSH, 0, 0, ck));
        continue;
      }
      const length = (1 + Math.floor(this.r() * 8)) * 4096;
      const offset = Math.floor(this.r() * ((SIZE - length) / SECTOR)) * SECTOR;
      if (this.writesInFlight().some((w) => w.offset < offset + length && offset < w.offset + w.data.length)) continue;
      const seq = this.recs.length;
      const data = Buffer.alloc(length, 1 + Math.floor(this.r() * 254));
      // Every sector names its write and its place: misplaced data cannot pass for the right one.
      for (let s = 0; s < length; s += SECTOR) { data.writeUInt32BE(seq, s); data.writeUInt32BE((offset + s) / SECTOR, s + 4); }
      const rec: WriteRec = { seq, offset, data, fua: this.ops % 7 === 0, state: 'sent' };
      this.recs.push(rec);
      this.inflight.set(ck, rec);
      this.c.write(Buffer.concat([request(CMD_WRITE, offset, length, ck, rec.fua ? FLAG_FUA : 0), data]));
    }
  }

  start(): void {
    this.done = (async () => {
      this.pump();
      for (;;) {
        let reply: [number, bigint];
        try {
          reply = await simpleReplyOf(this.c, 60_000);
        } catch {
          return; // the daemon is gone: what is in flight stays 'sent'
        }
        const [err, ck] = reply;
        const v = this.inflight.get(ck)!;
        this.inflight.delete(ck);
        if (Array.isArray(v)) {
          if (err === 0) for (const w of v) w.state = 'durable';
        } else if (err !== 0) {
          v.state = 'failed';
        } else {
          v.state = v.fua ? 'durable' : 'acked';
        }
        // A guest's pace: an active commit must be able to converge.
        await new Promise((res) => setTimeout(res, 3));
        this.pump();
      }
    })();
  }

  async finished(): Promise<void> { await this.done; }
}

/**
 * Sectors of `disk` that the model does not allow (at most `max`, described).
 * Per sector, the allowed contents are the last durable write's (the
 * original if none) and those of every later write to it.
 */
function violations(disk: Buffer, original: Buffer, recs: WriteRec[], max = 8): string[] {
  const allowed: (WriteRec | null)[][] = Array.from({ length: SIZE / SECTOR }, () => [null]);
  for (const w of recs) {
    for (let s = w.offset / SECTOR; s < (w.offset + w.data.length) / SECTOR; s++) {
      if (w.state === 'durable') allowed[s] = [w];
      else allowed[s]!.push(w);
    }
  }
  const out: string[] = [];
  for (let s = 0; s < allowed.length && out.length < max; s++) {
    const got = disk.subarray(s * SECTOR, (s + 1) * SECTOR);
    const ok = allowed[s]!.some((w) => got.equals(w
      ? w.data.subarray(s * SECTOR - w.offset, s * SECTOR - w.offset + SECTOR)
      : original.subarray(s * SECTOR, (s + 1) * SECTOR)));
    if (!ok) {
      const what = allowed[s]!.map((w) => (w ? `write #${w.seq} (${w.state})` : 'original')).join(' | ');
      out.push(`sector ${s} (offset ${s * SECTOR}): got ${got.subarray(0, 12).toString('hex')}, allowed ${what}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------- the jobs and the kill points

type Kind = 'stream' | 'stream to base' | 'intermediate commit' | 'active commit';
type Point =
  | { at: 'progress'; fraction: number }
  | { at: 'finalize'; delayMs: number }
  | { at: 'relink' }
  | { at: 'ready'; delayMs: number };

function jobCommand(kind: Kind, dir: string, point: Point): [string, Record<string, unknown>] {
  const common = {
    'job-id': 'j', device: 'top',
    // Only a kill part-way needs the copy slow.
    speed: point.at === 'progress' ? SPEED : 0,
    ...(point.at === 'finalize' || point.at === 'relink' ? { 'auto-finalize': false } : {}),
  };
  switch (kind) {
    case 'stream': return ['block-stream', common];
    case 'stream to base': return ['block-stream', { ...common, base: join(dir, 'base.qcow2') }];
    case 'intermediate commit': return ['block-commit', { ...common, top: join(dir, 'mid.qcow2'), base: join(dir, 'base.qcow2') }];
    case 'active commit': return ['block-commit', common];
  }
}

/**
 * Seeded kill points per job kind: part-way through the copy (first and
 * second half); for an active commit, while it mirrors writes after READY;
 * for the others, the moment top's header stops naming its old backing file,
 * and a little and a while after job-finalize.
 */
function points(kind: Kind): Point[] {
  const r = rng(kind.length * 101);
  const pts: Point[] = [0, 1].map((i) => ({ at: 'progress', fraction: 0.1 + 0.8 * ((i + r()) / 2) }));
  if (kind === 'active commit') pts.push({ at: 'ready', delayMs: 50 + Math.floor(r() * 100) }, { at: 'ready', delayMs: 300 + Math.floor(r() * 300) });
  else pts.push({ at: 'relink' }, { at: 'finalize', delayMs: Math.floor(r() * 20) }, { at: 'finalize', delayMs: 100 + Math.floor(r() * 200) });
  return pts;
}

/** The backing file name in a qcow2 image's header ('' if none). */
function backingName(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const h = Buffer.alloc(CLUSTER);
    readSync(fd, h, 0, h.length, 0);
    const offset = Number(h.readBigUInt64BE(8));
    return offset ? h.toString('utf8', offset, offset + h.readUInt32BE(16)) : '';
  } finally {
    closeSync(fd);
  }
}

interface JobInfo { id: string; status: string; 'current-progress': number; 'total-progress': number }

/** Waits until the job is `fraction` through its work while still running; returns what query-jobs said. */
async function untilProgress(qmp: QmpClient, fraction: number): Promise<JobInfo> {
  const end = Date.now() + 60_000;
  for (;;) {
    const j = ((await qmp.execute('query-jobs')) as JobInfo[]).find((x) => x.id === 'j');
    if (!j || !['created', 'running'].includes(j.status)) throw new Error(`job not running any more: ${JSON.stringify(j)}`);
    if (j['total-progress'] > 0 && j['current-progress'] >= fraction * j['total-progress']) return j;
    if (Date.now() > end) throw new Error(`job made no progress: ${JSON.stringify(j)}`);
    await new Promise((res) => setTimeout(res, 20));
  }
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

/** Runs the job to `point` under a writing client; the daemon is SIGKILLed there. Returns the writer's record. */
async function crashDuring(dir: string, kind: Kind, point: Point, seed: number): Promise<{ recs: WriteRec[]; note: string }> {
  const nbdSock = join(dir, 'nbd.sock');
  const d = await qmpDaemon('blockd', dir, [
    '--blockdev', `driver=file,node-name=top-file,filename=${join(dir, 'top.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=top,file=top-file',
    '--nbd-server', `addr.type=unix,addr.path=${nbdSock}`,
    '--export', 'type=nbd,id=e0,node-name=top,name=disk,writable=on',
  ]);
  cleanup.push(async () => { d.qmp.close(); await d.proc.stop('SIGKILL'); });
  const c = new RawClient(nbdSock);
  expect(await rawNegotiate(c, 'disk')).toBe(SIZE);
  const w = new RecordingWriter(c, rng(seed));
  w.start();
  // Some writes before the job starts, however loaded the machine (a fixed sleep gave too few under load).
  for (const end = Date.now() + 30_000; w.recs.length <= 20;) {
    if (Date.now() > end) throw new Error(`the writer made only ${w.recs.length} writes in 30 s`);
    await sleep(10);
  }
  const [cmd, args] = jobCommand(kind, dir, point);
  await d.qmp.execute(cmd, args);
  let note: string;
  const status = (s: string) => (e: Ev) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 'j' && e.data.status === s;
  if (point.at === 'progress') {
    const j = await untilProgress(d.qmp, point.fraction);
    note = `killed at ${j['current-progress']}/${j['total-progress']}`;
  } else if (point.at === 'ready') {
    await waitFor(d.events, (e) => e.event === 'BLOCK_JOB_READY', 60_000);
    await sleep(point.delayMs);
    note = `killed ${point.delayMs} ms after READY`;
  } else {
    await waitFor(d.events, status('pending'), 60_000);
    const top = join(dir, 'top.qcow2');
    const old = backingName(top);
    // The reply never comes if the kill is first.
    d.qmp.execute('job-finalize', { id: 'j' }).catch(() => undefined);
    if (point.at === 'finalize') {
      await sleep(point.delayMs);
      note = `killed ${point.delayMs} ms after job-finalize`;
    } else {
      const end = Date.now() + 30_000;
      while (backingName(top) === old) {
        if (Date.now() > end) throw new Error(`top.qcow2 still names ${old}`);
        await new Promise((res) => setImmediate(res));
      }
      note = `killed as top's header came to name '${backingName(top)}'`;
    }
  }
  await d.proc.stop('SIGKILL');
  await w.finished();
  c.destroy();
  d.qmp.close();
  const recs = w.recs;
  expect(recs.filter((r) => r.state === 'failed')).toEqual([]);
  return { recs, note: `${note}; ${recs.length} writes, ${recs.filter((r) => r.state === 'durable').length} durable` };
}

/** The chain's guest view through qemu-img convert, and through blockd again over NBD (both must agree). */
async function reopen(dir: string): Promise<Buffer> {
  const raw = join(dir, 'view.raw');
  run('qemu-img', ['convert', '-O', 'raw', join(dir, 'top.qcow2'), raw]);
  const byQemu = readFileSync(raw);
  unlinkSync(raw);
  const sock = join(dir, 'nbd2.sock');
  const b = await startDaemon('blockd', [
    '--blockdev', `driver=file,node-name=top-file,filename=${join(dir, 'top.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=top,file=top-file,read-only=on',
    '--nbd-server', `addr.type=unix,addr.path=${sock}`,
    '--export', 'type=nbd,id=e0,node-name=top,name=disk',
  ], sock);
  cleanup.push(() => b.stop().then(() => undefined));
  const c = new RawClient(sock);
  expect(await rawNegotiate(c, 'disk')).toBe(SIZE);
  const byBlockd = await readAll(c, SIZE);
  c.destroy();
  await b.stop();
  expect(byBlockd.equals(byQemu), 'blockd and qemu-img read the chain differently').toBe(true);
  return byQemu;
}

const cleanup = cleanupsAfterEach();

describe('blockd killed during stream and commit', () => {
  const kinds: Kind[] = ['stream', 'stream to base', 'intermediate commit', 'active commit'];
  for (const kind of kinds) {
    points(kind).forEach((point, i) => {
      const label = point.at === 'progress' ? `${Math.round(point.fraction * 100)}% through the copy`
        : point.at === 'relink' ? 'as the backing link is rewritten'
        : `${point.delayMs} ms after ${point.at === 'ready' ? 'READY' : 'job-finalize'}`;
      it(`${kind}, killed ${label}: every image checks clean and the chain reads as the model allows`, async () => {
        const dir = tempDir('blockd-live-crash-');
        const original = makeChain(dir);
        const { recs, note } = await crashDuring(dir, kind, point, 1000 * kinds.indexOf(kind) + i + 1);
        for (const img of ['top', 'mid', 'base']) {
          const r = tryRun('qemu-img', ['check', join(dir, `${img}.qcow2`)]);
          // 0: clean, 3: leaked clusters only. 2 would be corruption, 1 a check that could not finish.
          expect([0, 3], `${img}.qcow2 (${note}): ${r.stdout}${r.stderr}`).toContain(r.status);
        }
        const chain = run('qemu-img', ['info', '--backing-chain', '-U', join(dir, 'top.qcow2')]).match(/^image: .*$/gm)!.join(' ← ');
        const view = await reopen(dir);
        expect(violations(view, original, recs), `${note}; chain ${chain}`).toEqual([]);
        expect(recs.length).toBeGreaterThan(20);
      }, 120_000);
    });
  }
});
