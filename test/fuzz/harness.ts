/**
 * The fuzz harness: targets, their seeded runs, and the corpus of shrunk
 * failures.
 *
 * A target is a fast-check arbitrary plus a check (a property: it throws when
 * the input breaks it). `npm test` (fuzz.test.ts) replays every corpus case,
 * then runs each target a bounded number of times from a fixed seed;
 * `npm run fuzz -- --minutes N` (scripts/fuzz.ts) runs them for longer from
 * fresh seeds and writes each failure, shrunk, to corpus/<target>/<name>.json.
 *
 * Inputs must survive JSON: bytes (Uint8Array) and bigints are encoded as
 * {"$bytes": hex} and {"$bigint": decimal}.
 */
import fc from 'fast-check';
import { mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlockError } from '../../src/util/errors.ts';

export interface FuzzTarget<T = unknown> {
  name: string;
  /** What the target feeds, for the listing. */
  about: string;
  arbitrary: () => fc.Arbitrary<T>;
  /** Throws when `input` breaks the property. */
  check: (input: T) => void | Promise<void>;
  /** Runs per `npm test` (bounded: keep the whole fuzz part of npm test under a minute). */
  runs: number;
  /** Once before any run / after the last one (a daemon, a server). */
  setup?: () => Promise<void>;
  teardown?: () => Promise<void>;
  /** A line of figures beyond the inputs tried (the model target: sequences, steps, jobs). */
  report?: () => string;
}

export const CORPUS_DIR = join(dirname(fileURLToPath(import.meta.url)), 'corpus');

export function encode(v: unknown): unknown {
  if (typeof v === 'bigint') return { $bigint: v.toString() };
  if (v instanceof Uint8Array) return { $bytes: Buffer.from(v).toString('hex') };
  if (Array.isArray(v)) return v.map(encode);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = encode(x);
    return out;
  }
  return v;
}

export function decode(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(decode);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if (typeof o.$bigint === 'string' && Object.keys(o).length === 1) return BigInt(o.$bigint);
    if (typeof o.$bytes === 'string' && Object.keys(o).length === 1) return new Uint8Array(Buffer.from(o.$bytes, 'hex'));
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(o)) out[k] = decode(x);
    return out;
  }
  return v;
}

export interface CorpusCase { file: string; target: string; note: string; input: unknown }

/** The kept cases of a target, decoded. */
export function corpusOf(target: string): CorpusCase[] {
  const dir = join(CORPUS_DIR, target);
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((f) => f.endsWith('.json')).sort().map((f) => {
    const j = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { target: string; note: string; input: unknown };
    return { file: f, target: j.target, note: j.note, input: decode(j.input) };
  });
}

/** Keeps a shrunk failing input; returns the file written. */
export function keepCase(target: string, input: unknown, note: string, seed: number): string {
  const dir = join(CORPUS_DIR, target);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `seed-${seed >>> 0}.json`);
  writeFileSync(file, JSON.stringify({ target, note, seed, input: encode(input) }, null, 1) + '\n');
  return file;
}

/**
 * The property of a target for fast-check: sync targets use fc.property,
 * async ones fc.asyncProperty (a check returning a promise).
 */
export function propertyOf<T>(t: FuzzTarget<T>, async: boolean): fc.IProperty<[T]> | fc.IAsyncProperty<[T]> {
  return async
    ? fc.asyncProperty(t.arbitrary(), async (x) => { await t.check(x); })
    : fc.property(t.arbitrary(), (x) => { const r = t.check(x); if (r instanceof Promise) throw new Error('async check in a sync target'); });
}

/**
 * What a parser may throw at bad input: a BlockError (the block layer's
 * vocabulary, with QEMU's text) with a message. A TypeError, RangeError
 * (Buffer reads past the end), an assertion failure or anything else is a
 * bug and is rethrown.
 */
export function expectCleanRefusal(e: unknown, what: string, classes: readonly (new (...a: never[]) => Error)[] = [BlockError]): void {
  if (!classes.some((c) => e instanceof c) || !(e as Error).message) {
    const err = e instanceof Error ? e : new Error(String(e));
    throw new Error(`${what}: unexpected ${err.name}: ${err.message}`, { cause: e });
  }
}

/** Runs `fn`; a clean refusal is `refused`, a return is `ok`, anything else throws. */
export function outcome<T>(fn: () => T, what: string, classes?: readonly (new (...a: never[]) => Error)[]): { ok: T } | { refused: Error } {
  try {
    return { ok: fn() };
  } catch (e) {
    expectCleanRefusal(e, what, classes);
    return { refused: e as Error };
  }
}

export async function outcomeAsync<T>(fn: () => Promise<T>, what: string, classes?: readonly (new (...a: never[]) => Error)[]): Promise<{ ok: T } | { refused: Error }> {
  try {
    return { ok: await fn() };
  } catch (e) {
    expectCleanRefusal(e, what, classes);
    return { refused: e as Error };
  }
}

/** Splits `b` into pieces at the given cut points (any numbers: taken modulo the length). */
export function splitAt(b: Buffer, cuts: number[]): Buffer[] {
  if (b.length === 0) return [b];
  const points = [...new Set(cuts.map((c) => c % (b.length + 1)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let at = 0;
  for (const p of points) { if (p > at) { out.push(b.subarray(at, p)); at = p; } }
  if (at < b.length) out.push(b.subarray(at));
  return out;
}

export const u32 = (n: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; };
export const u16 = (n: number): Buffer => { const b = Buffer.alloc(2); b.writeUInt16BE(n & 0xffff); return b; };
