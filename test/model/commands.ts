/**
 * The command generators of the block-layer model test: a scenario is an
 * image (raw or qcow2, a cluster size, a size), a pre-made backing chain with
 * data in each layer, and a sequence of steps. Steps carry raw numbers that
 * the runner maps onto the current disk (offsets modulo its size, aligned to
 * the step's granularity; a job's layers modulo the chain's length), so every
 * sequence is valid whatever a shrink removed before it.
 */
import fc from 'fast-check';

/** Every cluster size qemu-img accepts for qcow2: 512 B to 2 MiB. */
export const CLUSTER_BITS = [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21] as const;

/** Granularity of an offset: 0 any byte, 1 a 512-byte sector, 2 a cluster. */
export type Gran = 0 | 1 | 2;

export interface Range { at: number; len: number; gran: Gran }

export type Step =
  | ({ op: 'write'; pat: number; fua: boolean } & Range)
  | ({ op: 'zero'; mayUnmap: boolean; fua: boolean } & Range)
  | ({ op: 'discard' } & Range)
  | { op: 'flush' }
  /** Grow by `by` sectors (1 + by % limit): block_resize with the export taken down (it does not share resize) and added again; skipped on a blockdev-snapshot-sync overlay (which the export's removal would close). */
  | { op: 'resize'; by: number }
  /** An external snapshot of the active layer: `existing`: an overlay made by qemu-img with the scenario's cluster size, blockdev-add and blockdev-snapshot; else blockdev-snapshot-sync. */
  | { op: 'snapshot'; existing: boolean }
  /** blockdev-snapshot-internal-sync of the active layer (qcow2 only). */
  | { op: 'internal' }
  /** block-stream into the active layer; `base` picks the base (or none) among the lower layers. */
  | { op: 'stream'; base: number }
  /** block-commit of layer `top` (picked among the layers above the bottom; the active one is an active commit) into a lower one. */
  | { op: 'commit'; top: number; base: number }
  /** Waits for the running job (steps before this one run while it runs). */
  | { op: 'wait' };

export interface Layer { fills: { at: number; len: number; pat: number }[] }

export interface Scenario {
  format: 'raw' | 'qcow2';
  clusterBits: number;
  /** Size in units of max(cluster, 64 KiB), plus tail sectors. */
  units: number;
  tail: number;
  /** Layers made with qemu-img before the daemon starts: [0] is the base (the scenario's format), the rest qcow2 overlays. */
  layers: Layer[];
  steps: Step[];
}

const range = { at: fc.nat(), len: fc.nat(), gran: fc.constantFrom<Gran>(0, 1, 2) };

export const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ op: fc.constant('write' as const), pat: fc.integer({ min: 1, max: 255 }), fua: fc.boolean(), ...range }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('zero' as const), mayUnmap: fc.boolean(), fua: fc.boolean(), ...range }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('discard' as const), ...range }) },
  { weight: 1, arbitrary: fc.constant({ op: 'flush' as const }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('resize' as const), by: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('snapshot' as const), existing: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ op: 'internal' as const }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('stream' as const), base: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('commit' as const), top: fc.nat(), base: fc.nat() }) },
  { weight: 1, arbitrary: fc.constant({ op: 'wait' as const }) },
);

const layerArb: fc.Arbitrary<Layer> = fc.record({
  fills: fc.array(fc.record({ at: fc.nat(), len: fc.nat(), pat: fc.integer({ min: 1, max: 255 }) }), { maxLength: 3 }),
});

/** Steps are cheap next to a daemon's start: sequences are long (`minSteps` up to `maxSteps`). */
export function scenarioArb(maxSteps = 40, minSteps = 10): fc.Arbitrary<Scenario> {
  return fc.record({
    format: fc.constantFrom<'raw' | 'qcow2'>('qcow2', 'qcow2', 'raw'),
    clusterBits: fc.constantFrom(...CLUSTER_BITS),
    units: fc.integer({ min: 1, max: 4 }),
    tail: fc.integer({ min: 0, max: 7 }),
    layers: fc.array(layerArb, { minLength: 1, maxLength: 3 }),
    steps: fc.array(stepArb, { minLength: minSteps, maxLength: maxSteps }),
  });
}

export const clusterSize = (s: Scenario): number => 2 ** s.clusterBits;
export const initialSize = (s: Scenario): number => Math.max(clusterSize(s), 64 << 10) * s.units + s.tail * 512;

/** [offset, length] of a range on a disk of `size` bytes: aligned to the granularity, inside the disk, at least one unit long. */
export function resolveRange(r: Range, size: number, cluster: number): [number, number] {
  const g = r.gran === 0 ? 1 : r.gran === 1 ? 512 : cluster;
  const g2 = g > size ? 512 : g;
  const maxLen = Math.min(size, Math.max(4 * cluster, 256 << 10), 4 << 20);
  const offset = Math.floor((r.at % size) / g2) * g2;
  let length = Math.max(g2, Math.floor((r.len % (maxLen + 1)) / g2) * g2);
  if (offset + length > size) length = size - offset;
  return [offset, length];
}
