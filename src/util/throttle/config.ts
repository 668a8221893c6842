/**
 * Throttle limits: QEMU's ThrottleConfig (include/qemu/throttle.h) and the
 * conversions around it (util/throttle.c). Pure: no clock, no timer.
 *
 * Six leaky buckets, one per limit, in QEMU's BucketType order (the order
 * validation walks them, so the first error QEMU reports is ours too). Each
 * has an average rate (`avg`, 0 = unlimited), a burst rate (`max`, 0 = no
 * bursts) and the burst length in seconds (`burstLength`, default 1).
 *
 * QEMU keeps avg, max and burst length as uint64: a negative value coming in
 * through the int64 ThrottleLimits members is a huge unsigned one there, so
 * it fails the range checks. `u64()` reproduces that.
 */
import { BlockError } from '../errors.ts';

export const BUCKETS = ['bps-total', 'bps-read', 'bps-write', 'iops-total', 'iops-read', 'iops-write'] as const;
export type BucketName = typeof BUCKETS[number];

export interface BucketConfig { avg: number; max: number; burstLength: number }
export interface ThrottleConfig {
  readonly buckets: Record<BucketName, BucketConfig>;
  /** iops-size: requests larger than this count as size/opSize operations (0: every request is one). */
  opSize: number;
}

/** QEMU's THROTTLE_VALUE_MAX: the largest avg or max, and max × burst length. */
export const THROTTLE_VALUE_MAX = 1_000_000_000_000_000;
const UINT_MAX = 4294967295;

/** ThrottleLimits (qapi/block-core.json): every member, by its QAPI name. */
export type ThrottleLimits = Partial<Record<LimitName, number>>;
export type LimitName = BucketName | `${BucketName}-max` | `${BucketName}-max-length` | 'iops-size';

/** ThrottleLimits' members in schema order (iops before bps, each with -max and -max-length, then iops-size). */
export const LIMIT_NAMES: readonly LimitName[] = [
  ...(['iops-total', 'iops-read', 'iops-write', 'bps-total', 'bps-read', 'bps-write'] as const)
    .flatMap((b) => [b, `${b}-max`, `${b}-max-length`] as LimitName[]),
  'iops-size',
];

/** throttle_config_init(): no limit anywhere, burst length 1. */
export function emptyConfig(): ThrottleConfig {
  const buckets = {} as Record<BucketName, BucketConfig>;
  for (const b of BUCKETS) buckets[b] = { avg: 0, max: 0, burstLength: 1 };
  return { buckets, opSize: 0 };
}

export function cloneConfig(cfg: ThrottleConfig): ThrottleConfig {
  const buckets = {} as Record<BucketName, BucketConfig>;
  for (const b of BUCKETS) buckets[b] = { ...cfg.buckets[b] };
  return { buckets, opSize: cfg.opSize };
}

/** True if any bucket limits anything (throttle_enabled). */
export function throttleEnabled(cfg: ThrottleConfig): boolean {
  return BUCKETS.some((b) => cfg.buckets[b].avg !== 0);
}

/** The value as QEMU's uint64 sees it: negative values wrap to beyond any limit. */
function u64(v: number): number {
  return v < 0 ? v + 2 ** 64 : v;
}

