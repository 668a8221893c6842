/**
 * throttle-group objects (QEMU's block/throttle-groups.c): a set of limits
 * shared by the throttle filter nodes that name the group. The state is a
 * ThrottleGroup (src/util/throttle/group.ts), which the filter joins.
 *
 * Properties, as qsd 7.2 has them:
 * - `limits` (ThrottleLimits): merged into the current limits and the whole
 *   validated each time it is set; settable at run time with qom-set
 *   (the buckets restart empty);
 * - the legacy `x-<limit>` aliases of each member: only at creation, each
 *   value checked alone, the whole validated once all are set.
 * At creation the properties are applied in QEMU's dictionary order (so of
 * `x-bps-total` and `limits.bps-total` the x- one wins, and of `x-iops-total`
 * and `limits.iops-total` the limits one, exactly as in qsd).
 *
 * object-del is refused while a node is in the group.
 */
import { BlockError } from '../util/errors.ts';
import { obj, opt, req, type ObjectType } from '../qapi/types.ts';
import { fromJson } from '../qapi/visit.ts';
import { qdictOrder } from '../qapi/qdict-order.ts';
import {
  LIMIT_NAMES, applyLimits, configToLimits, emptyConfig, readLimit, setLegacyLimit, validateConfig,
  type LimitName, type ThrottleConfig, type ThrottleLimits,
} from '../util/throttle/config.ts';
import { ThrottleGroup } from '../util/throttle/group.ts';
import type { ObjectTypeDef } from './object-type.ts';

const LIMIT_DOCS: Record<string, string> = {
  total: 'limit total', read: 'limit read', write: 'limit write',
};

function limitDoc(name: LimitName): string {
  if (name === 'iops-size') return 'when limiting by iops max size of an I/O in bytes';
  const [kind, dir] = name.split('-') as ['bps' | 'iops', string];
  const what = kind === 'bps' ? 'bytes per second' : 'I/O operations per second';
  if (name.endsWith('-max-length')) return `maximum length of the @${name.slice(0, -'-length'.length)} burst period, in seconds. It must only be set if @${name.slice(0, -'-length'.length)} is set as well.`;
  if (name.endsWith('-max')) return `${LIMIT_DOCS[dir]} ${what} during bursts`;
  return `${LIMIT_DOCS[dir]} ${what}`;
}

/** ThrottleLimits (qapi/block-core.json). */
export const ThrottleLimitsType: ObjectType = obj('ThrottleLimits', LIMIT_NAMES.map((n) => opt(n, 'int', limitDoc(n))), {
  doc: 'Limit parameters for throttling. Since some limit combinations are illegal, limits should always be set in one transaction. All fields are optional. When setting limits, if a field is missing the current value is not changed.',
});

const LEGACY = LIMIT_NAMES.map((n) => `x-${n}`);

/** ThrottleGroupProperties (qapi/qom.json): limits, then the x- aliases in QEMU's order. */
const ThrottleGroupProperties = obj('ThrottleGroupProperties', [
  opt('limits', ThrottleLimitsType, 'limits to apply for this throttle group'),
  ...LIMIT_NAMES.map((n) => opt(`x-${n}`, 'int', `alias of limits.${n} (unstable)`)),
]);

/** qom-set's value for `limits`, validated as QEMU's visitor does (member names prefixed 'limits.'). */
const LimitsValue = obj('q_limits', [req('limits', ThrottleLimitsType)]);

export const throttleGroupType: ObjectTypeDef<ThrottleGroup> = {
  qomType: 'throttle-group',
  properties: ThrottleGroupProperties,
  create(options) {
    let cfg: ThrottleConfig = emptyConfig();
    const present = ThrottleGroupProperties.members.map((m) => m.name).filter((k) => options[k] !== undefined);
    for (const key of qdictOrder(present)) {
      if (key === 'limits') cfg = applyLimits(cfg, options.limits as ThrottleLimits);
      else setLegacyLimit(cfg, key.slice(2) as LimitName, options[key] as number, key);
    }
    validateConfig(cfg);
    return new ThrottleGroup(cfg);
  },
  canBeDeleted: (g) => g.members.length === 0,
  getProperty(g, name) {
    if (name === 'limits') return { value: configToLimits(g.state.config) };
    if (LEGACY.includes(name)) return { value: readLimit(g.state.config, name.slice(2) as LimitName) };
    return undefined;
  },
  setProperty(g, name, value) {
    if (LEGACY.includes(name)) throw new BlockError('EINVAL', 'Property cannot be set after initialization');
    if (name !== 'limits') return false;
    const { limits } = fromJson(LimitsValue, { limits: value }) as { limits: ThrottleLimits };
    g.configure(applyLimits(g.state.config, limits));
    return true;
  },
};
