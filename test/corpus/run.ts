/**
 * The corrupted-image corpus: `count` qcow2 images mutated (seeded) from the
 * valid bases, each opened read-write through blockd's block layer (the real
 * qcow2 and file drivers, in process), read, written (plain, FUA, zeroes,
 * discard), flushed and closed.
 *
 * Each image must end in one of: works (every operation succeeded), refused
 * (open failed with a BlockError), corrupt (blockd marked it corrupt:
 * BLOCK_IMAGE_CORRUPTED), io-error (an operation failed with a BlockError).
 * The failures counted: crash (anything else thrown, or an uncaught
 * exception), hang (an image not done in 20 s), outside-write (a file other
 * than the image changed: the bases, the backing file, a sentinel), damaged
 * (blockd reported nothing wrong, yet qemu-img check counts more corruptions
 * after than before).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';
import { ReqFlag } from '../../src/blockdev/request.ts';
import { BlockError } from '../../src/util/errors.ts';
import { makeBases } from './bases.ts';
import { mutate, prng } from './mutate.ts';

export const GOOD = ['works', 'refused', 'corrupt', 'io-error'] as const;
export const BAD = ['crash', 'hang', 'outside-write', 'damaged'] as const;
export type Outcome = typeof GOOD[number] | typeof BAD[number];

export interface CorpusResult {
  images: number;
  counts: Record<Outcome, number>;
  /** Most frequent refusal / error texts. */
  messages: Map<string, number>;
  /** One line per bad outcome: seed, base, mutations, what happened. */
  failures: string[];
  ms: number;
  /** 'works' images that blockd left with more qemu-img check corruptions, exactly as QEMU's same writes did. */
  likeQemu: number;
  /** The outcome of each image, by seed. */
  bySeed: Map<number, Outcome>;
}

const IMAGE_TIMEOUT_MS = 20_000;
const SPAN = 8 << 20;

function checkCorruptions(file: string): number {
  let out: string;
  try {
    out = execFileSync('qemu-img', ['check', '-f', 'qcow2', '--output=json', file], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  } catch (e) {
    out = String((e as { stdout?: Buffer }).stdout ?? '');
  }
  try {
    const j = JSON.parse(out) as { corruptions?: number; 'check-errors'?: number };
    return (j.corruptions ?? 0) + (j['check-errors'] ?? 0);
  } catch {
    return Infinity; // qemu-img could not check it at all
  }
}

function fingerprint(dir: string, except: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const f of readdirSync(dir)) {
    if (f === except) continue;
    const p = join(dir, f);
    const st = statSync(p);
    m.set(f, `${st.size}:${st.mtimeMs}`);
  }
  return m;
}

const hashOf = (p: string) => createHash('sha1').update(readFileSync(p)).digest('hex');

type Step = { outcome: 'works' | 'refused' | 'corrupt' | 'io-error' | 'crash'; message?: string; span?: number };

interface PlannedWrite { kind: 'write' | 'zeroes' | 'discard'; off: number; len: number; fill: number; fua: boolean }

/** The writes done to an image of `span` readable bytes (the same for blockd and for the qemu-io comparison). */
export function writePlan(seed: number, span: number): PlannedWrite[] {
  const r = prng(seed ^ 0x51ed270b);
  const out: PlannedWrite[] = [];
  for (let i = 0; i < 6 && span >= 65536; i++) {
    const len = 4096 * (1 + Math.floor(r() * 16));
    const off = Math.floor((r() * (span - len)) / 512) * 512;
    out.push({ kind: (['write', 'zeroes', 'discard'] as const)[i % 3]!, off, len, fill: 0xc0 + i, fua: i === 3 });
  }
  return out;
}

/**
 * The same writes through QEMU (qemu-io) on a copy: did QEMU detect anything,
 * and how many corruptions does qemu-img check count afterwards?
 */
function qemuReference(file: string, seed: number, span: number): { detected: boolean; corruptions: number } {
  const cmds = writePlan(seed, span).map((w) => (w.kind === 'write' ? `write ${w.fua ? '-f ' : ''}-P ${w.fill} ${w.off} ${w.len}`
    : w.kind === 'zeroes' ? `write -z ${w.off} ${w.len}` : `discard ${w.off} ${w.len}`));
  let text = '';
  try {
    text = execFileSync('qemu-io', ['-f', 'qcow2', ...[...cmds, 'flush'].flatMap((c) => ['-c', c]), file], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 }).toString();
  } catch (e) {
    const x = e as { stdout?: Buffer; stderr?: Buffer };
    text = `${x.stdout ?? ''}${x.stderr ?? ''}`;
  }
  return { detected: /corrupt|Could not open|error/i.test(text), corruptions: checkCorruptions(file) };
}

