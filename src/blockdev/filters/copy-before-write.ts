/**
 * copy-before-write: a filter that, before a write (or write-zeroes, or
 * discard) reaches its 'file' child, copies the old contents of every
 * cluster it touches that has not been copied yet to its 'target'. The
 * target thus keeps the child's contents as they were when copying began
 * (a point-in-time snapshot). Backup inserts one above its source and
 * shares the copy map with its background copy (CowState); a user can also
 * blockdev-add one (file, target).
 *
 * A failed copy fails the guest's write (qsd's on-cbw-error=break-guest-write).
 */
import { BlockError } from '../../util/errors.ts';
import { RangeLock } from '../range-lock.ts';
import { ReqFlag } from '../request.ts';
import { obj, opt, req } from '../../qapi/types.ts';
import { BlockdevRef } from '../options.ts';
import { DirtyMap } from '../bitmaps/dirty-map.ts';
import { copyBuffers } from '../copy-buffers.ts';
import { cowSnapshotAccess } from './cbw-snapshot.ts';
import type { Driver, DriverOps } from '../driver.ts';
import type { BlockNode } from '../node.ts';
import type { Extent } from '../request.ts';

const DEFAULT_CLUSTER = 65536;
const MAX_COPY = 1024 * 1024;

/** The copy state shared by the filter and a backup job's background copy. */
export class CowState {
  readonly map: DirtyMap;
  readonly lock = new RangeLock();
  /** Copying on write is on (between activate() and deactivate()). */
  active = false;
  /** What the snapshot covers (QEMU's access_bitmap): what was to be copied at activate(), less what was discarded since. */
  access?: DirtyMap;
  /** Bytes copied so far, by either path (the backup's progress). */
  onCopied?: (bytes: number) => void;

  /** `compress`: data is written with compressed writes (backup's compress=true; zeroes stay write-zeroes, as QEMU's block-copy). */
  constructor(readonly source: BlockNode, readonly target: BlockNode, readonly cluster: number, readonly compress = false) {
    this.map = new DirtyMap(source.length(), cluster);
  }

  /** Starts the snapshot: everything (or only the `only` ranges) must be copied before it is overwritten. */
  activate(only?: Iterable<[number, number]>): void {
    this.access = new DirtyMap(this.map.length, this.cluster);
    for (const m of [this.map, this.access]) {
      if (only) for (const [a, b] of only) m.set(a, b - a);
      else m.set(0, m.length);
    }
    this.active = true;
  }

  deactivate(): void { this.active = false; }

  /** Copies every still-uncopied cluster touching [offset, offset+length) (the range is locked meanwhile). */
  async copyRange(offset: number, length: number): Promise<void> {
    const a = offset - (offset % this.cluster);
    const b = Math.min(this.map.length, Math.ceil((offset + length) / this.cluster) * this.cluster);
    if (!this.map.any(a, b - a)) return;
    const release = await this.lock.acquire(a, b);
    try {
      for (let pos = a; pos < b;) {
        const run = this.map.nextRun(pos, Math.min(MAX_COPY, b - pos));
        if (!run || run.offset >= b || run.offset < pos) break;
        const end = Math.min(b, run.offset + run.length);
        await this.copyNow(run.offset, end - run.offset);
        this.map.clear(run.offset, end - run.offset);
        this.onCopied?.(end - run.offset);
        pos = end;
      }
    } finally {
      release();
    }
  }

  /**
   * Copies [offset, offset+length) from source to target, what the source's status calls zero as
   * write-zeroes without unmap (QEMU's block-copy: the target gets zero clusters, also a new image).
   */
  private async copyNow(offset: number, length: number): Promise<void> {
    let extents = await this.source.blockStatus(offset, length).catch(markRead);
    // Compressed writes take whole clusters: a cluster is zero only if all of it is (block-copy's cluster granularity).
    if (this.compress) extents = byCluster(extents, this.cluster);
    // One write per run of the same kind: a target with detect-zeroes judges each write as a whole, as QEMU's block-copy task.
    for (const e of mergeRuns(extents, (a, b) => a.zero === b.zero)) {
      if (e.zero) {
        await this.target.writeZeroes(e.offset, e.length, 0);
        continue;
      }
      const buf = copyBuffers.get(e.length);
      try {
        await this.source.read(e.offset, buf).catch(markRead);
        if (this.compress) await this.target.writeCompressed(e.offset, buf);
        else await this.target.write(e.offset, buf);
      } finally {
        copyBuffers.put(buf);
      }
    }
  }

