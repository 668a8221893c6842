/**
 * A job transaction (QEMU's JobTxn): jobs that succeed or fail together.
 * Every job has one; a job created alone is the only member of its own. A
 * `transaction` with completion-mode 'grouped' puts its backup jobs in a
 * shared one: they wait for each other before finalising, are finalised
 * together (one job-finalize finalises all), and when one fails or is
 * cancelled the others are cancelled ("Operation canceled").
 *
 * The list order is QEMU's: newest first (jobs are inserted at the head);
 * finalisation and the abort walk visit the jobs in this order, which shows
 * in the order of their events.
 */
import type { Job } from './job.ts';

export class JobTxn {
  /** Members, newest first; a job leaves the list when it concludes. */
  readonly jobs: Job[] = [];
  /** The abort walk has begun: jobs failing meanwhile leave the work to it. */
  aborting = false;
  /** The finalisation of the whole transaction, once begun (one per transaction). */
  finalizing?: Promise<void>;

  add(job: Job): void {
    this.jobs.unshift(job);
  }

  remove(job: Job): void {
    const i = this.jobs.indexOf(job);
    if (i >= 0) this.jobs.splice(i, 1);
  }
}
