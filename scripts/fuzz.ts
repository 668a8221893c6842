/**
 * Long fuzz runs: `npm run fuzz -- --minutes N [--target NAME] [--seed S]`.
 *
 * Runs every target of test/fuzz (round robin, batches of fresh seeds) until
 * the time is up, prints the inputs tried per target, and writes each
 * failure, shrunk by fast-check, to test/fuzz/corpus/<target>/seed-<seed>.json,
 * which `npm test` then replays. A target that failed is not run again this
 * session (its failure is what to fix). Exit status 1 if anything failed.
 */
import fc from 'fast-check';
import { TARGETS, ASYNC_TARGETS } from '../test/fuzz/targets/index.ts';
import { keepCase, propertyOf, type FuzzTarget } from '../test/fuzz/harness.ts';
import { modelTarget } from '../test/model/target.ts';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

const minutes = Number(arg('minutes') ?? 1);
const only = arg('target');
let seed = Number(arg('seed') ?? Date.now() % 2 ** 31);
// The block-layer model test (test/model) runs a daemon per input: a target of its own, async.
const ASYNC = new Set([...ASYNC_TARGETS, 'model']);
// fast-check's time limit stops waiting for an async run without stopping the run: a model
// input still has its daemon and scratch directory. Each slice waits for its last run to end.
let lastRun: Promise<unknown> = Promise.resolve();
const tracked = <T>(t: FuzzTarget<T>): FuzzTarget<T> =>
  ({ ...t, check: (x: T) => { const run = Promise.resolve(t.check(x)); lastRun = run.catch(() => undefined); return run; } });
const ALL = [...TARGETS, modelTarget as unknown as FuzzTarget<never>].map((t) => (ASYNC.has(t.name) ? tracked(t) : t));
const targets = ALL.filter((t) => !only || t.name === only);
if (targets.length === 0) { console.error(`no target ${only}; targets: ${ALL.map((t) => t.name).join(', ')}`); process.exit(2); }

const stats = new Map(targets.map((t) => [t.name, { runs: 0, failures: 0, ms: 0 }]));
const failed = new Set<string>();
const deadline = Date.now() + minutes * 60_000;
const sliceMs = Math.max(2000, Math.min(30_000, (minutes * 60_000) / targets.length / 10));

console.log(`fuzzing ${targets.length} targets for ${minutes} min, first seed ${seed}`);
for (const t of targets) await t.setup?.();
while (Date.now() < deadline && failed.size < targets.length) {
  for (const t of targets) {
    if (failed.has(t.name) || Date.now() >= deadline) continue;
    const s = stats.get(t.name)!;
    const start = Date.now();
    const params = { seed, numRuns: 1_000_000, interruptAfterTimeLimit: Math.min(sliceMs, deadline - Date.now()), markInterruptAsFailure: false };
    const details = ASYNC.has(t.name)
      ? await fc.check(propertyOf(t, true) as fc.IAsyncProperty<[never]>, params)
      : fc.check(propertyOf(t, false) as fc.IProperty<[never]>, params);
    await lastRun;
    s.runs += details.numRuns;
    s.ms += Date.now() - start;
    if (details.failed && details.counterexample) {
      s.failures++;
      failed.add(t.name);
      const err = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
      const file = keepCase(t.name, details.counterexample[0], err.split('\n')[0]!.slice(0, 300), seed);
      console.log(`FAIL ${t.name} (seed ${seed}, path ${details.counterexamplePath}): ${err.split('\n')[0]}\n  shrunk case kept in ${file}`);
    }
    seed = (seed + 1) >>> 0;
  }
}
for (const t of targets) await t.teardown?.();

console.log('\ntarget              inputs tried   failures   inputs/s');
for (const t of targets) {
  const s = stats.get(t.name)!;
  console.log(`${t.name.padEnd(20)}${String(s.runs).padStart(12)}${String(s.failures).padStart(11)}${String(Math.round(s.runs / Math.max(1, s.ms / 1000))).padStart(11)}`);
}
const total = [...stats.values()].reduce((a, s) => a + s.runs, 0);
for (const t of targets) if (t.report) console.log(`${t.name}: ${t.report()}`);
console.log(`total ${total} inputs, ${failed.size} target(s) failed`);
process.exit(failed.size ? 1 : 0);