async function exercise(file: string, seed: number): Promise<Step> {
  let corrupt: string | undefined;
  const g = new BlockGraph({
    log: pino({ level: 'silent' }),
    events: { emit: (ev, data) => { if (ev === 'BLOCK_IMAGE_CORRUPTED') corrupt ??= String(data.msg); } },
  });
  registerDrivers(g);
  const crash = (e: unknown): Step => ({ outcome: 'crash', message: e instanceof Error ? `${e.name}: ${e.message}\n${e.stack}` : String(e) });
  let node;
  try {
    node = await g.add({ driver: 'qcow2', 'node-name': 'q', file: { driver: 'file', filename: file } });
  } catch (e) {
    if (e instanceof BlockError && e.message) return { outcome: 'refused', message: e.message };
    return crash(e);
  }
  const r = prng(seed ^ 0x9e3779b9);
  let firstError: string | undefined;
  const op = async (fn: () => Promise<unknown>): Promise<Step | undefined> => {
    try {
      await fn();
    } catch (e) {
      if (!(e instanceof BlockError) || !e.message) return crash(e);
      firstError ??= e.message;
    }
    return undefined;
  };
  const size = node.length();
  const span = Math.min(size, SPAN);
  const steps: (() => Promise<unknown>)[] = [];
  for (let off = 0; off < span; off += 256 << 10) steps.push(() => node.read(off, Buffer.alloc(Math.min(256 << 10, span - off))));
  for (let i = 0; i < 3 && size > 512; i++) {
    const off = Math.floor((r() * (size - 512)) / 512) * 512;
    steps.push(() => node.read(off, Buffer.alloc(512)));
  }
  for (const w of writePlan(seed, span)) {
    if (w.kind === 'write') steps.push(() => node.write(w.off, Buffer.alloc(w.len, w.fill), w.fua ? ReqFlag.FUA : 0));
    else if (w.kind === 'zeroes') steps.push(() => node.writeZeroes(w.off, w.len));
    else steps.push(() => node.discard(w.off, w.len));
  }
  steps.push(() => node.flush());
  for (const s of steps) {
    const bad = await op(s);
    if (bad) return bad;
  }
  const closing = await op(() => g.del('q'));
  if (closing) return closing;
  // Whatever happened, nothing may stay open (a node left behind keeps the file and its lock).
  if (g.nodes.size) return { outcome: 'crash', message: `nodes left open after blockdev-del: ${[...g.nodes.keys()].join(', ')}` };
  if (corrupt !== undefined) return { outcome: 'corrupt', message: corrupt };
  if (firstError !== undefined) return { outcome: 'io-error', message: firstError };
  return { outcome: 'works', span };
}

