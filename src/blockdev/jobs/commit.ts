/**
 * block-commit: writes what `top` and the layers between it and `base`
 * hold into `base`.
 *
 * Intermediate commit (`top` has an overlay): one pass over the whole
 * length, then the overlay's backing link goes to `base` (and its header
 * names `base`), which drops the committed layers. Progress is the whole
 * length, as in qsd.
 *
 * Active commit (`top` is the device itself, or a layer someone writes to:
 * QEMU's qmp_block_commit takes that path whenever `top` has a writer, e.g.
 * a writable export of it): like a mirror. A write
 * observer on `top` keeps a dirty set (64 KiB granules); the job copies the
 * dirty granules until none is left, reaches READY, and keeps copying new
 * writes. job-complete moves every user of `top` (exports included, and an
 * overlay's backing link, whose header keeps naming `top` as in QEMU) to
 * `base` after a last copy made while they are held at the gate (see
 * surgery/replace.ts). job-cancel leaves the chain as it was: `base` only
 * gained data that `top` hides. Progress counts dirty bytes, as in qsd.
 *
 * The layers between `top` and `base` are the job's 'intermediate nodes':
 * an active commit lets others only write them (QEMU's mirror: they are to
 * disappear), so an export of one (it needs consistent reads) is refused.
 *
 * While the job runs, qsd's filter sits above `top` (filters/job-filter.ts):
 * 'commit_top' under the overlay (intermediate commit), or 'mirror_top'
 * holding all of `top`'s users (active commit), named by filter-node-name.
 */
import { BlockJob, type BlockJobOptions, type BlockdevOnError } from './block-job.ts';
import { toBlockError } from '../../util/errors.ts';
import { ALL_PERM, READ_PERM } from '../edge.ts';
import type { ChildEdge } from '../edge.ts';
import type { Perm } from '../driver.ts';
import { setBacking } from '../surgery/replace.ts';
import { insertFilter, removeFilter } from '../surgery/filter.ts';
import { jobFilterDriver } from '../filters/job-filter.ts';
import { copyBuffers } from '../copy-buffers.ts';
import { clusterSizeOf, mirrorPieces } from '../zeroes.ts';
import { ReqFlag } from '../request.ts';
import { backingDepth } from '../surgery/walk.ts';
import type { BlockNode, WriteObserver } from '../node.ts';

const GRANULE = 64 * 1024;
const NO_PERM: Perm = { read: false, write: false, resize: false };
/** The next layer down: the backing link, or a filter's child. */
const below = (n: BlockNode): BlockNode | undefined => n.child('backing') ?? (n.isFilter ? n.primaryChild : undefined);
/** `n` with the filters on top of it skipped. */
const skipFilters = (n: BlockNode): BlockNode => (n.isFilter && n.primaryChild ? skipFilters(n.primaryChild) : n);
const CHUNK = 1024 * 1024;

export interface CommitJobOptions extends BlockJobOptions {
  /** The node the command named: the active layer of the chain. */
  device: BlockNode;
  top: BlockNode;
  base: BlockNode;
  /** The node whose backing link is `top`; undefined when `top` is the device. */
  overlay?: BlockNode;
  /** Active commit (mirror-like, READY, job-complete): `top` is the device or has a writer. */
  active: boolean;
  backingFile?: string;
  /** filter-node-name: the name of the filter put above `top` (see filters/job-filter.ts). */
  filterNodeName?: string;
  onError: BlockdevOnError;
  /**
   * Reopens a node read-write or read-only: a read-only overlay is made
   * writable for as long as its header takes to name `base`, as in qsd.
   */
  setReadOnly: (node: BlockNode, readOnly: boolean) => Promise<void>;
  /** Called once the job is over (e.g. to make an intermediate base read-only again). */
  onFinished?: (ok: boolean) => Promise<void>;
}

export class CommitJob extends BlockJob {
  readonly type = 'commit' as const;
  private dirty?: Uint8Array;
  private dirtyCount = 0;
  private observer?: WriteObserver;
  private completeAsked = false;
  private succeeded = false;
  private counting = false;
  private filter?: BlockNode;
  /** Backing links whose consistent read an active commit suspended (see setUp). */
  private readonly suspendedReads: ChildEdge[] = [];

  constructor(private readonly o: CommitJobOptions) {
    super(o);
  }

  get isActive(): boolean { return this.o.active; }

