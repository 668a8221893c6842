/**
 * JobManager: every job by id, the lookups the QMP commands use (with
 * QEMU's error texts), the queries, and the single exit for job events: the
 * `emit` callback given at construction (the QMP server broadcasts it).
 */
import { VALID_ID } from '../graph.ts';
import { JobError } from './errors.ts';
import { BlockJob, type BlockJobInfo } from './block-job.ts';
import type { Job, JobEventSink, JobInfo } from './job.ts';

export type EmitFn = (event: string, data: Record<string, unknown>) => void;

export class JobManager {
  /** Creation order; queries list newest first, as QEMU does. */
  private readonly jobs: Job[] = [];
  private readonly sink: JobEventSink;

  constructor(emit: EmitFn) {
    this.sink = {
      emit: (event, data) => emit(event, data),
      removed: (job) => {
        const i = this.jobs.indexOf(job);
        if (i >= 0) this.jobs.splice(i, 1);
      },
    };
  }

  /**
   * Registers a new job (undefined → created) after checking its id; the
   * caller then does any set-up and calls job.start() (or job.earlyFail()).
   */
  add<J extends Job>(job: J): J {
    if (job.id !== undefined) {
      if (!VALID_ID.test(job.id)) throw new JobError('EINVAL', `Invalid job ID '${job.id}'`);
      if (this.get(job.id)) throw new JobError('EINVAL', `Job ID '${job.id}' already in use`);
    }
    this.jobs.push(job);
    job.attach(this.sink);
    return job;
  }

  /** A job by id, or undefined. */
  get(id: string): Job | undefined {
    return this.jobs.find((j) => j.id === id);
  }

  /** The job-* commands' lookup. */
  find(id: string): Job {
    const job = this.get(id);
    if (!job) throw new JobError('ENOENT', 'Job not found');
    return job;
  }

  /** The block-job-* commands' lookup: only block jobs, and a different class and text. */
  findBlockJob(id: string): BlockJob {
    const job = this.get(id);
    if (!(job instanceof BlockJob)) throw new JobError('ENOENT', `Block job '${id}' not found`, 'DeviceNotActive');
    return job;
  }

  /** User-visible jobs, newest first. */
  list(): Job[] {
    return this.jobs.filter((j) => !j.isInternal).reverse();
  }

  queryJobs(): JobInfo[] {
    return this.list().map((j) => j.info());
  }

  queryBlockJobs(): BlockJobInfo[] {
    return this.list().filter((j): j is BlockJob => j instanceof BlockJob).map((j) => j.blockInfo());
  }

  get size(): number { return this.jobs.length; }

  /**
   * Shutdown: cancels every job that can still be cancelled and waits until
   * each has concluded (QEMU job_cancel_sync_all); concluded jobs are
   * dismissed. As QEMU, one at a time, newest first (its job list is
   * prepended to), so a QMP client sees each job's whole cancellation
   * before the next one's.
   */
  async cancelAll(): Promise<void> {
    for (let job = this.jobs.at(-1); job; job = this.jobs.at(-1)) {
      // A concluded job is dismissed at once; a running one winds down (one finalising ends on its own).
      job.cancel(true);
      // Still listed once concluded (auto-dismiss off): the next turn's cancel() dismisses it.
      if (this.jobs.at(-1) === job) await job.concluded;
    }
  }
}
