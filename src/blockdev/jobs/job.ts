/**
 * Job: one long-running operation with QEMU's status model (status.ts).
 *
 * A job type subclasses Job (or BlockJob) and implements run(signal). The
 * base class owns everything else: status transitions (asserted against the
 * table, each one announced), user verbs (refused by the verb table with
 * QEMU's message), pausing at safe points, cancellation, the finalisation
 * sequence (waiting → pending → [prepare] → commit/abort → clean → concluded
 * → null) and progress counters.
 *
 * Extension points, in the order they are used:
 *   run(signal)         the work. Call `await this.pausePoint()` (or
 *                       `this.sleep(ms)`) between units of work; stop when
 *                       `this.isCancelled`; `signal` aborts on a forced cancel.
 *                       Throw to fail the job (the message becomes its error).
 *   transitionToReady() for jobs that converge (mirror): running → ready.
 *   complete()          job-complete on a ready job; leave it undefined and the
 *                       verb fails with "The active block job 'x' cannot be completed".
 *   cancelHook(force)   returns whether the cancel is forced. Default: always
 *                       forced. A mirror returns `force || !this.isReady` so a soft
 *                       cancel of a ready mirror completes without pivoting
 *                       (`this.cancelRequested` is then true, `isCancelled` false).
 *   pauseHook/resumeHook  around a pause at a pause point (quiesce in-flight I/O).
 *   userResumeHook()    on job-resume (BlockJob resets its io-status).
 *   prepare()           after a successful run, before commit; throwing fails the job.
 *   commit() / abort()  exactly one of them, then clean(): graph changes go here.
 *   notify(kind)        status milestones for subclasses that announce more (BlockJob).
 *
 * A job belongs to a job transaction (txn.ts): alone, its own; in a grouped
 * `transaction`, one shared with the other jobs it created. Completion,
 * finalisation and the abort on failure or cancel go through the transaction
 * (QEMU's job_completed_txn_success / job_do_finalize / job_completed_txn_abort).
 */
import { assert } from '../../util/errors.ts';
import { CANCELED_MESSAGE, JobCancelledError, JobError } from './errors.ts';
import { JobTxn } from './txn.ts';
import {
  canTransition, isCompletedStatus, isReadyStatus, verbAllowed, verbRefusal,
  type JobStatus, type JobType, type JobVerb,
} from './status.ts';

/** Where a job's events go (the JobManager, which hands them to the QMP server). */
export interface JobEventSink {
  emit(event: string, data: Record<string, unknown>): void;
  /** Called once a job reaches status null, so the registry forgets it. */
  removed(job: Job): void;
}

export interface JobOptions {
  /** The user's job id; absent for an internal job (no events, not listed). */
  id?: string;
  /** Finalise as soon as the run succeeds (default); false waits in 'pending' for job-finalize. */
  autoFinalize?: boolean;
  /** Dismiss on conclusion (default); false keeps the job in 'concluded' until job-dismiss. */
  autoDismiss?: boolean;
  /** The transaction the job joins when registered (a grouped `transaction`'s); default: one of its own. */
  txn?: JobTxn;
}

/** QAPI JobInfo. */
export interface JobInfo {
  id: string;
  type: JobType;
  status: JobStatus;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

/** Milestones a subclass may announce (BlockJob turns them into BLOCK_JOB_* events). */
export type JobMilestone = 'ready' | 'pending' | 'completed' | 'cancelled';

export abstract class Job {
  abstract readonly type: JobType;
  readonly id: string | undefined;
  readonly autoFinalize: boolean;
  readonly autoDismiss: boolean;

  private statusValue: JobStatus = 'undefined';
  private sink?: JobEventSink;
  private readonly txn: JobTxn;

  // Progress (QEMU progress_current / progress_total).
  private progressCurrent = 0;
  private progressTotal = 0;

  // Pause and wake-up state (QEMU pause_count, user_paused, busy, paused).
  private pauseCount = 1;
  private userPausedFlag = false;
  private busyFlag = false;
  private pausedFlag = true;
  private started = false;
  /** The run is over and completion has been handed to the finalisation code. */
  private deferred = false;
  private wake?: () => void;
  /** Cancels the pending wake-up of a sleep (undefined: not sleeping on one). */
  private timer?: () => void;

