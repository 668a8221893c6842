/**
 * The fuzz targets under npm test: every kept corpus case is replayed, then
 * each property runs a bounded number of times from a fixed seed (FUZZ_SEED
 * overrides it), so a failure here reproduces exactly. The long runs are
 * `npm run fuzz -- --minutes N` (scripts/fuzz.ts).
 */
import { describe, it, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { TARGETS, ASYNC_TARGETS } from './targets/index.ts';
import { corpusOf, propertyOf } from './harness.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed17);

for (const t of TARGETS) {
  describe(`fuzz ${t.name}`, () => {
    beforeAll(async () => { await t.setup?.(); });
    afterAll(async () => { await t.teardown?.(); });

    for (const c of corpusOf(t.name)) {
      it(`corpus ${c.file}: ${c.note}`, async () => { await t.check(c.input as never); });
    }

    it(`${t.runs} seeded inputs (seed ${SEED})`, async () => {
      const params = { seed: SEED, numRuns: t.runs, endOnFailure: false };
      if (ASYNC_TARGETS.has(t.name)) await fc.assert(propertyOf(t, true) as fc.IAsyncProperty<[never]>, params);
      else fc.assert(propertyOf(t, false) as fc.IProperty<[never]>, params);
    }, 120_000);
  });
}
