/**
 * Write interop with qemu-storage-daemon: two identical fresh qcow2 images
 * (with and without a backing file, cluster sizes 512 B to 2 MiB), one served
 * by blockd and one by qsd with the same arguments. A libnbd client applies the
 * same seeded sequence to both (writes of random data at unaligned offsets,
 * write-zeroes with and without may-trim and fast-zero, trims, flushes, some
 * FUA; disjoint requests of a batch in flight together) and compares each
 * request's result and the whole block-status map after every batch. After
 * both daemons stop, both images are clean under `qemu-img check`, identical
 * under `qemu-img compare` (also in strict mode, which compares allocation), and
 * `qemu-img map` classifies every range the same (host offsets aside: requests
 * in flight together allocate in either order).
 */
import { describe, it, expect } from 'vitest';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { SYSTEM_PYTHON, run, tryRun } from '../helpers/tools.ts';
import { rng } from '../helpers/qcow2.ts';

interface Case { cluster: number; size: number; backing: boolean; unmap: boolean; seed: number }

const KiB = 1024;
const MiB = 1024 * KiB;

// discard=unmap decides whether trims and may-trim zeroes free clusters at all
// (without it both daemons ignore trims and keep zeroed clusters allocated):
// each cluster size runs with one setting, each setting with and without backing.
const CASES: Case[] = [512, 4 * KiB, 64 * KiB, 2 * MiB].flatMap((cluster, i) => [false, true].map((backing) => ({
  cluster,
  size: cluster === 512 ? 3 * MiB : cluster === 4 * KiB ? 8 * MiB : cluster === 64 * KiB ? 16 * MiB : 24 * MiB,
  backing,
  unmap: i % 2 === 0,
  seed: 1000 + i * 10 + (backing ? 1 : 0),
})));

const OPS = 110;

type Op =
  | { t: 'write'; off: number; len: number; seed: number; fua: boolean }
  | { t: 'zero'; off: number; len: number; noHole: boolean; fast: boolean; fua: boolean }
  | { t: 'trim'; off: number; len: number; fua: boolean }
  | { t: 'flush' };

/**
 * Batches of requests with disjoint byte ranges (a client may have those in
 * flight together; overlapping ones would leave the result to arrival order).
 * Ranges are unaligned most of the time, whole clusters some of the time so the
 * zero-cluster and freeing paths run, and now and then longer than a cluster.
 */
function sequence(c: Case): Op[][] {
  const r = rng(c.seed);
  const pick = (n: number) => Math.floor(r() * n);
  const range = (): [number, number] => {
    const k = r();
    if (k < 0.3) {
      const n = 1 + pick(Math.max(1, Math.min(4, MiB / c.cluster)));
      const off = pick(c.size / c.cluster - n + 1) * c.cluster;
      return [off, n * c.cluster];
    }
    const max = k < 0.8 ? 2 * c.cluster : Math.min(c.size / 4, 2 * MiB);
    const len = 1 + pick(Math.min(max, 2 * MiB));
    return [pick(c.size - len + 1), len];
  };
  const batches: Op[][] = [];
  let batch: Op[] = [];
  let busy: [number, number][] = [];
  for (let i = 0; i < OPS; i++) {
    const k = r();
    let op: Op;
    if (k < 0.08) op = { t: 'flush' };
    else {
      const [off, len] = range();
      const fua = r() < 0.15;
      if (k < 0.55) op = { t: 'write', off, len, seed: c.seed * 1000 + i, fua };
      else if (k < 0.85) op = { t: 'zero', off, len, noHole: r() < 0.5, fast: r() < 0.3, fua };
      else op = { t: 'trim', off, len, fua };
    }
    const span = claim(op, c.cluster);
    if (busy.some(([s, e]) => s < span[1] && span[0] < e) || batch.length >= 1 + pick(6)) {
      batches.push(batch);
      batch = [];
      busy = [];
    }
    batch.push(op);
    busy.push(span);
  }
  batches.push(batch);
  return batches;
}

