/**
 * The mirror job (blockdev-mirror, drive-mirror): copies a source node to a
 * target while the source stays in use, converges, and on job-complete moves
 * every user of the source (exports, nodes above it) onto the target.
 *
 * - A 'mirror_top' filter is put above the source at start and takes over
 *   its users; in copy-mode=write-blocking it also writes each guest write
 *   to the target before completing it. At the end the filter is taken out
 *   again, its users moving onto the target (complete) or back onto the
 *   source (cancel, failure).
 * - A write observer on the source marks what changes in a DirtyMap; the
 *   copy loop copies dirty runs (buf-size bytes in flight at most). As in
 *   QEMU, the initial pass marks what the chain holds (all of it with
 *   zero_target, unless the target was zeroed first), and a run is copied
 *   by the source's block status: zero runs as write-zeroes, the rest as
 *   data, whatever its bytes (zeroes.ts, mirrorPieces).
 * - Nothing dirty and nothing in flight: READY. job-complete (or a soft
 *   cancel, which leaves the target as a point-in-time copy without the
 *   pivot, as qsd does) then drains the source; if still clean, the target
 *   is flushed and the run ends with the drain held, so no write slips in
 *   between the last check and the pivot in prepare().
 */
import { BlockJob, type BlockJobOptions, type BlockdevOnError } from './block-job.ts';
import { DirtyMap } from '../bitmaps/dirty-map.ts';
import { copyBuffers } from '../copy-buffers.ts';
import { insertFilter, removeFilter } from '../surgery/filter.ts';
import { moveUsers } from '../surgery/replace.ts';
import { jobFilterDriver } from '../filters/job-filter.ts';
import { mirrorTopOps } from '../filters/mirror-top.ts';
import { JobCancelledError, jobFailure } from './errors.ts';
import { clusterSizeOf, mirrorPieces, type CopyPiece } from '../zeroes.ts';
import { BlockError, toBlockError } from '../../util/errors.ts';
import { ReqFlag } from '../request.ts';
import type { BlockNode } from '../node.ts';
import { ALL_PERM, type ChildEdge } from '../edge.ts';

export type MirrorSync = 'full' | 'top' | 'none';
export type MirrorCopyMode = 'background' | 'write-blocking';

export interface MirrorJobOptions extends BlockJobOptions {
  source: BlockNode;
  target: BlockNode;
  sync: MirrorSync;
  granularity?: number;
  bufSize?: number;
  copyMode?: MirrorCopyMode;
  onSourceError?: BlockdevOnError;
  onTargetError?: BlockdevOnError;
  /** The node whose users move to the target on completion (default: the source). */
  replaces?: BlockNode;
  filterNodeName?: string;
  /**
   * QEMU's zero_target (sync=full of blockdev-mirror, or of drive-mirror onto an image it did not
   * create): the whole target is zeroed first (with unmap, when its node has discard=unmap), or else
   * every cluster is copied, holes as write-zeroes.
   */
  zeroTarget?: boolean;
  /** Zero runs may be unmapped on the target (drive-mirror unmap, default true). */
  unmap?: boolean;
  /** Runs once the job has concluded (drive-mirror drops an unused target node). */
  onConcluded?: (pivoted: boolean) => Promise<void> | void;
}

/** How QEMU names the BlockBackend a job writes its target through. */
const BACKEND = { user: 'an unnamed block device', role: 'root' };

export const DEFAULT_MIRROR_BUF_SIZE = 16 * 1024 * 1024;
/** Largest single copy operation. */
const MAX_OP = 1024 * 1024;

