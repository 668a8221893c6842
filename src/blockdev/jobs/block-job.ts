/**
 * BlockJob: a Job that works on block nodes (stream, commit, mirror, backup).
 * On top of Job it has a device name (its id), a speed limit (token bucket),
 * an io-status and an on-error policy, holds edges to the nodes it uses, and
 * announces its milestones as BLOCK_JOB_READY/PENDING/COMPLETED/CANCELLED and
 * I/O errors as BLOCK_JOB_ERROR.
 *
 * What a subclass adds to Job's extension points (see job.ts):
 *   - report progress in bytes: `len` is total-progress, `offset` current-progress;
 *   - after each unit of copying call `await this.throttle(bytes)`: it charges
 *     the bucket and sleeps as the speed requires (always a pause point);
 *   - on an I/O error call `this.errorAction(policy, isRead, err)` and act on
 *     the answer: 'ignore' (carry on), 'report' (fail: rethrow), 'stop' (the
 *     job is now user-paused; retry the request after `await this.pausePoint()`);
 *   - take the nodes it works on with `this.useNode(node, role, perm, shared)`
 *     (permission conflicts name the job: "mirror job 'j0'"); edges still held
 *     are released when the job concludes, or earlier with releaseNodes().
 */
import { Job, type JobMilestone, type JobOptions } from './job.ts';
import { JobError } from './errors.ts';
import { TokenBucket } from '../../util/token-bucket.ts';
import type { BlockGraph } from '../graph.ts';
import type { BlockNode } from '../node.ts';
import type { ChildEdge, Parent } from '../edge.ts';
import { toBlockError, type BlockError } from '../../util/errors.ts';
import type { Extent } from '../request.ts';
import type { Perm } from '../driver.ts';
import type { JobStatus, JobType } from './status.ts';

export type BlockIoStatus = 'ok' | 'failed' | 'nospace';
/** QAPI BlockdevOnError. */
export type BlockdevOnError = 'report' | 'ignore' | 'enospc' | 'stop' | 'auto';
export type BlockErrorAction = 'ignore' | 'report' | 'stop';

/** Chunks stream and commit copy at once when no speed limit is set. */
const COPY_PARALLEL = 4;

export interface BlockJobOptions extends JobOptions {
  /** The graph the job's nodes live in (edges are created and removed through it). */
  graph: BlockGraph;
  /** Bytes per second; 0 (default) is unlimited. */
  speed?: number;
  /** A clock for the rate limiter, in milliseconds (tests pass a fake one). */
  now?: () => number;
}

/** QAPI BlockJobInfo (7.2). */
export interface BlockJobInfo {
  type: JobType;
  device: string;
  len: number;
  offset: number;
  busy: boolean;
  paused: boolean;
  speed: number;
  'io-status': BlockIoStatus;
  ready: boolean;
  status: JobStatus;
  'auto-finalize': boolean;
  'auto-dismiss': boolean;
  error?: string;
}

export abstract class BlockJob extends Job implements Parent {
  protected readonly graph: BlockGraph;
  private speedValue: number;
  private readonly bucket: TokenBucket;
  private readonly now: () => number;
  private ioStatusValue: BlockIoStatus = 'ok';
  private readonly edges: ChildEdge[] = [];

  constructor(opts: BlockJobOptions) {
    super(opts);
    this.graph = opts.graph;
    this.now = opts.now ?? (() => performance.now());
    this.speedValue = opts.speed ?? 0;
    if (this.speedValue < 0) throw new JobError('EINVAL', "Parameter 'speed' expects a non-negative value");
    this.bucket = new TokenBucket(this.speedValue, this.now());
  }

  get device(): string { return this.id ?? ''; }
  get speed(): number { return this.speedValue; }
  get ioStatus(): BlockIoStatus { return this.ioStatusValue; }
  get len(): number { return this.totalProgress; }
  get offset(): number { return this.currentProgress; }