  // Cancellation (QEMU cancelled / force_cancel) and result.
  private cancelled = false;
  private forceCancel = false;
  private failure?: string;
  private readonly abortController = new AbortController();
  /** The finalisation sequence (commit or abort, clean, conclude), once begun. */
  private finishing?: Promise<void>;
  private runOverResolve!: () => void;
  /** Resolves once the run is over and its result decided (QEMU job_is_completed). */
  private readonly runOver: Promise<void> = new Promise((r) => (this.runOverResolve = r));

  private concludedResolve!: () => void;
  /** Resolves when the job reaches 'concluded' (or is dismissed without concluding). */
  readonly concluded: Promise<void> = new Promise((r) => (this.concludedResolve = r));

  constructor(opts: JobOptions) {
    this.id = opts.id;
    this.autoFinalize = opts.autoFinalize ?? true;
    this.autoDismiss = opts.autoDismiss ?? true;
    this.txn = opts.txn ?? new JobTxn();
  }

  // ---------------------------------------------------------------- to implement

  /** The job's work; see the file comment. */
  protected abstract run(signal: AbortSignal): Promise<void>;

  protected complete?(): void | Promise<void>;
  protected cancelHook(_force: boolean): boolean { return true; }
  protected pauseHook?(): void | Promise<void>;
  protected resumeHook?(): void | Promise<void>;
  protected userResumeHook?(): void;
  protected prepare?(): void | Promise<void>;
  protected commit?(): void | Promise<void>;
  protected abort?(): void | Promise<void>;
  protected clean?(): void | Promise<void>;
  protected notify(_milestone: JobMilestone): void {}

  // ---------------------------------------------------------------- state

  get status(): JobStatus { return this.statusValue; }
  get isInternal(): boolean { return this.id === undefined; }
  /** Cancelled with force (or by a job without soft cancel): the run must stop and the job fails. */
  get isCancelled(): boolean { return this.cancelled && this.forceCancel; }
  /** Any cancel was asked for, soft or forced. */
  get cancelRequested(): boolean { return this.cancelled; }
  get isReady(): boolean { return isReadyStatus(this.statusValue); }
  get isCompleted(): boolean { return isCompletedStatus(this.statusValue); }
  get userPaused(): boolean { return this.userPausedFlag; }
  /** Some pause (user or internal) is in force (BlockJobInfo 'paused'). */
  get pauseRequested(): boolean { return this.pauseCount > 0; }
  /** The job is doing work rather than waiting at a pause point or in a sleep. */
  get busy(): boolean { return this.busyFlag; }
  get currentProgress(): number { return this.progressCurrent; }
  get totalProgress(): number { return this.progressTotal; }
  /** The failure message once the job has failed or been cancelled. */
  get error(): string | undefined { return this.failure; }

  /** How messages name this job's id (internal jobs have none). */
  protected get label(): string { return this.id ?? ''; }

  info(): JobInfo {
    const out: JobInfo = {
      id: this.label,
      type: this.type,
      status: this.statusValue,
      'current-progress': this.progressCurrent,
      'total-progress': this.progressTotal,
    };
    if (this.failure !== undefined) out.error = this.failure;
    return out;
  }

  // ---------------------------------------------------------------- progress

  protected progressUpdate(done: number): void { this.progressCurrent += done; }
  protected progressSetRemaining(remaining: number): void { this.progressTotal = this.progressCurrent + remaining; }
  protected progressIncreaseRemaining(delta: number): void { this.progressTotal += delta; }

  // ---------------------------------------------------------------- lifecycle (called by JobManager)

  /** Registers the job with its event sink: undefined → created. */
  attach(sink: JobEventSink): void {
    assert(!this.sink && this.statusValue === 'undefined', 'job attached twice');
    this.sink = sink;
    this.txn.add(this);
    this.transition('created');
  }