/** throttle_is_valid(): throws QEMU's message for the first problem it finds. */
export function validateConfig(cfg: ThrottleConfig): void {
  const b = cfg.buckets;
  const mixed = (field: 'avg' | 'max', kind: 'bps' | 'iops') =>
    b[`${kind}-total`][field] !== 0 && (b[`${kind}-read`][field] !== 0 || b[`${kind}-write`][field] !== 0);
  if (mixed('avg', 'bps') || mixed('avg', 'iops') || mixed('max', 'bps') || mixed('max', 'iops')) {
    fail('bps/iops/max total values and read/write values cannot be used at the same time');
  }
  if (cfg.opSize !== 0 && b['iops-total'].avg === 0 && b['iops-read'].avg === 0 && b['iops-write'].avg === 0) {
    fail('iops size requires an iops value to be set');
  }
  for (const name of BUCKETS) {
    const avg = u64(b[name].avg);
    const max = u64(b[name].max);
    const len = u64(b[name].burstLength);
    if (avg > THROTTLE_VALUE_MAX || max > THROTTLE_VALUE_MAX) fail(`bps/iops/max values must be within [0, ${THROTTLE_VALUE_MAX}]`);
    if (len === 0) fail('the burst length cannot be 0');
    if (len > 1 && max === 0) fail('burst length set without burst rate');
    if (max !== 0 && len > Math.floor(THROTTLE_VALUE_MAX / max)) fail('burst length too high for this burst rate');
    if (max !== 0 && avg === 0) fail('bps_max/iops_max require corresponding bps/iops values');
    if (max !== 0 && max < avg) fail('bps_max/iops_max cannot be lower than bps/iops');
  }
}

/**
 * throttle_limits_to_config(): `cfg` with the members present in `limits`
 * replaced, validated. `cfg` itself is left alone (on error too).
 */
export function applyLimits(cfg: ThrottleConfig, limits: ThrottleLimits): ThrottleConfig {
  const out = cloneConfig(cfg);
  for (const name of BUCKETS) {
    if (limits[name] !== undefined) out.buckets[name].avg = limits[name];
  }
  for (const name of BUCKETS) {
    const max = limits[`${name}-max`];
    if (max !== undefined) out.buckets[name].max = max;
  }
  for (const name of BUCKETS) {
    const len = limits[`${name}-max-length`];
    if (len === undefined) continue;
    if (len > UINT_MAX) fail(`${name}-max-length value must be in the range [0, ${UINT_MAX}]`);
    out.buckets[name].burstLength = len;
  }
  if (limits['iops-size'] !== undefined) out.opSize = limits['iops-size'];
  validateConfig(out);
  return out;
}

/** throttle_config_to_limits(): every member, as qom-get of `limits` returns them. */
export function configToLimits(cfg: ThrottleConfig): Required<ThrottleLimits> {
  const out = {} as Required<ThrottleLimits>;
  for (const name of LIMIT_NAMES) out[name] = readLimit(cfg, name);
  return out;
}

/** One ThrottleLimits member of `cfg` (also the getter of the legacy x-<name> properties). */
export function readLimit(cfg: ThrottleConfig, name: LimitName): number {
  if (name === 'iops-size') return cfg.opSize;
  const { bucket, field } = splitLimit(name);
  return cfg.buckets[bucket][field];
}

/**
 * The setter of a legacy x-<name> property (throttle_group_set in
 * block/throttle-groups.c), before the object is complete: no validation of
 * the whole yet, only the value itself. `property` is the full x- name, for
 * QEMU's message (whose missing space is QEMU's).
 */
export function setLegacyLimit(cfg: ThrottleConfig, name: LimitName, value: number, property: string): void {
  if (value < 0) fail('Property values cannot be negative');
  if (name === 'iops-size') { cfg.opSize = value; return; }
  const { bucket, field } = splitLimit(name);
  if (field === 'burstLength' && value > UINT_MAX) fail(`${property} value must be in therange [0, ${UINT_MAX}]`);
  cfg.buckets[bucket][field] = value;
}

function splitLimit(name: Exclude<LimitName, 'iops-size'>): { bucket: BucketName; field: keyof BucketConfig } {
  if (name.endsWith('-max-length')) return { bucket: name.slice(0, -'-max-length'.length) as BucketName, field: 'burstLength' };
  if (name.endsWith('-max')) return { bucket: name.slice(0, -'-max'.length) as BucketName, field: 'max' };
  return { bucket: name as BucketName, field: 'avg' };
}

function fail(message: string): never {
  throw new BlockError('EINVAL', message);
}
