/**
 * The backup job (blockdev-backup, drive-backup): a point-in-time copy of a
 * node taken while it stays in use. A copy-before-write filter (CowState) is
 * put above the source and takes over its users; the moment of the snapshot
 * is a drained section right after that, when the copy map is filled. From
 * then on a guest write first copies the old clusters it overwrites to the
 * target, and the job copies the rest in the background (sync=full: every
 * cluster, zero runs as write-zeroes; sync=top: clusters allocated in the
 * source's top layer; sync=none: only what the filter copies, until the job
 * is cancelled). When done the filter is taken out again.
 */
import { BlockJob, type BlockJobOptions, type BlockdevOnError } from './block-job.ts';
import { insertFilter, removeFilter } from '../surgery/filter.ts';
import { jobFilterDriver } from '../filters/job-filter.ts';
import { JobCancelledError, jobFailure } from './errors.ts';
import { BlockError, toBlockError } from '../../util/errors.ts';
import { ALL_PERM } from '../edge.ts';
import { CowState, cowClusterSize, cowFilterOps } from '../filters/copy-before-write.ts';
import { BlockNode } from '../node.ts';
import { reaches } from '../surgery/walk.ts';
import type { DirtyBitmap } from '../bitmaps/dirty-bitmap.ts';
import { bitmapChanged, bitmapsOf } from '../bitmaps/registry.ts';
import type { SparseBitmap } from '../bitmaps/sparse-bitmap.ts';

export type BackupSync = 'full' | 'top' | 'none';

export interface BackupJobOptions extends BlockJobOptions {
  source: BlockNode;
  target: BlockNode;
  sync: BackupSync;
  /** compress=true: data goes to the target as compressed writes (the caller checked the target takes them). */
  compress?: boolean;
  onSourceError?: BlockdevOnError;
  onTargetError?: BlockdevOnError;
  filterNodeName?: string;
  /** sync=bitmap/incremental: copy only what this bitmap (of the source) marks. */
  bitmap?: DirtyBitmap;
  /** What becomes of the bitmap (QAPI BitmapSyncMode); incremental is bitmap + on-success. */
  bitmapMode?: 'on-success' | 'never' | 'always';
}

const CHUNK = 1024 * 1024;
const MAX_INFLIGHT = 16;

export class BackupJob extends BlockJob {
  readonly type = 'backup' as const;
  readonly source: BlockNode;
  readonly target: BlockNode;
  private readonly sync: BackupSync;
  private readonly onSourceError: BlockdevOnError;
  private readonly onTargetError: BlockdevOnError;
  private readonly filterNodeName?: string;
  private readonly state: CowState;
  private filter?: BlockNode;
  private readonly inflight = new Set<Promise<void>>();
  private ioFailure?: unknown;
  private readonly bitmap?: DirtyBitmap;
  private readonly bitmapMode: 'on-success' | 'never' | 'always';
  /** The bitmap's contents at the start (the bitmap itself goes on recording new writes from empty). */
  private frozen?: SparseBitmap;
  private holdsBitmap = false;
  /** The source's bitmaps when the job started (QEMU's successor bitmap went in front of them). */
  private bitmapsAtStart?: Set<DirtyBitmap>;

  constructor(opts: BackupJobOptions) {
    super(opts);
    this.source = opts.source;
    this.target = opts.target;
    this.sync = opts.sync;
    this.onSourceError = opts.onSourceError ?? 'report';
    this.onTargetError = opts.onTargetError ?? 'report';
    this.filterNodeName = opts.filterNodeName;
    this.state = new CowState(opts.source, opts.target, cowClusterSize(opts.target), opts.compress === true);
    this.state.onCopied = (n) => this.progressUpdate(n);
    this.bitmap = opts.bitmap;
    this.bitmapMode = opts.bitmapMode ?? 'on-success';
  }