  /**
   * Starts the run: created → running. The run proceeds asynchronously; the
   * promise resolves once it first waits (or ends), as QEMU's job_start
   * returns when the job's coroutine first yields — so jobs started one after
   * the other announce their first pause in that order.
   */
  start(): Promise<void> {
    assert(this.sink && this.statusValue === 'created' && !this.started, `job '${this.label}' started twice or unregistered`);
    this.started = true;
    this.pauseCount--;
    this.busyFlag = true;
    this.pausedFlag = false;
    const yielded = new Promise<void>((r) => (this.firstYield = r));
    this.transition('running');
    void this.entry();
    return yielded;
  }
  private firstYield?: () => void;

  /** Set-up failed after creation, before start: created → null, no other event. */
  earlyFail(): void {
    assert(this.statusValue === 'created' && !this.started, 'earlyFail after start');
    this.doDismiss();
  }

  // ---------------------------------------------------------------- user verbs

  /** Throws QEMU's refusal unless `verb` is allowed in the current status. */
  applyVerb(verb: JobVerb): void {
    if (!verbAllowed(verb, this.statusValue)) {
      throw new JobError('EPERM', verbRefusal(this.label, this.statusValue, verb));
    }
  }

  userPause(): void {
    this.applyVerb('pause');
    if (this.userPausedFlag) throw new JobError('EBUSY', 'Job is already paused');
    this.userPausedFlag = true;
    this.pause();
  }

  userResume(): void {
    if (!this.userPausedFlag || this.pauseCount <= 0) {
      throw new JobError('EINVAL', "Can't resume a job that was not paused");
    }
    this.applyVerb('resume');
    this.userResumeHook?.();
    this.userPausedFlag = false;
    this.resume();
  }

  userCancel(force: boolean): void {
    this.applyVerb('cancel');
    this.cancel(force);
  }

  async userComplete(): Promise<void> {
    this.applyVerb('complete');
    if (this.cancelled || !this.complete) {
      throw new JobError('ENOTSUP', `The active block job '${this.label}' cannot be completed`);
    }
    await this.complete();
  }

  async userFinalize(): Promise<void> {
    this.applyVerb('finalize');
    await this.doFinalize();
  }

  userDismiss(): void {
    this.applyVerb('dismiss');
    this.doDismiss();
  }

  // ---------------------------------------------------------------- internal pause / cancel

  /** An internal pause (drain, error policy 'stop'): counted, and kicks a sleeping job so it pauses promptly. */
  pause(): void {
    this.pauseCount++;
    if (!this.pausedFlag) this.enter();
  }

  resume(): void {
    assert(this.pauseCount > 0, 'resume without pause');
    if (--this.pauseCount > 0) return;
    // A job sleeping on a timer (rate limit) wakes when the timer fires, not earlier.
    if (this.timer === undefined) this.enter();
  }

  /** Pauses as job-pause would, without the verb check (on-error policy 'stop'). */
  protected pauseAsUser(): void {
    if (this.userPausedFlag) return;
    this.userPausedFlag = true;
    this.pause();
  }

  /** Cancels (job_cancel): forced unless the job's cancelHook says otherwise. */
  cancel(force: boolean): void {
    if (this.statusValue === 'concluded') { this.doDismiss(); return; }
    // Finalisation already under way decides the outcome; a late cancel changes nothing.
    if (this.finishing || this.txn.finalizing) return;
    this.cancelAsync(force);
    if (!this.started) {
      void this.completed();
    } else if (this.deferred) {
      // Waiting for job-finalize (or for the rest of its transaction): abort the transaction now.
      if (this.isCancelled && (this.statusValue === 'waiting' || this.statusValue === 'pending')) void this.txnAbort();
    } else {
      this.enter();
    }
  }

  /** Records a cancel request and wakes the run so it can wind down (QEMU job_cancel_async). */
  private cancelAsync(force: boolean): void {
    const forced = this.cancelHook(force);
    if (this.userPausedFlag) {
      // Cancelling a paused job resumes it, so its run can wind down.
      this.userResumeHook?.();
      this.userPausedFlag = false;
      assert(this.pauseCount > 0, 'user pause without pause count');
      this.pauseCount--;
    }
    // A soft cancel of a job whose run is already over changes nothing.
    if (forced || !this.deferred) {
      this.cancelled = true;
      this.forceCancel ||= forced;
    }
    if (this.isCancelled && !this.abortController.signal.aborted) this.abortController.abort(new JobCancelledError());
  }