  /**
   * Set-up that may still fail, before start: the job's edges and qsd's
   * filter above `top` ('mirror_top' for an active commit, which takes over
   * the device's users; 'commit_top' between the overlay and `top`).
   */
  async setUp(): Promise<void> {
    const { top, device } = this.o;
    // Holds `top` so layers nobody else uses are dropped when the job ends; an intermediate
    // commit also holds the device (qsd's 'main node': it is no root for another job then).
    this.useNode(top, 'commit-top', READ_PERM, ALL_PERM);
    if (!this.isActive) {
      this.useNode(device, 'main node', { read: false, write: false, resize: false }, ALL_PERM);
      // QEMU's commit writes `base` through a BlockBackend that lets others only read it.
      const { base } = this.o;
      this.useNode(base, 'base', { read: true, write: true, resize: base.length() < top.length() }, READ_PERM, { user: 'an unnamed block device', role: 'root' });
    }
    // qsd opens commit_top without read-write, mirror_top with it; both only pass requests on.
    const readOnly = !this.isActive;
    this.filter = await insertFilter(this.graph, top, {
      name: this.o.filterNodeName,
      driver: jobFilterDriver(this.isActive ? 'mirror_top' : 'commit_top'),
      role: 'backing',
      ops: {},
      readOnly,
      keep: (e) => e.parent === this,
      perm: { read: true, write: !readOnly, resize: false },
      shared: ALL_PERM,
    }, 'gate');
    // The job holds its filter too ('main node'), so the filter is no root for another job.
    if (this.isActive) {
      this.useNode(this.filter, 'main node', NO_PERM, ALL_PERM);
      const { base } = this.o;
      // QEMU's mirror_top asks `top` for writes only, so nobody above reads the chain below it
      // consistently any more: the layers' backing links (whose consistent read follows their
      // users' in QEMU, bdrv_default_perms_for_cow) hold none while the job runs.
      for (let n: BlockNode | undefined = top; n && n !== base; n = below(n)) {
        for (const e of n.children) {
          if (!e.cow || !e.perm.read) continue;
          e.perm = { ...e.perm, read: false };
          this.suspendedReads.push(e);
        }
      }
      // QEMU's mirror_start_job: the layers that disappear may only be written by others (not read
      // consistently, not resized); from the topmost filter over `base` down, consistent reads too.
      let shared: Perm = { read: false, write: true, resize: false };
      for (let n = below(top); n && n !== base; n = below(n)) {
        if (n.isFilter && skipFilters(n) === base) shared = { ...shared, read: true };
        this.useNode(n, 'intermediate node', NO_PERM, shared);
      }
    }
  }

  /** Gives the backing links their consistent reads back (after the job's own uses are gone). */
  private restoreReads(): void {
    for (const e of this.suspendedReads.splice(0)) e.perm = { ...e.perm, read: true };
  }

  /** Undoes setUp after a failure before start. */
  async tearDown(): Promise<void> {
    await this.dropFilter(this.o.top);
    await this.releaseNodes();
    this.restoreReads();
  }

  protected async run(): Promise<void> {
    if (this.isActive) await this.runActive();
    else await this.runIntermediate();
  }

  /** Takes the filter out, its users moving to `to`. Idempotent. */
  private async dropFilter(to: BlockNode, beforeSwitch?: () => Promise<void>): Promise<void> {
    const f = this.filter;
    this.filter = undefined;
    if (f) await removeFilter(this.graph, f, to, 'gate', beforeSwitch);
    else await beforeSwitch?.();
  }

  // ---- intermediate

  private async runIntermediate(): Promise<void> {
    const { top, base } = this.o;
    const len = top.length();
    this.progressSetRemaining(len);
    if (base.length() < len) await base.truncate(len);
    const limit = backingDepth(top, base);
    await this.copyExtents(top, len, CHUNK, this.o.onError, (e) => e.depth !== 0 && e.depth < limit, (o, l) => this.copy(o, l));
  }

  private async copy(offset: number, length: number): Promise<void> {
    const buf = copyBuffers.get(length);
    try {
      await this.o.top.read(offset, buf);
      await this.o.base.write(offset, buf);
    } finally {
      copyBuffers.put(buf);
    }
  }

  // ---- active

  /** An active commit copies as QEMU's mirror does (it is one there): zero runs as write-zeroes with unmap. */
  private async copyActive(offset: number, length: number): Promise<void> {
    for (const p of await mirrorPieces(this.o.top, offset, length, clusterSizeOf(this.o.base))) {
      if (p.zero) await this.o.base.writeZeroes(p.offset, p.length, ReqFlag.MAY_UNMAP);
      else await this.copy(p.offset, p.length);
    }
  }

