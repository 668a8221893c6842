/**
 * The job framework driven through fake jobs: the exact JOB_STATUS_CHANGE and
 * BLOCK_JOB_* sequences for pause/resume, cancel, complete, manual finalize
 * and dismiss, failures, and the user verbs' refusals — each sequence as
 * qemu-storage-daemon 7.2 produces it for a mirror or backup job.
 */
import { describe, it, expect } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { BlockError } from '../../src/util/errors.ts';
import { BlockJob, Job, JobManager, JobError, type BlockJobOptions, type JobOptions } from '../../src/blockdev/jobs/index.ts';

interface Ev { event: string; data: Record<string, unknown> }

function recorder() {
  const events: Ev[] = [];
  const jobs = new JobManager((event, data) => events.push({ event, data }));
  const statuses = (id: string) => events.filter((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id).map((e) => e.data.status);
  const names = () => events.map((e) => (e.event === 'JOB_STATUS_CHANGE' ? String(e.data.status) : e.event));
  return { events, jobs, statuses, names };
}

async function until(cond: () => boolean, what = 'condition', ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * A block job that copies `total` bytes in `chunk` steps. Each step waits for
 * the test to allow it (gated) or just yields; `converge` makes it go ready
 * when done and wait for complete (or a soft cancel), like mirror.
 */
class FakeJob extends BlockJob {
  readonly type = 'mirror' as const;
  allowed = Infinity;
  completeAsked = false;
  failAt?: number;
  ioErrorAt?: { at: number; policy: 'stop' | 'report' | 'ignore' | 'enospc'; code: 'EIO' | 'ENOSPC' };
  calls: string[] = [];

  constructor(opts: Omit<BlockJobOptions, 'graph'>, private readonly total = 4, private readonly converge = false, private readonly soft = false) {
    super({ graph: new BlockGraph(), ...opts });
  }

  step(n = 1): void { this.allowed += n; this.enter(); }

  protected async run(): Promise<void> {
    this.progressSetRemaining(this.total);
    while (this.currentProgress < this.total) {
      while (this.allowed <= 0 && !this.isCancelled) await this.waitForEnter();
      if (this.isCancelled) return;
      this.allowed--;
      if (this.failAt === this.currentProgress) throw new BlockError('EIO', 'Input/output error');
      if (this.ioErrorAt && this.ioErrorAt.at === this.currentProgress) {
        const { policy, code } = this.ioErrorAt;
        const action = this.errorAction(policy, false, new BlockError(code, 'write failed'));
        if (action === 'report') throw new BlockError(code, 'write failed');
        if (action === 'stop') { this.ioErrorAt = undefined; await this.pausePoint(); continue; }
        this.ioErrorAt = undefined;
      }
      this.progressUpdate(1);
      await this.throttle(1);
    }
    if (!this.converge) return;
    this.transitionToReady();
    while (!this.completeAsked && !this.cancelRequested) await this.waitForEnter();
  }

  protected override complete(): void { this.completeAsked = true; this.enter(); }
  protected override cancelHook(force: boolean): boolean { return this.soft ? force || !this.isReady : true; }
  protected override prepare(): void { this.calls.push('prepare'); }
  protected override commit(): void { this.calls.push('commit'); }
  protected override abort(): void { this.calls.push('abort'); }
  protected override async clean(): Promise<void> { this.calls.push('clean'); await super.clean(); }
}

/** A plain (non-block) job, like blockdev-create's. */
class PlainJob extends Job {
  readonly type = 'create' as const;
  constructor(opts: JobOptions, private readonly work: () => Promise<void> = async () => {}) { super(opts); }
  protected async run(): Promise<void> {
    this.progressSetRemaining(1);
    try { await this.work(); } finally { this.progressUpdate(1); }
  }
}

describe('job lifecycle', () => {
  it('runs a plain job to the end: created, running, waiting, pending, concluded (no BLOCK_JOB_* events)', async () => {
    const r = recorder();
    const job = r.jobs.add(new PlainJob({ id: 'c1', autoDismiss: false }));
    job.start();
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'waiting', 'pending', 'concluded']);
    expect(r.jobs.queryJobs()).toEqual([{ id: 'c1', type: 'create', status: 'concluded', 'current-progress': 1, 'total-progress': 1 }]);
    expect(r.jobs.queryBlockJobs()).toEqual([]);
    r.jobs.find('c1').userDismiss();
    expect(r.statuses('c1').at(-1)).toBe('null');
    expect(r.jobs.queryJobs()).toEqual([]);
  });

  it('fails a plain job: aborting, concluded, error kept for query-jobs', async () => {
    const r = recorder();
    const job = r.jobs.add(new PlainJob({ id: 'c2', autoDismiss: false }, async () => { throw new Error('Unsupported preallocation mode: metadata'); }));
    job.start();
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'aborting', 'concluded']);
    expect(job.info()).toEqual({ id: 'c2', type: 'create', status: 'concluded', 'current-progress': 1, 'total-progress': 1, error: 'Unsupported preallocation mode: metadata' });
  });

  it('pauses at a safe point and resumes: paused, running', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'm1' }));
    job.allowed = 1;
    job.start();
    await until(() => job.currentProgress === 1 && !job.busy, 'first step');
    job.userPause();
    await until(() => job.status === 'paused', 'paused');
    expect(job.blockInfo()).toMatchObject({ status: 'paused', paused: true, busy: false, offset: 1, len: 4, ready: false });
    expect(() => job.userPause()).toThrow('Job is already paused');
    job.step(10); // work allowed while paused must wait for resume
    await new Promise((r2) => setTimeout(r2, 20));
    expect(job.currentProgress).toBe(1);
    job.userResume();
    expect(() => job.userResume()).toThrow("Can't resume a job that was not paused");
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'paused', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(r.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!.data).toEqual({ device: 'm1', len: 4, offset: 4, speed: 0, type: 'mirror' });
    expect(job.calls).toEqual(['prepare', 'commit', 'clean']);
  });

  it('cancels a running job: aborting, BLOCK_JOB_CANCELLED, concluded, null', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'm1', speed: 7 }));
    job.allowed = 1;
    job.start();
    await until(() => job.currentProgress === 1, 'first step');
    job.userCancel(false);
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(r.events.find((e) => e.event === 'BLOCK_JOB_CANCELLED')!.data).toEqual({ device: 'm1', len: 4, offset: 1, speed: 7, type: 'mirror' });
    expect(job.calls).toEqual(['abort', 'clean']);
  });

  it('cancelling a paused job resumes it first; the error is "Operation canceled"', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'm2', autoDismiss: false }));
    job.allowed = 0;
    job.start();
    job.userPause();
    await until(() => job.status === 'paused', 'paused');
    job.userCancel(true);
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'paused', 'running', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded']);
    expect(job.blockInfo()).toMatchObject({ status: 'concluded', paused: false, error: 'Operation canceled', 'auto-dismiss': false });
    expect(r.jobs.queryJobs()[0].error).toBe('Operation canceled');
  });

  it('a converging job: ready, standby on pause, complete accepted in standby, then completes on resume', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'm1', autoFinalize: false, autoDismiss: false }, 2, true));
    job.start();
    await until(() => job.status === 'ready', 'ready');
    expect(job.blockInfo()).toMatchObject({ ready: true, status: 'ready', offset: 2, len: 2 });
    job.userPause();
    await until(() => job.status === 'standby', 'standby');
    expect(job.blockInfo()).toMatchObject({ ready: true, paused: true });
    await job.userComplete();
    job.userResume();
    await until(() => job.status === 'pending', 'pending');
    expect(() => job.applyVerb('complete')).toThrow("Job 'm1' in state 'pending' cannot accept command verb 'complete'");
    await job.userFinalize();
    expect(job.status).toBe('concluded');
    job.userDismiss();
    expect(r.names()).toEqual([
      'created', 'running', 'ready', 'BLOCK_JOB_READY', 'standby', 'ready', 'waiting', 'pending', 'BLOCK_JOB_PENDING',
      'BLOCK_JOB_COMPLETED', 'concluded', 'null',
    ]);
    expect(r.events.find((e) => e.event === 'BLOCK_JOB_READY')!.data).toEqual({ device: 'm1', len: 2, offset: 2, speed: 0, type: 'mirror' });
    expect(r.events.find((e) => e.event === 'BLOCK_JOB_PENDING')!.data).toEqual({ type: 'mirror', id: 'm1' });
  });

  it('auto-finalize off: waits in pending for job-finalize, then concluded, then dismiss', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'b1', autoFinalize: false, autoDismiss: false }));
    job.start();
    await until(() => job.status === 'pending', 'pending');
    expect(job.calls).toEqual([]);
    expect(() => job.userDismiss()).toThrow("Job 'b1' in state 'pending' cannot accept command verb 'dismiss'");
    await job.userFinalize();
    expect(job.calls).toEqual(['prepare', 'commit', 'clean']);
    await expect(job.userFinalize()).rejects.toThrow("Job 'b1' in state 'concluded' cannot accept command verb 'finalize'");
    expect(() => job.userPause()).toThrow("Job 'b1' in state 'concluded' cannot accept command verb 'pause'");
    expect(() => job.userCancel(true)).toThrow("Job 'b1' in state 'concluded' cannot accept command verb 'cancel'");
    job.userDismiss();
    expect(r.names()).toEqual(['created', 'running', 'waiting', 'pending', 'BLOCK_JOB_PENDING', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(r.jobs.get('b1')).toBeUndefined();
  });

  it('cancel while pending aborts at once: aborting, BLOCK_JOB_CANCELLED, concluded, null', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'm5', autoFinalize: false }));
    job.start();
    await until(() => job.status === 'pending', 'pending');
    job.userCancel(true);
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'waiting', 'pending', 'BLOCK_JOB_PENDING', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(job.calls).toEqual(['abort', 'clean']);
  });

  it('a soft cancel of a ready job with soft-cancel support completes it (mirror without pivot)', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'm3' }, 2, true, true));
    job.start();
    await until(() => job.status === 'ready', 'ready');
    job.userCancel(false);
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
  });

  it('a forced cancel of a ready job aborts it', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'm4' }, 2, true, true));
    job.start();
    await until(() => job.status === 'ready', 'ready');
    job.userCancel(true);
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
  });

  it('a failing block job: aborting, BLOCK_JOB_COMPLETED with the error', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'f1' }));
    job.failAt = 2;
    job.start();
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(r.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!.data).toEqual({ device: 'f1', len: 4, offset: 2, speed: 0, type: 'mirror', error: 'Input/output error' });
    expect(job.calls).toEqual(['abort', 'clean']);
  });

  it('on-error stop: BLOCK_JOB_ERROR, paused with io-status, resumed by the user', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'e1' }));
    job.ioErrorAt = { at: 1, policy: 'enospc', code: 'ENOSPC' };
    job.start();
    await until(() => job.status === 'paused', 'stopped on error');
    expect(job.blockInfo()).toMatchObject({ 'io-status': 'nospace', paused: true, status: 'paused' });
    expect(() => job.userPause()).toThrow('Job is already paused');
    job.userResume();
    expect(job.ioStatus).toBe('ok');
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'BLOCK_JOB_ERROR', 'paused', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(r.events.find((e) => e.event === 'BLOCK_JOB_ERROR')!.data).toEqual({ device: 'e1', operation: 'write', action: 'stop' });
  });

  it('on-error report fails the job, ignore carries on', async () => {
    const r = recorder();
    const a = r.jobs.add(new FakeJob({ id: 'r1' }));
    a.ioErrorAt = { at: 0, policy: 'enospc', code: 'EIO' };
    a.start();
    await a.concluded;
    const b = r.jobs.add(new FakeJob({ id: 'i1' }));
    b.ioErrorAt = { at: 0, policy: 'ignore', code: 'EIO' };
    b.start();
    await b.concluded;
    expect(r.names()).toEqual([
      'created', 'running', 'BLOCK_JOB_ERROR', 'aborting', 'BLOCK_JOB_COMPLETED', 'concluded', 'null',
      'created', 'running', 'BLOCK_JOB_ERROR', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null',
    ]);
    expect(r.events.filter((e) => e.event === 'BLOCK_JOB_ERROR').map((e) => e.data.action)).toEqual(['report', 'ignore']);
  });

  it('refuses complete on a running job and on a job without complete()', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'b2' }));
    job.allowed = 0;
    job.start();
    await expect(job.userComplete()).rejects.toThrow("Job 'b2' in state 'running' cannot accept command verb 'complete'");
    const plain = r.jobs.add(new PlainJob({ id: 'p' }, () => new Promise(() => {})));
    plain.start();
    // A plain job never gets to ready; the verb table refuses first.
    await expect(plain.userComplete()).rejects.toThrow("Job 'p' in state 'running' cannot accept command verb 'complete'");
    job.userCancel(true);
    await job.concluded;
  });

  it('set-speed: verb checked first, then the sign; a paused job takes the new speed', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 's1', autoDismiss: false }));
    job.allowed = 0;
    job.start();
    expect(() => job.setSpeed(-1)).toThrow("Parameter 'speed' expects a non-negative value");
    job.userPause();
    await until(() => job.status === 'paused', 'paused');
    job.setSpeed(5);
    expect(job.blockInfo().speed).toBe(5);
    job.userCancel(true);
    await job.concluded;
    expect(() => job.setSpeed(-1)).toThrow("Job 's1' in state 'concluded' cannot accept command verb 'set-speed'");
  });

  it('throttles to the speed', async () => {
    const r = recorder();
    class Copier extends BlockJob {
      readonly type = 'backup' as const;
      protected async run(): Promise<void> {
        this.progressSetRemaining(500_000);
        for (let i = 0; i < 5; i++) { this.progressUpdate(100_000); await this.throttle(100_000); }
      }
    }
    const job = r.jobs.add(new Copier({ id: 't', graph: new BlockGraph(), speed: 1_000_000 }));
    const t0 = performance.now();
    job.start();
    await job.concluded;
    // 500 kB at 1 MB/s with a 100 kB burst: at least 0.4 s.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(380);
  });

  it('a job can be paused before it starts and runs nothing until resumed', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'early' }, 1));
    job.userPause();
    expect(job.blockInfo()).toMatchObject({ status: 'created', paused: true });
    job.start();
    await until(() => job.status === 'paused', 'paused');
    expect(job.currentProgress).toBe(0);
    job.userResume();
    await job.concluded;
    expect(r.names()).toEqual(['created', 'running', 'paused', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
  });

  it('early failure after creation: created, null', () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({ id: 'x' }));
    job.earlyFail();
    expect(r.names()).toEqual(['created', 'null']);
    expect(r.jobs.size).toBe(0);
  });

  it('internal jobs emit nothing and are not listed', async () => {
    const r = recorder();
    const job = r.jobs.add(new FakeJob({}));
    job.start();
    await job.concluded;
    expect(r.events).toEqual([]);
    expect(r.jobs.queryJobs()).toEqual([]);
  });
});