  // ---------------------------------------------------------------- for subclasses' run()

  /**
   * A safe point: if a pause is requested, moves to paused (or standby when
   * ready), waits for resume, and moves back. Returns at once when cancelled.
   */
  protected async pausePoint(): Promise<void> {
    if (this.pauseCount === 0 || this.isCancelled) return;
    await this.pauseHook?.();
    if (this.pauseCount > 0 && !this.isCancelled) {
      const before = this.statusValue;
      this.transition(before === 'ready' ? 'standby' : 'paused');
      this.pausedFlag = true;
      // Only resume (or cancel) ends a pause; other wake-ups (work arriving) wait for it.
      while (this.pauseCount > 0 && !this.isCancelled) await this.yieldFor();
      this.pausedFlag = false;
      this.transition(before);
    }
    await this.resumeHook?.();
  }

  /** Sleeps `ms` (0 yields to the event loop), waking early on cancel or pause; a pause point. */
  protected async sleep(ms: number): Promise<void> {
    assert(this.busyFlag, 'sleep while not busy');
    if (this.isCancelled) return;
    if (this.pauseCount === 0) await this.yieldFor(Math.max(0, ms));
    await this.pausePoint();
  }

  /** Waits until enter() (e.g. an in-flight request completing); a pause point. */
  protected async waitForEnter(): Promise<void> {
    assert(this.busyFlag, 'wait while not busy');
    if (this.isCancelled) return;
    if (this.pauseCount === 0) await this.yieldFor();
    await this.pausePoint();
  }

  /** Wakes the job if it is waiting (QEMU job_enter). */
  protected enter(): void {
    if (!this.started || this.deferred || this.busyFlag) return;
    this.wake?.();
  }

  /** True while the job waits on a sleep timer (set-speed re-kicks such a job). */
  protected get sleepingOnTimer(): boolean { return this.timer !== undefined; }

  /** running → ready, then the 'ready' milestone (BLOCK_JOB_READY). */
  protected transitionToReady(): void {
    this.transition('ready');
    this.notify('ready');
  }

  /** Throws JobCancelledError if the job has been cancelled with force. */
  protected checkCancelled(): void {
    if (this.isCancelled) throw new JobCancelledError();
  }

  // ---------------------------------------------------------------- internals

  /** The one place status changes: checked against the table and announced. */
  protected transition(to: JobStatus): void {
    const from = this.statusValue;
    assert(canTransition(from, to), `job '${this.label}': transition ${from} -> ${to} is not allowed`);
    this.statusValue = to;
    if (!this.isInternal && from !== to) this.sink!.emit('JOB_STATUS_CHANGE', { id: this.id!, status: to });
  }

  /** Emits an event through the job's sink (internal jobs emit nothing). */
  protected emit(event: string, data: Record<string, unknown>): void {
    if (!this.isInternal) this.sink!.emit(event, data);
  }

  private yieldFor(ms?: number): Promise<void> {
    this.busyFlag = false;
    this.firstYield?.();
    this.firstYield = undefined;
    return new Promise<void>((resolve) => {
      this.wake = () => {
        this.timer?.();
        this.timer = undefined;
        this.wake = undefined;
        this.busyFlag = true;
        resolve();
      };
      // A zero sleep is the next turn of the event loop: setTimeout(0) would be a whole
      // millisecond, which a job passing a pause point per chunk pays on every chunk.
      if (ms === 0) {
        const h = setImmediate(() => this.wake?.());
        this.timer = () => clearImmediate(h);
      } else if (ms !== undefined) {
        const h = setTimeout(() => this.wake?.(), ms);
        this.timer = () => clearTimeout(h);
      }
    });
  }

  private async entry(): Promise<void> {
    let err: unknown;
    try {
      await this.pausePoint();
      await this.run(this.abortController.signal);
    } catch (e) {
      err = e;
    }
    this.deferred = true;
    this.busyFlag = false;
    this.firstYield?.();
    this.firstYield = undefined;
    if (err !== undefined && !(this.isCancelled && isCancelError(err))) this.failure = errorMessage(err);
    // Completion runs from the event loop, after whatever the run's last step scheduled (QEMU's job_exit bottom half).
    await new Promise<void>((r) => setImmediate(r));
    await this.completed();
  }