/**
 * The range a request must not share with another one in flight. A partial
 * write-zeroes looks at the rest of its cluster (is it zero already? then the
 * whole cluster becomes a zero cluster), so a concurrent write there would make
 * the outcome, and a fast zero's errno, depend on timing: it claims whole clusters.
 */
function claim(op: Op, cluster: number): [number, number] {
  if (op.t === 'flush') return [0, 0];
  if (op.t !== 'zero') return [op.off, op.off + op.len];
  return [Math.floor(op.off / cluster) * cluster, Math.ceil((op.off + op.len) / cluster) * cluster];
}

/**
 * Applies the batches to both exports (first all of a batch on one, then on the
 * other) and prints, per request, both errnos, and after each batch both block
 * status maps (base:allocation and qemu:allocation-depth), adjacent extents with
 * the same flags merged. A fast zero refused with ENOTSUP is retried without
 * fast-zero, as a client such as nbdcopy does.
 */
const CLIENT = `
import errno, json, random, sys
import nbd
spec = json.loads(sys.stdin.read())
SIZE = spec["size"]
hs = []
for u in spec["uris"]:
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.add_meta_context("qemu:allocation-depth")
    h.connect_uri(u)
    assert h.get_size() == SIZE
    hs.append(h)
out = {"caps": [[h.can_fua(), h.can_trim(), h.can_zero(), h.can_fast_zero(), h.can_flush()] for h in hs], "errors": [], "maps": []}

def data(op):
    return random.Random(op["seed"]).randbytes(op["len"])

def flags(op):
    f = nbd.CMD_FLAG_FUA if op.get("fua") else 0
    if op.get("noHole"): f |= nbd.CMD_FLAG_NO_HOLE
    if op.get("fast"): f |= nbd.CMD_FLAG_FAST_ZERO
    return f

def issue(h, op, f):
    t = op["t"]
    if t == "write": return h.aio_pwrite(data(op), op["off"], flags=f)
    if t == "zero": return h.aio_zero(op["len"], op["off"], flags=f)
    if t == "trim": return h.aio_trim(op["len"], op["off"], flags=f)
    return h.aio_flush()

def wait(h, cookie):
    while True:
        try:
            if h.aio_command_completed(cookie): return 0
        except nbd.Error as e:
            return e.errno or -1
        h.poll(-1)

def status_map(h):
    maps = {"base:allocation": [], "qemu:allocation-depth": []}
    off = 0
    while off < SIZE:
        got = {}
        def cb(meta, o, ents, err):
            got[meta] = list(ents)
            return 0
        h.block_status(min(SIZE - off, 1 << 30), off, cb)
        ends = []
        for meta, ents in got.items():
            pos = off
            for i in range(0, len(ents), 2):
                maps[meta].append([pos, ents[i], ents[i + 1]])
                pos += ents[i]
            ends.append(pos)
        end = min(min(ends), SIZE)
        for meta in maps:
            # Keep only what every context covered; the next call starts there.
            m = maps[meta]
            while m and m[-1][0] >= end: m.pop()
            if m and m[-1][0] + m[-1][1] > end: m[-1][1] = end - m[-1][0]
        assert end > off
        off = end
    merged = {}
    for meta, m in maps.items():
        r = []
        for e in m:
            if r and r[-1][2] == e[2]: r[-1][1] += e[1]
            else: r.append(e)
        merged[meta] = r
    return merged

for batch in spec["batches"]:
    for h in hs:
        errs = []
        cookies = [issue(h, op, flags(op)) for op in batch]
        for op, c in zip(batch, cookies):
            e = wait(h, c)
            if e in ("ENOTSUP", "EOPNOTSUPP") and op.get("fast"):
                e = "ENOTSUP, then " + str(wait(h, issue(h, op, flags(op) & ~nbd.CMD_FLAG_FAST_ZERO)))
            errs.append(e)
        out["errors"].append(errs)
    out["maps"].append([status_map(h) for h in hs])
for h in hs:
    h.shutdown()
print(json.dumps(out))
`;