describe('JobManager', () => {
  it('checks ids as QEMU does', () => {
    const r = recorder();
    r.jobs.add(new PlainJob({ id: 'j1' }, () => new Promise(() => {})));
    expect(() => r.jobs.add(new PlainJob({ id: 'j1' }))).toThrow("Job ID 'j1' already in use");
    expect(() => r.jobs.add(new PlainJob({ id: '1bad' }))).toThrow("Invalid job ID '1bad'");
    expect(() => r.jobs.add(new PlainJob({ id: '' }))).toThrow("Invalid job ID ''");
  });

  it('looks jobs up with QEMU texts and classes', () => {
    const r = recorder();
    r.jobs.add(new PlainJob({ id: 'c' }));
    expect(() => r.jobs.find('nope')).toThrow('Job not found');
    let err: unknown;
    try { r.jobs.findBlockJob('c'); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(JobError);
    expect((err as JobError).message).toBe("Block job 'c' not found");
    expect((err as JobError).qmpClass).toBe('DeviceNotActive');
  });

  it('lists newest first; query-block-jobs only block jobs', () => {
    const r = recorder();
    r.jobs.add(new PlainJob({ id: 'a' }));
    r.jobs.add(new FakeJob({ id: 'b' }));
    r.jobs.add(new PlainJob({ id: 'c' }));
    expect(r.jobs.queryJobs().map((j) => j.id)).toEqual(['c', 'b', 'a']);
    expect(r.jobs.queryBlockJobs()).toEqual([{
      type: 'mirror', device: 'b', len: 0, offset: 0, busy: false, paused: true, speed: 0, 'io-status': 'ok',
      ready: false, status: 'created', 'auto-finalize': true, 'auto-dismiss': true,
    }]);
  });

  it('cancelAll concludes every job (shutdown)', async () => {
    const r = recorder();
    const a = r.jobs.add(new FakeJob({ id: 'a' }));
    a.allowed = 0;
    a.start();
    const b = r.jobs.add(new FakeJob({ id: 'b', autoDismiss: false }, 1));
    b.start();
    await b.concluded;
    const c = r.jobs.add(new FakeJob({ id: 'c' }));
    await r.jobs.cancelAll();
    expect(r.jobs.size).toBe(0);
    expect(r.statuses('a')).toEqual(['created', 'running', 'aborting', 'concluded', 'null']);
    expect(r.statuses('b')).toEqual(['created', 'running', 'waiting', 'pending', 'concluded', 'null']);
    expect(r.statuses('c')).toEqual(['created', 'aborting', 'concluded', 'null']);
    expect(c.status).toBe('null');
  });
});