  /** How permission errors name the job, as QEMU does. */
  describe(): string { return `${this.type} job '${this.device}'`; }

  blockInfo(): BlockJobInfo {
    const out: BlockJobInfo = {
      type: this.type,
      device: this.device,
      len: this.len,
      offset: this.offset,
      busy: this.busy,
      paused: this.pauseRequested,
      speed: this.speedValue,
      'io-status': this.ioStatusValue,
      ready: this.isReady,
      status: this.status,
      'auto-finalize': this.autoFinalize,
      'auto-dismiss': this.autoDismiss,
    };
    if (this.error !== undefined) out.error = this.error;
    return out;
  }

  /** block-job-set-speed. */
  setSpeed(speed: number): void {
    this.applyVerb('set-speed');
    if (speed < 0) throw new JobError('EINVAL', "Parameter 'speed' expects a non-negative value");
    if (speed === this.speedValue) return;
    this.speedValue = speed;
    this.bucket.setRate(speed, this.now());
    // A job sleeping for the old speed recomputes its delay now.
    if (this.sleepingOnTimer) this.enter();
  }

  // ---------------------------------------------------------------- for subclasses

  /** Charges `bytes` of work done and sleeps as long as the speed requires (at least once: a pause point). */
  protected async throttle(bytes: number): Promise<void> {
    this.bucket.take(bytes, this.now());
    for (;;) {
      const delay = this.bucket.delay(this.now());
      await this.sleep(delay);
      if (delay === 0 || this.isCancelled) return;
    }
  }

  /**
   * Applies an on-error policy to an I/O error (QEMU block_job_error_action):
   * announces BLOCK_JOB_ERROR and, for 'stop', pauses the job as if the user
   * had and records the io-status until job-resume.
   */
  protected errorAction(policy: BlockdevOnError, isRead: boolean, err: BlockError): BlockErrorAction {
    let action: BlockErrorAction;
    switch (policy) {
      case 'enospc': action = err.code === 'ENOSPC' ? 'stop' : 'report'; break;
      case 'stop': action = 'stop'; break;
      case 'ignore': action = 'ignore'; break;
      default: action = 'report'; break;
    }
    this.emit('BLOCK_JOB_ERROR', { device: this.device, operation: isRead ? 'read' : 'write', action });
    if (action === 'stop') {
      if (!this.userPaused) this.pauseAsUser();
      this.ioStatusValue = err.code === 'ENOSPC' ? 'nospace' : 'failed';
    }
    return action;
  }

  /**
   * The copy loop of stream and commit: walks `node` from 0 to `length` in
   * chunks, calls `copy` for each extent `wanted` picks, and between chunks
   * honours pause, cancel, speed, progress and the on-error policy (a
   * stopped chunk is retried after job-resume). Returns false if cancelled.
   *
   * Without a speed limit, COPY_PARALLEL chunks are copied at once: one
   * chunk at a time leaves the disk idle while each chunk's block status,
   * read and write wait on one another in turn. Results are taken in order;
   * after an error, chunks behind the failed one are walked again (copying is
   * idempotent) once the policy allows.
   */
  protected async copyExtents(
    node: BlockNode, length: number, chunk: number, onError: BlockdevOnError,
    wanted: (e: Extent) => boolean, copy: (offset: number, length: number) => Promise<void>,
  ): Promise<boolean> {
    const copyChunk = async (off: number, n: number): Promise<number> => {
      let copied = 0;
      for (const e of await node.blockStatus(off, n)) {
        if (!wanted(e)) continue;
        await copy(e.offset, e.length);
        copied += e.length;
      }
      return copied;
    };
    for (let off = 0; off < length;) {
      await this.pausePoint();
      if (this.isCancelled) return false;
      const batch: { off: number; n: number }[] = [];
      for (let o = off, k = this.speedValue > 0 ? 1 : COPY_PARALLEL; k > 0 && o < length; k--, o += chunk) {
        batch.push({ off: o, n: Math.min(chunk, length - o) });
      }
      off = await this.settleBatch(batch, await Promise.allSettled(batch.map((c) => copyChunk(c.off, c.n))), off, onError);
    }
    return true;
  }