export class MirrorJob extends BlockJob {
  readonly type = 'mirror' as const;
  readonly source: BlockNode;
  readonly target: BlockNode;
  private readonly sync: MirrorSync;
  private readonly granularity: number;
  private readonly bufSize: number;
  private readonly copyMode: MirrorCopyMode;
  private readonly onSourceError: BlockdevOnError;
  private readonly onTargetError: BlockdevOnError;
  private readonly replaces?: BlockNode;
  private readonly filterNodeName?: string;
  private readonly zeroTarget: boolean;
  private readonly targetCluster: number;
  private readonly unmap: boolean;
  private readonly onConcluded?: MirrorJobOptions['onConcluded'];
  private dirty!: DirtyMap;
  private filter?: BlockNode;
  /** Where the filter forwards requests: the source, and after a pivot the target. */
  private current: BlockNode;
  private shouldComplete = false;
  /** write-blocking: guest writes also go to the target (until the filter is taken out). */
  private writeThrough = true;
  private pivoted = false;
  private releaseDrain?: () => void;
  private drainSection?: Promise<unknown>;
  private readonly inflight = new Set<Promise<void>>();
  /** The ranges of the copies in `inflight`: a run dirtied again while its copy runs waits for it (QEMU's mirror_wait_on_conflicts). */
  private readonly inflightRanges = new Set<{ offset: number; length: number }>();
  private inflightBytes = 0;
  private ioFailure?: unknown;
  private cursor = 0;
  private targetEdge?: ChildEdge;
  private readonly observer = (offset: number, length: number) => {
    this.dirty.set(offset, length);
    this.enter();
  };

  constructor(opts: MirrorJobOptions) {
    super(opts);
    this.source = opts.source;
    this.target = opts.target;
    this.current = opts.source;
    this.sync = opts.sync;
    this.granularity = opts.granularity || defaultGranularity(opts.target);
    this.bufSize = opts.bufSize || DEFAULT_MIRROR_BUF_SIZE;
    this.copyMode = opts.copyMode ?? 'background';
    this.onSourceError = opts.onSourceError ?? 'report';
    this.onTargetError = opts.onTargetError ?? 'report';
    this.replaces = opts.replaces;
    this.filterNodeName = opts.filterNodeName;
    this.zeroTarget = opts.zeroTarget ?? false;
    this.targetCluster = clusterSizeOf(opts.target);
    this.unmap = opts.unmap ?? true;
    this.onConcluded = opts.onConcluded;
  }

  /**
   * Set-up that may still fail (the job is registered, not started): the
   * job's edges, the target's size, the filter above the source.
   */
  async setUp(): Promise<void> {
    const len = this.source.length();
    this.useNode(this.source, 'source', { read: true, write: false, resize: false }, ALL_PERM);
    if (this.target.readOnly) throw new BlockError('EPERM', `Node '${this.target.nodeName}' is read only`);
    // QEMU's target BlockBackend lets nobody else read, write or resize the target (it shares only
    // unchanged writes, which blockd does not tell apart).
    this.targetEdge = this.useNode(this.target, 'target', { read: true, write: true, resize: false }, { read: false, write: false, resize: false }, BACKEND);
    this.dirty = new DirtyMap(len, this.granularity);
    this.filter = await insertFilter(this.graph, this.source, {
      name: this.filterNodeName,
      driver: jobFilterDriver('mirror_top'),
      role: 'backing',
      ops: mirrorTopOps({
        current: () => this.current,
        target: this.target,
        writeThrough: () => this.copyMode === 'write-blocking' && this.writeThrough,
        source: this.source,
      }),
      readOnly: this.source.readOnly,
      keep: (e) => e.parent === this,
      perm: { read: true, write: !this.source.readOnly, resize: false },
      shared: ALL_PERM,
    }, 'drain');
    this.source.writeObservers.add(this.observer);
  }

  /** Undoes setUp after a failure before start. */
  async tearDown(): Promise<void> {
    this.source.writeObservers.delete(this.observer);
    if (this.filter) await removeFilter(this.graph, this.filter, this.source, 'drain');
    this.filter = undefined;
    await this.releaseNodes();
  }

  // ---------------------------------------------------------------- run

  protected async run(): Promise<void> {
    try {
      await this.copyLoop();
    } finally {
      await this.settle();
    }
  }