  /** A cancelled job without its own error fails with ECANCELED; a failed job moves to aborting. */
  private updateRc(): void {
    if (this.failure === undefined && this.isCancelled) this.failure = CANCELED_MESSAGE;
    if (this.failure !== undefined) this.transition('aborting');
  }

  /** The run is over (or the job was cancelled before it started): on to the transaction's success or abort. */
  private async completed(): Promise<void> {
    this.updateRc();
    this.runOverResolve();
    if (this.failure !== undefined) {
      await this.txnAbort();
      return;
    }
    this.transition('waiting');
    // The transaction moves on once its last job is done (QEMU job_completed_txn_success).
    if (this.txn.jobs.some((j) => !j.isCompleted)) return;
    for (const j of this.txn.jobs) {
      j.transition('pending');
      if (!j.autoFinalize) j.notify('pending');
    }
    if (this.txn.jobs.every((j) => j.autoFinalize)) await this.doFinalize();
  }

  /**
   * Finalises the whole transaction: prepare each job (newest first), and if
   * all succeed commit each; if one fails, abort them all. One run per
   * transaction: a second caller gets the same promise.
   */
  private doFinalize(): Promise<void> {
    const txn = this.txn;
    txn.finalizing ??= (async () => {
      const jobs = [...txn.jobs];
      for (const j of jobs) {
        if (!(await j.runPrepare())) {
          await this.txnAbort();
          return;
        }
      }
      for (const j of jobs) await j.finalizeSingle();
    })();
    return txn.finalizing;
  }

  /** The job type's prepare(), once; false if the job has failed. */
  private async runPrepare(): Promise<boolean> {
    if (this.failure === undefined && this.prepare) {
      try {
        await this.prepare();
      } catch (e) {
        this.failure = errorMessage(e);
      }
    }
    this.updateRc();
    return this.failure === undefined;
  }

  /**
   * A job of the transaction failed or was cancelled (QEMU
   * job_completed_txn_abort): every other member is cancelled with force;
   * then, newest first, each is waited for until its run is over and
   * finalised (abort, clean, event, conclude).
   */
  private async txnAbort(): Promise<void> {
    const txn = this.txn;
    if (txn.aborting) return;
    txn.aborting = true;
    for (const j of txn.jobs) if (j !== this) j.cancelAsync(true);
    while (txn.jobs.length > 0) {
      const j = txn.jobs[0]!;
      if (!j.isCompleted) {
        // A member never started (a transaction that failed after creating it) ends here;
        // qsd 7.2 waits for it forever instead.
        if (!j.started) { j.updateRc(); j.runOverResolve(); } else j.enter();
        await j.runOver;
      }
      await j.finalizeSingle();
      txn.remove(j);
    }
  }

  private finalizeSingle(): Promise<void> {
    this.finishing ??= this.finish();
    return this.finishing;
  }

  /** commit or abort, clean, announce, conclude, and dismiss if automatic. */
  private async finish(): Promise<void> {
    this.updateRc();
    const cancelled = this.isCancelled;
    try {
      try {
        if (this.failure === undefined) await this.commit?.();
        else await this.abort?.();
      } finally {
        await this.clean?.();
      }
    } catch (e) {
      // commit/abort/clean must not fail; a failure here is a bug in the job type, kept visible.
      this.failure ??= errorMessage(e);
    }
    if (this.started) this.notify(cancelled ? 'cancelled' : 'completed');
    this.txn.remove(this);
    this.transition('concluded');
    this.concludedResolve();
    if (this.autoDismiss || !this.started) this.doDismiss();
  }

  private doDismiss(): void {
    this.txn.remove(this);
    this.busyFlag = false;
    this.pausedFlag = false;
    this.deferred = true;
    this.transition('null');
    this.concludedResolve();
    this.sink!.removed(this);
  }
}

function isCancelError(e: unknown): boolean {
  return e instanceof JobCancelledError || (e instanceof Error && e.name === 'AbortError');
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