  /**
   * The copy loop of stream: like copyExtents, but the pieces are the job's
   * own (`piece(offset)` says how long the piece at `offset` is and whether
   * it is copied), walked from each piece's end as QEMU's stream_run does,
   * so each copy covers exactly the piece qsd copies as one. Up to
   * COPY_PARALLEL copies run at once without a speed limit.
   */
  protected async copyPieces(
    length: number, onError: BlockdevOnError,
    piece: (offset: number) => Promise<{ length: number; copy: boolean }>, copy: (offset: number, length: number) => Promise<void>,
  ): Promise<boolean> {
    for (let off = 0; off < length;) {
      await this.pausePoint();
      if (this.isCancelled) return false;
      const batch: { off: number; n: number; copy: boolean }[] = [];
      for (let o = off, k = this.speedValue > 0 ? 1 : COPY_PARALLEL; k > 0 && o < length && batch.length < 256;) {
        const p = await piece(o);
        batch.push({ off: o, n: p.length, copy: p.copy });
        o += p.length;
        if (p.copy) k--;
      }
      const results = await Promise.allSettled(batch.map(async (c) => { if (c.copy) await copy(c.off, c.n); return c.copy ? c.n : 0; }));
      off = await this.settleBatch(batch, results, off, onError);
    }
    return true;
  }

  /**
   * Takes a batch's results in order (the copy loops' common tail): progress
   * for each piece done, the on-error policy at the first failure (a stopped
   * batch resumes at the failed piece), then the speed limit for the bytes
   * copied. Returns the offset the next batch starts at.
   */
  private async settleBatch(batch: readonly { n: number }[], results: PromiseSettledResult<number>[], off: number, onError: BlockdevOnError): Promise<number> {
    let copied = 0;
    for (let i = 0; i < batch.length; i++) {
      const r = results[i]!;
      if (r.status === 'rejected') {
        const action = this.errorAction(onError, true, toBlockError(r.reason));
        if (action === 'report') throw r.reason;
        if (action === 'stop') break;
      } else {
        copied += r.value;
      }
      off += batch[i]!.n;
      this.progressUpdate(batch[i]!.n);
    }
    await this.throttle(copied);
    return off;
  }

  /** Attaches the job to `node` as a user; conflicts are refused here. */
  protected useNode(node: BlockNode, role: string, perm: Perm, shared: Perm, permissionAs?: ChildEdge['permissionAs']): ChildEdge {
    const edge = this.graph.link(this, node, role, { perm, shared, permissionAs });
    this.edges.push(edge);
    return edge;
  }

  /** Drops every edge the job still holds. Idempotent. */
  protected async releaseNodes(): Promise<void> {
    while (this.edges.length > 0) await this.graph.unlink(this, this.edges.pop()!);
  }

  // ---------------------------------------------------------------- Job hooks

  protected override userResumeHook(): void {
    this.ioStatusValue = 'ok';
  }

  protected override notify(milestone: JobMilestone): void {
    const base = { device: this.device, len: this.len, offset: this.offset, speed: this.speedValue, type: this.type };
    switch (milestone) {
      case 'ready': this.emit('BLOCK_JOB_READY', base); break;
      case 'pending': this.emit('BLOCK_JOB_PENDING', { type: this.type, id: this.device }); break;
      case 'cancelled': this.emit('BLOCK_JOB_CANCELLED', base); break;
      case 'completed':
        this.emit('BLOCK_JOB_COMPLETED', this.error !== undefined ? { ...base, error: this.error } : base);
        break;
    }
  }

  /** Subclasses that override clean() call super.clean() last. */
  protected override async clean(): Promise<void> {
    await this.releaseNodes();
  }
}
