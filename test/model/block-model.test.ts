/**
 * Model-based tests of the block layer (see README.md here): every kept case
 * of test/fuzz/corpus/model, then a bounded number of seeded random sequences
 * (MODEL_SEED, MODEL_RUNS override). A failure prints the seed, the path and
 * the shrunk sequence; keep it with `npm run fuzz -- --target model --seed S`
 * (which writes the corpus file) or by hand in test/fuzz/corpus/model/.
 */
import { describe, it } from 'vitest';
import fc from 'fast-check';
import { corpusOf } from '../fuzz/harness.ts';
import { scenarioArb, type Scenario } from './commands.ts';
import { checkScenario, newStats } from './check.ts';

const SEED = Number(process.env.MODEL_SEED ?? 0x5eed17);
// Seeded random sequences under plain npm test (about 1.3 s each here); `npm run fuzz -- --target model` runs long.
const RUNS = Number(process.env.MODEL_RUNS ?? 20);

describe('block-layer model', () => {
  for (const c of corpusOf('model')) {
    it(`corpus ${c.file}: ${c.note}`, async () => { await checkScenario(c.input as Scenario); }, 120_000);
  }

  if (RUNS > 0) it(`${RUNS} seeded sequences (seed ${SEED}) on blockd match the model, qemu-img check and compare`, async () => {
    const stats = newStats();
    await fc.assert(fc.asyncProperty(scenarioArb(40, 15), async (s) => { await checkScenario(s, stats); }), { seed: SEED, numRuns: RUNS, endOnFailure: false });
    console.log(`model: ${stats.sequences} sequences, ${stats.steps} steps, ${stats.jobs} jobs, ${stats.qsdReruns} leak comparisons with qsd`);
  }, 900_000);
});