  private async copyLoop(): Promise<void> {
    const len = this.source.length();
    if (this.target.length() !== len) throw new BlockError('EINVAL', 'Source and target image have different sizes');
    this.progressSetRemaining(len);
    await this.initialPass(len);
    for (;;) {
      await this.pausePoint();
      if (this.isCancelled) { await this.settle(); throw new JobCancelledError(); }
      this.checkFailure();
      // Fill the pipeline.
      let started = false;
      // Not after a reported error: a source failing at once would re-dirty its run within
      // the throttle's turn of the loop and be copied again forever (found with blkdebug).
      while (this.inflightBytes < this.bufSize && !this.isCancelled && this.ioFailure === undefined) {
        const run = this.dirty.nextRun(this.cursor, Math.min(MAX_OP, this.bufSize));
        if (!run) break;
        // A second copy of a range whose first copy is still under way could land before it
        // (a zero piece's write-zeroes decided on the old data after the new data's write): wait.
        if (this.overlapsInflight(run.offset, run.length)) break;
        this.dirty.clear(run.offset, run.length);
        this.cursor = run.offset + run.length;
        this.startCopy(run.offset, run.length);
        started = true;
        // Also a turn of the event loop: this copy's write is under way before the next read
        // (a page-cache read completes inline, so a burst of reads would hold back every write).
        await this.throttle(run.length);
        if (this.pauseRequested) break;
      }
      this.progressSetRemaining(this.dirty.bytes + this.inflightBytes);
      if (this.inflight.size > 0) {
        await Promise.race(this.inflight);
        continue;
      }
      if (started || this.dirty.count > 0) continue;
      this.checkFailure();
      if (!this.isReady) {
        await this.target.flush();
        if (this.dirty.count > 0) continue;
        this.transitionToReady();
        continue;
      }
      if (this.shouldComplete || this.cancelRequested) {
        if (await this.finalSync()) return;
        continue;
      }
      await this.waitForEnter();
    }
  }

  /** QEMU's mirror_dirty_init: marks what the copy loop must copy. */
  private async initialPass(len: number): Promise<void> {
    if (this.sync === 'none') { this.progressSetRemaining(0); return; }
    if (this.zeroTarget) {
      if (this.target.options.discard !== 'unmap' || !this.target.limits.canZero) { this.dirty.set(0, len); return; }
      await this.guard(false, () => this.target.writeZeroes(0, len, this.unmap ? ReqFlag.MAY_UNMAP : 0), () => this.dirty.set(0, len));
    }
    for (let off = 0; off < len;) {
      await this.pausePoint();
      if (this.isCancelled) return;
      const extents = await this.source.blockStatus(off, Math.min(len - off, 1024 * 1024 * 1024));
      for (const e of extents) {
        // sync=top: what the source holds itself; full: what any layer of its chain holds.
        if (this.sync === 'top' ? e.allocated : e.depth !== 0) this.dirty.set(e.offset, e.length);
        else this.progressUpdate(e.length);
        off = e.offset + e.length;
      }
    }
  }

  private overlapsInflight(offset: number, length: number): boolean {
    for (const r of this.inflightRanges) if (r.offset < offset + length && offset < r.offset + r.length) return true;
    return false;
  }

  private startCopy(offset: number, length: number): void {
    this.inflightBytes += length;
    const range = { offset, length };
    this.inflightRanges.add(range);
    const p = this.copy(offset, length).finally(() => {
      this.inflightRanges.delete(range);
      this.inflight.delete(p);
      this.inflightBytes -= length;
    });
    this.inflight.add(p);
  }

  private async copy(offset: number, length: number): Promise<void> {
    const redirty = () => this.dirty.set(offset, length);
    let pieces: CopyPiece[] = [];
    if (!await this.guard(true, async () => { pieces = await mirrorPieces(this.source, offset, length, this.targetCluster); }, redirty)) return;
    for (const p of pieces) {
      if (p.zero) {
        if (!await this.guard(false, () => this.target.writeZeroes(p.offset, p.length, this.unmap ? ReqFlag.MAY_UNMAP : 0), redirty)) return;
        continue;
      }
      const buf = copyBuffers.get(p.length);
      try {
        if (!await this.guard(true, () => this.source.read(p.offset, buf), redirty)) return;
        if (!await this.guard(false, () => this.target.write(p.offset, buf), redirty)) return;
      } finally {
        copyBuffers.put(buf);
      }
    }
    this.progressUpdate(length);
  }

  /** Runs an I/O and applies the on-error policy: false (after `redo`) if it failed. */
  private async guard(isRead: boolean, io: () => Promise<void>, redo: () => void): Promise<boolean> {
    try {
      await io();
      return true;
    } catch (e) {
      redo();
      if (this.isCancelled) return false;
      const err = toBlockError(e);
      // Requests in flight when the job stopped on an error fail quietly: one BLOCK_JOB_ERROR, as in qsd.
      if (this.userPaused && this.ioStatus !== 'ok') return false;
      const action = this.errorAction(isRead ? this.onSourceError : this.onTargetError, isRead, err);
      if (action === 'report') this.ioFailure ??= jobFailure(err);
      return false;
    }
  }