  /** Takes the nodes, puts the filter above the source and starts the snapshot (in a drained section). */
  async setUp(): Promise<void> {
    if (this.target.readOnly) throw new BlockError('EPERM', `Node '${this.target.nodeName}' is read only`);
    this.useNode(this.source, 'source', { read: true, write: false, resize: false }, ALL_PERM);
    this.useNode(this.target, 'target', { read: true, write: true, resize: false }, { read: true, write: true, resize: false });
    this.filter = await insertFilter(this.graph, this.source, {
      name: this.filterNodeName,
      driver: jobFilterDriver('copy-before-write'),
      role: 'file',
      ops: cowFilterOps(this.state),
      readOnly: this.source.readOnly,
      // The job's own edges stay, and so do users the target reaches (QEMU's should_update_child:
      // a fleecing target's backing link to the source): through the filter they would make a loop
      // target → filter → target, whose drain waits on itself.
      keep: (e) => e.parent === this || (e.parent instanceof BlockNode && reaches(this.target, e.parent)),
      perm: { read: true, write: !this.source.readOnly, resize: false },
      shared: ALL_PERM,
    }, 'drain');
    // Writes that queued at the source during the insertion still went straight to it: the snapshot starts after them.
    await this.source.drained(() => {
      const bm = this.bitmap;
      if (!bm) { this.state.activate(); return; }
      this.holdsBitmap = true;
      bm.users.add(() => this.holdsBitmap);
      this.frozen = bm.bits.clone();
      this.bitmapsAtStart = new Set(bitmapsOf(this.source).bitmaps);
      this.state.activate(bm.extents());
      bm.clear();
    });
    this.progressSetRemaining(this.state.map.bytes);
  }

  async tearDown(): Promise<void> {
    await this.settleBitmap(false);
    this.state.deactivate();
    if (this.filter) await removeFilter(this.graph, this.filter, this.source, 'drain');
    this.filter = undefined;
    await this.releaseNodes();
  }

  protected async run(): Promise<void> {
    // qsd's backup passes a pause point for the drained insertion of its filter (paused → running).
    this.pause();
    setImmediate(() => this.resume());
    await this.pausePoint();
    try {
      await this.copyAll();
    } finally {
      while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
    }
  }

  private async copyAll(): Promise<void> {
    const len = this.source.length();
    if (this.sync === 'top') await this.skipUnallocated(len);
    if (this.sync === 'none') {
      while (!this.isCancelled) await this.waitForEnter();
      throw new JobCancelledError();
    }
    for (let pos = 0; ;) {
      await this.pausePoint();
      if (this.isCancelled) throw new JobCancelledError();
      if (this.ioFailure !== undefined) throw this.ioFailure;
      while (this.inflight.size >= MAX_INFLIGHT) await Promise.race(this.inflight);
      const run = pos < len ? this.state.map.nextRun(pos, CHUNK) : undefined;
      if (!run || run.offset < pos) {
        // End of a sweep: what is still uncopied (retries after 'stop') gets another one.
        await Promise.allSettled([...this.inflight]);
        if (this.state.map.count === 0 || this.ioFailure !== undefined || this.isCancelled) break;
        pos = 0;
        continue;
      }
      // QEMU's pieces (block-copy tasks): a chunk stops at the end of the source's status run.
      let n = run.length;
      try { n = await this.state.pieceAt(run.offset, run.length); } catch { /* the copy reports it */ }
      pos = run.offset + n;
      const p = this.copyChunk(run.offset, n).finally(() => this.inflight.delete(p));
      this.inflight.add(p);
      if (this.speed > 0) await this.throttle(n);
    }
    if (this.isCancelled) throw new JobCancelledError();
    if (this.ioFailure !== undefined) throw this.ioFailure;
    await this.target.flush();
  }