interface ClientOut { caps: boolean[][]; errors: (number | string)[][]; maps: [Record<string, number[][]>, Record<string, number[][]>][] }

function qemuCheck(file: string): { errors: number; leaks: number; raw: string } {
  const r = tryRun('qemu-img', ['check', '--output=json', file]);
  const j = JSON.parse(r.stdout || '{}') as { 'check-errors'?: number; corruptions?: number; leaks?: number };
  return { errors: (j['check-errors'] ?? 0) + (j.corruptions ?? 0) + (r.status === 0 ? 0 : 1), leaks: j.leaks ?? 0, raw: r.stdout + r.stderr };
}

interface MapEntry { start: number; length: number; depth: number; present: boolean; zero: boolean; data: boolean; offset?: number }

/**
 * `qemu-img map` with whether a range has host clusters (a zero cluster that
 * kept its cluster has) but not where, adjacent entries of the same kind merged.
 */
function classification(file: string): (Omit<MapEntry, 'offset'> & { mapped: boolean })[] {
  const out: ReturnType<typeof classification> = [];
  for (const { start, length, depth, present, zero, data, offset } of JSON.parse(run('qemu-img', ['map', '--output=json', file])) as MapEntry[]) {
    const e = { start, length, depth, present, zero, data, mapped: offset !== undefined };
    const last = out.at(-1);
    if (last && (['depth', 'present', 'zero', 'data', 'mapped'] as const).every((k) => last[k] === e[k])) last.length += length;
    else out.push(e);
  }
  return out;
}

