/**
 * The model test as a fuzz target for the long runner
 * (`npm run fuzz -- --target model --minutes N`): fresh seeds, longer
 * sequences, shrunk failures kept in test/fuzz/corpus/model/ (replayed by
 * block-model.test.ts under npm test).
 */
import type { FuzzTarget } from '../fuzz/harness.ts';
import { scenarioArb, type Scenario } from './commands.ts';
import { checkScenario, newStats } from './check.ts';

export const modelStats = newStats();

export const modelTarget: FuzzTarget<Scenario> = {
  name: 'model',
  about: 'random read/write/zeroes/discard/flush/resize/snapshot/stream/commit sequences on raw and qcow2 chains, against an in-memory model',
  arbitrary: () => scenarioArb(60, 10),
  check: async (s) => { await checkScenario(s, modelStats); },
  runs: 12,
  report: () => `${modelStats.sequences} sequences, ${modelStats.steps} steps (${modelStats.skipped} not applicable, skipped), ${modelStats.jobs} jobs, ${modelStats.qsdReruns} leak comparisons with qsd`,
};