/** `images` images from seeds `seed`, `seed`+1, ...; or exactly `seeds` (regression cases). */
export async function runCorpus(opts: { dir: string; images: number; seed: number; seeds?: number[]; progress?: (done: number) => void }): Promise<CorpusResult> {
  const t0 = Date.now();
  const { bases, backing } = makeBases(opts.dir);
  const sentinel = join(opts.dir, 'sentinel.bin');
  writeFileSync(sentinel, Buffer.alloc(65536, 0xee));
  const baseBytes = bases.map((b) => ({ ...b, bytes: readFileSync(b.file) }));
  const hashes = new Map([...bases.map((b) => b.file), backing, sentinel].map((p) => [p, hashOf(p)]));
  const counts = Object.fromEntries([...GOOD, ...BAD].map((k) => [k, 0])) as Record<Outcome, number>;
  const messages = new Map<string, number>();
  const failures: string[] = [];
  const bySeed = new Map<number, Outcome>();
  let imageName = '';
  let image = '';
  let likeQemu = 0;
  let current = '';
  const uncaught = (e: unknown) => { counts.crash++; failures.push(`${current}: uncaught ${e instanceof Error ? e.stack : String(e)}`); };
  const seeds = opts.seeds ?? Array.from({ length: opts.images }, (_, i) => (opts.seed + i) >>> 0);
  process.on('uncaughtException', uncaught);
  process.on('unhandledRejection', uncaught);
  try {
    for (let i = 0; i < seeds.length; i++) {
      const seed = seeds[i]!;
      // The seed alone names the image: its base and its mutations.
      const base = baseBytes[(seed + baseBytes.length - 1) % baseBytes.length]!;
      const m = mutate(base.bytes, seed);
      current = `seed ${seed} base ${base.name} [${m.what.join('; ')}]`;
      if (image) rmSync(image, { force: true });
      imageName = `image-${i}.qcow2`;
      image = join(opts.dir, imageName);
      writeFileSync(image, m.img);
      const reference = join(opts.dir, 'reference.qcow2');
      const before = fingerprint(opts.dir, imageName);
      const corruptionsBefore = checkCorruptions(image);
      let timer: NodeJS.Timeout | undefined;
      const step = await Promise.race([
        exercise(image, seed),
        new Promise<'hang'>((res) => { timer = setTimeout(() => res('hang'), IMAGE_TIMEOUT_MS); }),
      ]).finally(() => clearTimeout(timer));
      let outcome: Outcome = step === 'hang' ? 'hang' : step.outcome;
      let detail = step === 'hang' ? 'not done in 20 s' : step.message ?? '';
      const after = fingerprint(opts.dir, imageName);
      const changed = [...before].filter(([f, v]) => after.get(f) !== v).map(([f]) => f);
      if (changed.length) { outcome = 'outside-write'; detail = `changed: ${changed.join(', ')}`; }
      if (outcome === 'works' && corruptionsBefore !== Infinity) {
        const corruptionsAfter = checkCorruptions(image);
        if (corruptionsAfter > corruptionsBefore) {
          // Corrupt metadata that nothing can tell from valid (an L1 entry pointing at a data cluster) is written
          // through by QEMU too: damage counts only where QEMU, given the same writes, detects it or does none.
          writeFileSync(reference, m.img);
          const q = qemuReference(reference, seed, step !== 'hang' ? step.span ?? 0 : 0);
          rmSync(reference, { force: true });
          if (q.detected || q.corruptions <= corruptionsBefore) {
            outcome = 'damaged';
            detail = `qemu-img check corruptions ${corruptionsBefore} -> ${corruptionsAfter}; QEMU with the same writes: ${q.detected ? 'detected it' : `${q.corruptions}`}`;
          } else likeQemu++;
        }
      }
      counts[outcome]++;
      bySeed.set(seed, outcome);
      if ((BAD as readonly string[]).includes(outcome)) failures.push(`${current}: ${outcome}: ${detail}`);
      else if (step !== 'hang' && step.message) {
        const key = `${outcome}: ${step.message.replace(/0x[0-9a-f]+|\d+/g, 'N')}`;
        messages.set(key, (messages.get(key) ?? 0) + 1);
      }
      opts.progress?.(i + 1);
    }
  } finally {
    process.off('uncaughtException', uncaught);
    process.off('unhandledRejection', uncaught);
    if (image) rmSync(image, { force: true });
  }
  for (const [p, h] of hashes) if (hashOf(p) !== h) { counts['outside-write']++; failures.push(`${p} changed during the run`); }
  return { images: seeds.length, counts, messages, failures, ms: Date.now() - t0, likeQemu, bySeed };
}

export function formatResult(r: CorpusResult, top = 12): string {
  const lines = [`${r.images} mutated qcow2 images in ${(r.ms / 1000).toFixed(1)} s`];
  lines.push(...[...GOOD, ...BAD].map((k) => `  ${k.padEnd(14)}${String(r.counts[k]).padStart(6)}`));
  lines.push(`  (of the works: ${r.likeQemu} written through undetectably corrupt metadata, as QEMU's same writes are)`);
  lines.push('most frequent texts:');
  lines.push(...[...r.messages].sort((a, b) => b[1] - a[1]).slice(0, top).map(([m, n]) => `  ${String(n).padStart(5)}  ${m.slice(0, 150)}`));
  if (r.failures.length) lines.push('FAILURES:', ...r.failures.slice(0, 30).map((f) => `  ${f.slice(0, 2000)}`));
  return lines.join('\n');
}