  private checkFailure(): void {
    if (this.ioFailure !== undefined) throw this.ioFailure;
  }

  private async settle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
  }

  /**
   * Drains the source; if nothing became dirty meanwhile, flushes the target
   * and keeps the drain (released in finalisation). True when done.
   */
  private async finalSync(): Promise<boolean> {
    let entered!: () => void;
    const inDrain = new Promise<void>((r) => (entered = r));
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const section = this.source.drained(async () => { entered(); await held; });
    await inDrain;
    if (this.dirty.count === 0 && this.inflight.size === 0) {
      try {
        await this.target.flush();
        this.releaseDrain = release;
        this.drainSection = section;
        return true;
      } catch (e) {
        release();
        await section;
        throw e;
      }
    }
    release();
    await section;
    return false;
  }

  // ---------------------------------------------------------------- verbs and finalisation

  protected override complete(): void {
    this.shouldComplete = true;
    this.enter();
  }

  protected override cancelHook(force: boolean): boolean {
    return force || !this.isReady;
  }

  protected override async prepare(): Promise<void> {
    if (!this.shouldComplete || this.cancelRequested) return;
    // As QEMU's mirror_exit_common drops its target BlockBackend's restrictions before the graph
    // changes: the users about to move onto the target must be let in.
    // (blk_set_perm(s->target, 0, BLK_PERM_ALL): it takes nothing any more either, so a node
    // that shares no writes (a quorum getting the target as its child) can move onto it.)
    if (this.targetEdge) { this.targetEdge.shared = { ...ALL_PERM }; this.targetEdge.perm = { read: false, write: false, resize: false }; this.target.refreshPermissions(); }
    const from = this.replaces ?? this.source;
    if (this.replaces && this.replaces !== this.source) {
      // Users of the replaced node go to the target; the filter's users stay on the source.
      await this.leaveFilter(this.source);
      await from.drained(() => moveUsers(from, this.target, (e) => e.parent === this));
    } else {
      await this.leaveFilter(this.target);
    }
    this.pivoted = true;
  }

  protected override async abort(): Promise<void> {
    await this.leaveFilter(this.source);
  }

  protected override async commit(): Promise<void> {
    await this.leaveFilter(this.source);
  }

  /** Takes the filter out, its users going to `to`; then lets the drained source go. */
  private async leaveFilter(to: BlockNode): Promise<void> {
    this.source.writeObservers.delete(this.observer);
    this.writeThrough = false;
    const f = this.filter;
    this.filter = undefined;
    if (f) {
      // Requests queued at the filter (held drain) pass through it once released: they follow `current`.
      this.current = to;
      await removeFilter(this.graph, f, to, 'drain');
    }
    await this.endDrainAndWait();
  }

  private async endDrainAndWait(): Promise<void> {
    const r = this.releaseDrain;
    this.releaseDrain = undefined;
    r?.();
    const s = this.drainSection;
    this.drainSection = undefined;
    await s;
  }

  protected override async clean(): Promise<void> {
    this.source.writeObservers.delete(this.observer);
    if (this.filter) await this.leaveFilter(this.source);
    await this.endDrainAndWait();
    await this.settle();
    await super.clean();
    await this.onConcluded?.(this.pivoted);
  }
}

/** QEMU's default: the target's cluster size, at least 4 KiB, at most 64 KiB; 64 KiB when unknown. */
function defaultGranularity(target: BlockNode): number {
  const info = target.ops.info?.() as { 'cluster-size'?: number } | undefined;
  const cs = info?.['cluster-size'];
  if (typeof cs === 'number' && cs > 0) return Math.min(65536, Math.max(4096, cs));
  return 65536;
}

export function checkMirrorGranularity(g: number): void {
  if (g < 512 || g > 64 * 1024 * 1024) throw new BlockError('EINVAL', "Parameter 'granularity' expects a value in range [512B, 64MB]");
  if (g & (g - 1)) throw new BlockError('EINVAL', "Parameter 'granularity' expects a power of 2");
}