  /**
   * The length of the piece QEMU's block-copy would copy as one task at
   * `offset` (at most `max`): one run of the source's block status (one
   * layer, one kind), never less than a cluster.
   */
  async pieceAt(offset: number, max: number): Promise<number> {
    const [run] = mergeRuns(await this.source.blockStatus(offset, max).catch(markRead), (a, b) => a.zero === b.zero && a.data === b.data && a.depth === b.depth);
    if (!run) return max;
    const n = run.length - (run.length % this.cluster);
    return Math.min(max, Math.max(this.cluster, n));
  }
}

/** Consecutive extents `same` calls alike, merged. */
function mergeRuns(ext: readonly Extent[], same: (a: Extent, b: Extent) => boolean): Extent[] {
  const out: Extent[] = [];
  for (const e of ext) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === e.offset && same(last, e)) out[out.length - 1] = { ...last, length: last.length + e.length };
    else out.push({ ...e });
  }
  return out;
}

/** The extents as whole clusters (the last may be short): zero where every extent in the cluster is. */
function byCluster(ext: readonly Extent[], cluster: number): Extent[] {
  const out: Extent[] = [];
  for (const e of ext) {
    for (let pos = e.offset; pos < e.offset + e.length;) {
      const start = pos - (pos % cluster);
      const end = Math.min(e.offset + e.length, start + cluster);
      const last = out[out.length - 1];
      if (last && last.offset === start) {
        last.length = end - start;
        last.zero &&= e.zero;
      } else {
        out.push({ ...e, offset: start, length: end - start });
      }
      pos = end;
    }
  }
  return out;
}

/** Tags an error as the source's (on-source-error) rather than the target's. */
function markRead(e: unknown): never {
  if (e && typeof e === 'object') (e as { cowRead?: boolean }).cowRead = true;
  throw e;
}

/** The filter's operations over `state` (reads and everything else pass to the source). */
export function cowFilterOps(state: CowState): DriverOps {
  const src = state.source;
  const before = (o: number, l: number) => (state.active ? state.copyRange(o, l) : Promise.resolve());
  return {
    length: () => src.length(),
    read: (o, buf) => src.read(o, buf),
    async write(o, buf, flags) { await before(o, buf.length); await src.write(o, buf, flags); },
    async writeZeroes(o, l, flags) { await before(o, l); await src.writeZeroes(o, l, flags); },
    async discard(o, l) { await before(o, l); await src.discard(o, l); },
    flush: () => src.flush(),
    blockStatus: (o, l, flags) => src.blockStatus(o, l, flags),
    async truncate() { throw new BlockError('EPERM', 'Cannot resize a node under copy-before-write'); },
    limits: { canFua: true, canZero: src.limits.canZero, canTrim: src.limits.canTrim },
    snapshotAccess: cowSnapshotAccess(state),
  };
}

/** The cluster size copying works in: the target's cluster size, at least 64 KiB (QEMU's choice). */
export function cowClusterSize(target: BlockNode): number {
  const info = target.ops.info?.() as { 'cluster-size'?: number } | undefined;
  const cs = info?.['cluster-size'];
  return typeof cs === 'number' && cs > DEFAULT_CLUSTER ? cs : DEFAULT_CLUSTER;
}

export const copyBeforeWriteDriver: Driver = {
  name: 'copy-before-write',
  kind: 'filter',
  jobFilter: true,
  options: obj('BlockdevOptionsCbw', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
    req('target', BlockdevRef, 'The target for copy-before-write operations.'),
    opt('bitmap', 'any', 'If specified, copy-before-write filter will do copy-before-write operations only for dirty regions of the bitmap.'),
  ]),
  async open(options, ctx): Promise<DriverOps> {
    if (options.bitmap !== undefined) throw new BlockError('ENOTSUP', "copy-before-write: 'bitmap' is not supported by blockd");
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const target = await ctx.openChild('target', options.target as string | Record<string, unknown>, { perm: { write: true } });
    if (target.length() < file.length()) {
      throw new BlockError('EINVAL', 'Source and target image have different sizes');
    }
    const state = new CowState(file, target, cowClusterSize(target));
    state.activate();
    return cowFilterOps(state);
  },
};
