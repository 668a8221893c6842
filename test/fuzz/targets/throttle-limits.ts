/**
 * Throttle limits (src/util/throttle/config.ts): ThrottleLimits applied to a
 * config, as throttle groups and the throttle filter take them.
 *
 * Input: any subset of the members with values around every boundary
 * (negative, 0, 1, 2^32, THROTTLE_VALUE_MAX and beyond, fractions).
 *
 * Properties: applyLimits returns a config or refuses with a BlockError;
 * what it returns passes validateConfig, reads back the members it was given
 * (configToLimits), and the input config is left alone either way.
 */
import fc from 'fast-check';
import { LIMIT_NAMES, THROTTLE_VALUE_MAX, applyLimits, configToLimits, emptyConfig, validateConfig, type ThrottleLimits } from '../../../src/util/throttle/config.ts';
import { outcome, type FuzzTarget } from '../harness.ts';

const valueArb = fc.oneof(
  fc.constantFrom(0, 1, 2, -1, 2 ** 32 - 1, 2 ** 32, THROTTLE_VALUE_MAX, THROTTLE_VALUE_MAX + 1, 2 ** 53 - 1, -(2 ** 53)),
  fc.integer({ min: 0, max: 10_000 }),
  fc.integer(),
);

export type ThrottleInput = { base: ThrottleLimits; limits: ThrottleLimits };

const limitsArb = fc.dictionary(fc.constantFrom(...LIMIT_NAMES), valueArb, { maxKeys: 6 }) as fc.Arbitrary<ThrottleLimits>;

export const throttleLimits: FuzzTarget<ThrottleInput> = {
  name: 'throttle-limits',
  about: 'throttle limits: any members at every boundary, applied on top of a valid config',
  runs: 500,
  arbitrary: () => fc.record({ base: limitsArb, limits: limitsArb }),
  check(x) {
    const b = outcome(() => applyLimits(emptyConfig(), x.base), 'applyLimits(base)');
    const base = 'ok' in b ? b.ok : emptyConfig();
    const before = JSON.stringify(base);
    const r = outcome(() => applyLimits(base, x.limits), 'applyLimits');
    if (JSON.stringify(base) !== before) throw new Error('applyLimits changed its input config');
    if ('refused' in r) return;
    validateConfig(r.ok);
    const back = configToLimits(r.ok);
    for (const [k, v] of Object.entries(x.limits)) {
      if (back[k as keyof typeof back] !== v) throw new Error(`${k}: set ${v}, reads back ${back[k as keyof typeof back]}`);
    }
  },
};