  private async copyChunk(offset: number, length: number): Promise<void> {
    try {
      await this.state.copyRange(offset, length);
    } catch (e) {
      // Once the job has failed (report), the chunks still in flight add no further error event.
      if (this.isCancelled || this.ioFailure !== undefined) return;
      const err = toBlockError(e);
      const isRead = (e as { cowRead?: boolean }).cowRead === true;
      // Chunks in flight when the job stopped on an error fail quietly: one BLOCK_JOB_ERROR, as in qsd.
      const action = this.userPaused && this.ioStatus !== 'ok' ? 'stop'
        : this.errorAction(isRead ? this.onSourceError : this.onTargetError, isRead, err);
      if (action === 'report') this.ioFailure ??= jobFailure(err);
      else if (action === 'ignore') this.state.map.clear(offset, length);
      // 'stop': the clusters stay uncopied; the main loop pauses and its next sweep retries them after job-resume.
    }
  }

  /** sync=top: clusters not allocated in the source's top layer are not copied. */
  private async skipUnallocated(len: number): Promise<void> {
    for (let off = 0; off < len;) {
      const extents = await this.source.blockStatus(off, len - off);
      for (const e of extents) {
        if (!e.allocated) {
          // Only whole clusters: a cluster partly allocated is copied.
          const c = this.state.cluster;
          const a = Math.ceil(e.offset / c) * c;
          const b = e.offset + e.length >= len ? len : Math.floor((e.offset + e.length) / c) * c;
          if (b > a) { this.state.map.clear(a, b - a); this.progressUpdate(b - a); }
        }
        off = e.offset + e.length;
      }
    }
  }

  protected override async abort(): Promise<void> {
    await this.settleBitmap(false);
    await this.takeOut();
  }

  protected override async commit(): Promise<void> {
    await this.settleBitmap(true);
    await this.takeOut();
  }

  /**
   * The bitmap after the job (QEMU's BitmapSyncMode): it already holds the
   * writes made since the start; 'never', and a failed 'on-success', get the
   * start's contents back; a failed 'always' gets back what was not copied.
   * A persistent bitmap is stored then: until now its image copy kept the
   * start's contents too (the clear at the start is not stored), so a crash
   * during the job leaves it covering everything not yet backed up.
   */
  private async settleBitmap(ok: boolean): Promise<void> {
    const bm = this.bitmap;
    if (!bm || !this.frozen) return;
    const reclaim = this.bitmapMode === 'never' || (!ok && this.bitmapMode === 'on-success');
    if (reclaim) bm.bits.or(this.frozen);
    else this.takeSuccessorPlace(bm);
    if (!ok && this.bitmapMode === 'always') {
      for (let pos = 0; ;) {
        const run = this.state.map.nextRun(pos, Number.MAX_SAFE_INTEGER);
        if (!run || run.offset < pos) break;
        bm.mark(run.offset, run.length);
        pos = run.offset + run.length;
      }
    }
    this.frozen = undefined;
    this.holdsBitmap = false;
    await bitmapChanged(this.source, bm).catch(() => undefined);
  }

  /**
   * In QEMU the bitmap that lives on is the successor made at the start,
   * which was put at the head of the node's list then: the bitmap moves in
   * front of the bitmaps that existed when the job started (query order).
   */
  private takeSuccessorPlace(bm: DirtyBitmap): void {
    const list = bitmapsOf(this.source).bitmaps;
    const i = list.indexOf(bm);
    if (i < 0 || !this.bitmapsAtStart) return;
    list.splice(i, 1);
    const at = list.findIndex((b) => this.bitmapsAtStart!.has(b));
    list.splice(at < 0 ? list.length : at, 0, bm);
  }

  private async takeOut(): Promise<void> {
    this.state.deactivate();
    const f = this.filter;
    this.filter = undefined;
    if (f) await removeFilter(this.graph, f, this.source, 'drain');
  }

  protected override async clean(): Promise<void> {
    this.holdsBitmap = false;
    await this.takeOut();
    await super.clean();
  }
}