  private async runActive(): Promise<void> {
    const { top, base } = this.o;
    const len = top.length();
    if (base.length() < len) await base.truncate(len);
    this.dirty = new Uint8Array(Math.ceil(len / GRANULE));
    this.observer = (offset, length) => {
      this.markDirty(offset, length);
      this.enter();
    };
    top.writeObservers.add(this.observer);
    const limit = backingDepth(top, base);
    for (let off = 0; off < len; off += CHUNK) {
      for (const e of await top.blockStatus(off, Math.min(CHUNK, len - off))) {
        if (e.depth !== 0 && e.depth < limit) this.markDirty(e.offset, e.length);
      }
    }
    this.progressSetRemaining(this.dirtyBytes());
    this.counting = true;
    for (;;) {
      await this.pausePoint();
      if (this.isCancelled || this.completeAsked || (this.cancelRequested && this.isReady)) return;
      if (this.dirtyCount === 0) {
        if (!this.isReady) this.transitionToReady();
        await this.waitForEnter();
        continue;
      }
      const copied = await this.copyDirty(CHUNK);
      await this.throttle(copied);
    }
  }

  private dirtyBytes(): number {
    const len = this.o.top.length();
    let n = 0;
    for (let i = 0; i < this.dirty!.length; i++) if (this.dirty![i]) n += Math.min(GRANULE, len - i * GRANULE);
    return n;
  }

  private markDirty(offset: number, length: number): void {
    const d = this.dirty!;
    const len = this.o.top.length();
    for (let g = Math.floor(offset / GRANULE); g * GRANULE < offset + length && g < d.length; g++) {
      if (d[g]) continue;
      d[g] = 1;
      this.dirtyCount++;
      // New work after READY grows the total, as a mirror's does.
      if (this.counting) this.progressIncreaseRemaining(Math.min(GRANULE, len - g * GRANULE));
    }
  }

  /** Copies up to `max` bytes of dirty granules (one run); returns the bytes copied. */
  private async copyDirty(max: number): Promise<number> {
    const d = this.dirty!;
    const len = this.o.top.length();
    const first = d.indexOf(1);
    if (first < 0) return 0;
    let last = first;
    while (last + 1 < d.length && d[last + 1] && (last + 2 - first) * GRANULE <= max) last++;
    for (let g = first; g <= last; g++) { d[g] = 0; this.dirtyCount--; }
    const offset = first * GRANULE;
    const length = Math.min((last + 1) * GRANULE, len) - offset;
    try {
      await this.copyActive(offset, length);
    } catch (err) {
      this.markDirtyQuiet(first, last);
      const action = this.errorAction(this.o.onError, true, toBlockError(err));
      if (action === 'report') throw err;
      return 0;
    }
    this.progressUpdate(length);
    return length;
  }

  private markDirtyQuiet(first: number, last: number): void {
    for (let g = first; g <= last; g++) if (!this.dirty![g]) { this.dirty![g] = 1; this.dirtyCount++; }
  }

  protected override complete(): void {
    this.completeAsked = true;
    this.enter();
  }

  /** A soft cancel of a ready active commit ends it without a pivot, as qsd does. */
  protected override cancelHook(force: boolean): boolean {
    return force || !this.isReady;
  }

  protected override async prepare(): Promise<void> {
    const { top, base, overlay } = this.o;
    if (!this.isActive && overlay) {
      await this.dropFilter(top);
      // What was copied must be in base's file (its metadata written) before the overlay's header
      // names base: a crash in between would otherwise leave a chain that reads base without it.
      await base.flush();
      const readOnly = overlay.readOnly;
      if (readOnly) await this.o.setReadOnly(overlay, false);
      try {
        await setBacking(this.graph, overlay, base, { backingFile: this.o.backingFile ?? base.fileName(), backingFormat: base.driver.name });
      } finally {
        if (readOnly) await this.o.setReadOnly(overlay, true);
      }
    } else if (this.completeAsked) {
      // The last writes are copied while every user waits at the gate; then they continue on `base`.
      await this.dropFilter(base, async () => {
        while (this.dirtyCount > 0) await this.copyDirty(CHUNK);
        await base.flush();
      });
    }
    this.succeeded = true;
  }

  protected override async clean(): Promise<void> {
    if (this.observer) this.o.top.writeObservers.delete(this.observer);
    this.observer = undefined;
    // Cancelled, failed, or an active commit ended without a pivot: the users go back to `top`.
    await this.dropFilter(this.o.top);
    await super.clean();
    this.restoreReads();
    await this.o.onFinished?.(this.succeeded);
  }
}