/** A patterned base image: data, zeroes written by qemu-io, and holes. */
function makeBase(file: string, size: number, seed: number): void {
  run('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(size)]);
  const r = rng(seed);
  const io: string[] = [];
  for (let i = 0; i < 16; i++) {
    const len = (1 + Math.floor(r() * 64)) * 4 * KiB;
    const off = Math.floor(r() * ((size - len) / 512)) * 512;
    io.push('-c', i % 5 === 4 ? `write -z ${off} ${len}` : `write -P ${1 + Math.floor(r() * 250)} ${off} ${len}`);
  }
  run('qemu-io', ['-f', 'qcow2', ...io, file]);
}

function daemonArgs(dir: string, c: Case): string[] {
  const unmap = c.unmap ? ',discard=unmap' : '';
  return [
    '--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'top.qcow2')}${unmap}`,
    '--blockdev', `driver=qcow2,node-name=q0,file=f0${unmap}`,
    '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
    '--export', 'type=nbd,id=e0,node-name=q0,name=disk,writable=on,allocation-depth=on',
  ];
}

describe('qcow2 writes through blockd and through qemu-storage-daemon give the same image', () => {
  it('each sequence has every kind of request, unaligned ones, and batches in flight together', () => {
    for (const c of CASES) {
      const ops = sequence(c).flat();
      const has = (p: (o: Op) => boolean) => ops.some(p);
      const ranged = ops.filter((o) => o.t !== 'flush') as Exclude<Op, { t: 'flush' }>[];
      expect(has((o) => o.t === 'flush'), `seed ${c.seed}`).toBe(true);
      expect(has((o) => o.t === 'trim'), `seed ${c.seed}`).toBe(true);
      expect(has((o) => o.t === 'write' && o.fua), `seed ${c.seed}`).toBe(true);
      for (const noHole of [false, true]) for (const fast of [false, true]) {
        expect(has((o) => o.t === 'zero' && o.noHole === noHole && o.fast === fast), `seed ${c.seed}`).toBe(true);
      }
      expect(ranged.some((o) => o.off % c.cluster !== 0 && o.len % 512 !== 0)).toBe(true);
      expect(ranged.some((o) => o.off % c.cluster === 0 && o.len % c.cluster === 0)).toBe(true);
      expect(sequence(c).some((b) => b.length > 1)).toBe(true);
    }
  });

  for (const c of CASES) {
    const name = `cluster ${c.cluster >= MiB ? `${c.cluster / MiB} MiB` : c.cluster >= KiB ? `${c.cluster / KiB} KiB` : `${c.cluster} B`}, ${c.backing ? 'over a backing file' : 'no backing file'}, discard=${c.unmap ? 'unmap' : 'ignore'}`;
    it(name, async () => {
      const dir = tempDir();
      const create = ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${c.cluster}`];
      if (c.backing) {
        makeBase(join(dir, 'base.qcow2'), c.size, c.seed);
        create.push('-b', 'base.qcow2', '-F', 'qcow2');
      }
      run('qemu-img', [...create, join(dir, 'top.qcow2'), String(c.size)]);
      // Each daemon gets its own copy; the backing name is relative, so each chain stays in its folder.
      const dirs = { blockd: join(dir, 'blockd'), qsd: join(dir, 'qsd') };
      for (const d of Object.values(dirs)) {
        mkdirSync(d);
        for (const f of c.backing ? ['top.qcow2', 'base.qcow2'] : ['top.qcow2']) copyFileSync(join(dir, f), join(d, f));
      }
      const daemons: Running[] = [];
      const codes: (number | null)[] = [];
      let out!: ClientOut;
      const batches = sequence(c);
      try {
        daemons.push(await startDaemon('blockd', daemonArgs(dirs.blockd, c), join(dirs.blockd, 'nbd.sock')));
        daemons.push(await startDaemon('qsd', daemonArgs(dirs.qsd, c), join(dirs.qsd, 'nbd.sock')));
        const uris = [dirs.blockd, dirs.qsd].map((d) => `nbd+unix:///disk?socket=${join(d, 'nbd.sock')}`);
        const input = JSON.stringify({ uris, size: c.size, batches });
        out = JSON.parse(run(SYSTEM_PYTHON, ['-c', CLIENT], { input, timeout: 120_000 }));
      } finally {
        for (const d of daemons) codes.push(await d.stop());
      }
      // Both stopped cleanly (SIGTERM: everything written, the images closed).
      expect(codes, daemons.map((d) => d.stderr()).join('\n')).toEqual([0, 0]);
      expect(out.caps[0]).toEqual(out.caps[1]);
      expect(out.caps[0]).toEqual([true, true, true, true, true]);
      for (let b = 0; b < batches.length; b++) {
        // errors: per batch, blockd's list then qsd's.
        const [mine, theirs] = [out.errors[2 * b], out.errors[2 * b + 1]];
        expect(mine, `batch ${b}: ${JSON.stringify(batches[b])}`).toEqual(theirs);
        const [bm, qm] = out.maps[b];
        expect(bm, `block status after batch ${b}: ${JSON.stringify(batches[b])}`).toEqual(qm);
      }

      const [mineImg, theirImg] = [join(dirs.blockd, 'top.qcow2'), join(dirs.qsd, 'top.qcow2')];
      for (const img of [theirImg, mineImg]) {
        const chk = qemuCheck(img);
        expect(chk.errors, `${img}: ${chk.raw}`).toBe(0);
        expect(chk.leaks, `${img}: ${chk.raw}`).toBe(0);
      }
      const cmp = tryRun('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', mineImg, theirImg]);
      expect(cmp.stdout + cmp.stderr).toContain('Images are identical');
      expect(classification(mineImg)).toEqual(classification(theirImg));
      const strict = tryRun('qemu-img', ['compare', '-s', '-f', 'qcow2', '-F', 'qcow2', mineImg, theirImg]);
      expect(strict.stdout + strict.stderr).toContain('Images are identical');
    }, 60_000);
  }
});
