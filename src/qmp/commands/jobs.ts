/**
 * QMP commands for jobs: the generic job-* verbs, the older block-job-*
 * verbs (which find only block jobs, by "device" = job id), the queries, and
 * blockdev-create. Arguments, results, error texts and classes follow
 * qemu-storage-daemon 7.2 (qapi/job.json, qapi/block-core.json).
 *
 * Handlers get validated arguments and the command context (JobManager,
 * BlockGraph); errors they throw are BlockErrors (JobError carries a QMP class
 * other than GenericError where QEMU uses one). None waits for a job to make
 * progress: commands run one at a time.
 */
import { arr, enm, obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { JOB_STATUSES, JOB_TYPES } from '../../blockdev/jobs/status.ts';
import { JobError } from '../../blockdev/jobs/errors.ts';
import { blockdevCreateOptionsType, startCreateJob } from '../../blockdev/create/index.ts';
import { blockdevAmendOptionsType, startAmendJob } from '../../blockdev/jobs/amend.ts';
import type { JobManager } from '../../blockdev/jobs/manager.ts';
import type { BlockGraph } from '../../blockdev/graph.ts';
import type { CommandDef, EventDef } from '../command.ts';

/** The part of the command context the job commands use. */
export interface JobCommandContext {
  readonly jobs: JobManager;
  readonly graph: BlockGraph;
}

// ---- QAPI types

export const JobType = enm('JobType', [...JOB_TYPES], 'Type of a background job.');
export const JobStatus = enm('JobStatus', [...JOB_STATUSES], 'Indicates the present state of a given job in its lifetime.');
export const BlockDeviceIoStatus = enm('BlockDeviceIoStatus', ['ok', 'failed', 'nospace'], 'An enumeration of block device I/O status.');
export const IoOperationType = enm('IoOperationType', ['read', 'write'], 'An enumeration of the I/O operation types');
export const BlockErrorAction = enm('BlockErrorAction', ['ignore', 'report', 'stop'], 'An enumeration of action that has been taken when a DISK I/O occurs');

export const JobInfo = obj('JobInfo', [
  req('id', 'str', 'The job identifier'),
  req('type', JobType, 'The kind of job that is being performed'),
  req('status', JobStatus, 'Current job state/status'),
  req('current-progress', 'int', 'Progress made until now'),
  req('total-progress', 'int', 'Estimated current-progress value at the completion of the job'),
  opt('error', 'str', 'If this field is present, the job failed; the value is a human-readable error message'),
], { doc: 'Information about a job.' });

export const BlockJobInfo = obj('BlockJobInfo', [
  req('type', 'str', 'the job type (\'stream\' for image streaming)'),
  req('device', 'str', 'The job identifier'),
  req('len', 'int', 'Estimated offset value at the completion of the job'),
  req('offset', 'int', 'Progress made until now'),
  req('busy', 'bool', 'false if the job is known to be in a quiescent state, with no pending I/O'),
  req('paused', 'bool', 'whether the job is paused or, if busy is true, will pause itself as soon as possible'),
  req('speed', 'int', 'the rate limit, bytes per second'),
  req('io-status', BlockDeviceIoStatus, 'the status of the job'),
  req('ready', 'bool', 'true if the job may be completed'),
  req('status', JobStatus, 'Current job state/status'),
  req('auto-finalize', 'bool', 'Job will finalize itself when PENDING, moving to the CONCLUDED state'),
  req('auto-dismiss', 'bool', 'Job will dismiss itself when CONCLUDED, moving to the NULL state and disappearing from the query list'),
  opt('error', 'str', 'Error information if the job did not complete successfully'),
], { doc: 'Information about a long-running block device operation.' });

const Empty = obj('q_empty', []);
const idArg = (command: string, doc: string) => obj(`q_obj_${command}-arg`, [req('id', 'str', doc)]);
const deviceArg = (command: string) => obj(`q_obj_${command}-arg`, [req('device', 'str', 'The job identifier')]);

/** The event payloads the job framework emits (for query-qmp-schema). */
export const jobEvents: EventDef[] = [
  { name: 'JOB_STATUS_CHANGE', doc: 'Emitted when a job transitions to a different status.',
    data: obj('q_obj_JOB_STATUS_CHANGE-arg', [req('id', 'str'), req('status', JobStatus)]) },
  { name: 'BLOCK_JOB_COMPLETED', doc: 'Emitted when a block job has completed',
    data: obj('q_obj_BLOCK_JOB_COMPLETED-arg', [req('type', JobType), req('device', 'str'), req('len', 'int'), req('offset', 'int'), req('speed', 'int'), opt('error', 'str')]) },
  { name: 'BLOCK_JOB_CANCELLED', doc: 'Emitted when a block job has been cancelled',
    data: obj('q_obj_BLOCK_JOB_CANCELLED-arg', [req('type', JobType), req('device', 'str'), req('len', 'int'), req('offset', 'int'), req('speed', 'int')]) },
  { name: 'BLOCK_JOB_ERROR', doc: 'Emitted when a block job encounters an error',
    data: obj('q_obj_BLOCK_JOB_ERROR-arg', [req('device', 'str'), req('operation', IoOperationType), req('action', BlockErrorAction)]) },
  { name: 'BLOCK_JOB_READY', doc: 'Emitted when a block job is ready to complete',
    data: obj('q_obj_BLOCK_JOB_READY-arg', [req('type', JobType), req('device', 'str'), req('len', 'int'), req('offset', 'int'), req('speed', 'int')]) },
  { name: 'BLOCK_JOB_PENDING', doc: 'Emitted when a block job is awaiting explicit authorization to finalize graph changes',
    data: obj('q_obj_BLOCK_JOB_PENDING-arg', [req('type', JobType), req('id', 'str')]) },
];

// ---- commands

type IdArgs = { id: string };
type DeviceArgs = { device: string };

export const jobCommands: CommandDef[] = [
  {
    name: 'query-jobs',
    args: Empty,
    returns: arr(JobInfo),
    doc: 'Return information about jobs.',
    handler: (_args: Record<string, never>, ctx: JobCommandContext) => ctx.jobs.queryJobs(),
  },
  {
    name: 'job-pause',
    args: idArg('job-pause', 'The job identifier.'),
    returns: Empty,
    doc: 'Pause an active job. The job pauses as soon as possible (PAUSED, or STANDBY if READY); pausing a paused job is an error.',
    handler: ({ id }: IdArgs, ctx: JobCommandContext) => { ctx.jobs.find(id).userPause(); return {}; },
  },
  {
    name: 'job-resume',
    args: idArg('job-resume', 'The job identifier.'),
    returns: Empty,
    doc: 'Resume a paused job. Resuming an already running job is an error.',
    handler: ({ id }: IdArgs, ctx: JobCommandContext) => { ctx.jobs.find(id).userResume(); return {}; },
  },
  {
    name: 'job-cancel',
    args: idArg('job-cancel', 'The job identifier.'),
    returns: Empty,
    doc: 'Instruct an active background job to cancel at the next opportunity (always with force).',
    handler: ({ id }: IdArgs, ctx: JobCommandContext) => { ctx.jobs.find(id).userCancel(true); return {}; },
  },
  {
    name: 'job-complete',
    args: idArg('job-complete', 'The job identifier.'),
    returns: Empty,
    doc: 'Manually trigger completion of an active job in the READY state.',
    handler: async ({ id }: IdArgs, ctx: JobCommandContext) => { await ctx.jobs.find(id).userComplete(); return {}; },
  },
  {
    name: 'job-dismiss',
    args: idArg('job-dismiss', 'The job identifier.'),
    returns: Empty,
    doc: 'Deletes a job that is in the CONCLUDED state.',
    handler: ({ id }: IdArgs, ctx: JobCommandContext) => { ctx.jobs.find(id).userDismiss(); return {}; },
  },
  {
    name: 'job-finalize',
    args: idArg('job-finalize', 'The identifier of any job in the transaction, or of a job that is not part of any transaction.'),
    returns: Empty,
    doc: 'Instructs a job in the PENDING state to finalize any graph changes and do any necessary cleanup.',
    handler: async ({ id }: IdArgs, ctx: JobCommandContext) => { await ctx.jobs.find(id).userFinalize(); return {}; },
  },
  {
    name: 'query-block-jobs',
    args: Empty,
    returns: arr(BlockJobInfo),
    doc: 'Return information about long-running block device operations.',
    handler: (_args: Record<string, never>, ctx: JobCommandContext) => ctx.jobs.queryBlockJobs(),
  },
  {
    name: 'block-job-set-speed',
    args: obj('q_obj_block-job-set-speed-arg', [
      req('device', 'str', 'The job identifier.'),
      req('speed', 'int', 'the maximum speed, in bytes per second, or 0 for unlimited. Defaults to 0.'),
    ]),
    returns: Empty,
    doc: 'Set maximum speed for a background block operation.',
    handler: ({ device, speed }: DeviceArgs & { speed: number }, ctx: JobCommandContext) => {
      ctx.jobs.findBlockJob(device).setSpeed(speed);
      return {};
    },
  },
  {
    name: 'block-job-cancel',
    args: obj('q_obj_block-job-cancel-arg', [
      req('device', 'str', 'The job identifier.'),
      opt('force', 'bool', 'If true, and the job has already emitted the event BLOCK_JOB_READY, abandon the job immediately (even if it is paused) instead of waiting for the destination to complete its final synchronization'),
    ]),
    returns: Empty,
    doc: 'Stop an active background block operation.',
    handler: ({ device, force }: DeviceArgs & { force?: boolean }, ctx: JobCommandContext) => {
      const job = ctx.jobs.findBlockJob(device);
      if (job.userPaused && !force) throw new JobError('EBUSY', `The block job for device '${device}' is currently paused`);
      job.userCancel(force ?? false);
      return {};
    },
  },
  {
    name: 'block-job-pause',
    args: deviceArg('block-job-pause'),
    returns: Empty,
    doc: 'Pause an active background block operation.',
    handler: ({ device }: DeviceArgs, ctx: JobCommandContext) => { ctx.jobs.findBlockJob(device).userPause(); return {}; },
  },
  {
    name: 'block-job-resume',
    args: deviceArg('block-job-resume'),
    returns: Empty,
    doc: 'Resume an active background block operation.',
    handler: ({ device }: DeviceArgs, ctx: JobCommandContext) => { ctx.jobs.findBlockJob(device).userResume(); return {}; },
  },
  {
    name: 'block-job-complete',
    args: deviceArg('block-job-complete'),
    returns: Empty,
    doc: 'Manually trigger completion of an active background block operation.',
    handler: async ({ device }: DeviceArgs, ctx: JobCommandContext) => { await ctx.jobs.findBlockJob(device).userComplete(); return {}; },
  },
  {
    name: 'block-job-dismiss',
    args: idArg('block-job-dismiss', 'The job identifier.'),
    returns: Empty,
    doc: 'For jobs that have already concluded, remove them from the block-job-query list.',
    handler: ({ id }: IdArgs, ctx: JobCommandContext) => { ctx.jobs.findBlockJob(id).userDismiss(); return {}; },
  },
  {
    name: 'block-job-finalize',
    args: idArg('block-job-finalize', 'The job identifier.'),
    returns: Empty,
    doc: 'Once a job that has manual=true reaches the pending state, it can be instructed to finalize any graph changes and do any necessary cleanup via this command.',
    handler: async ({ id }: IdArgs, ctx: JobCommandContext) => { await ctx.jobs.findBlockJob(id).userFinalize(); return {}; },
  },
  {
    name: 'blockdev-create',
    args: ({ graph }) => obj('q_obj_blockdev-create-arg', [
      req('job-id', 'str', 'Identifier for the newly created job.'),
      req('options', blockdevCreateOptionsType(graph.driverNames()), 'Options for the image creation.'),
    ]),
    returns: Empty,
    doc: 'Starts a job to create an image format on a given node. The job is automatically finalized, but a manual job-dismiss is required.',
    handler: ({ 'job-id': jobId, options }: { 'job-id': string; options: Record<string, unknown> }, ctx: JobCommandContext) => {
      startCreateJob(ctx.jobs, ctx.graph, jobId, options);
      return {};
    },
  },
  {
    name: 'x-blockdev-amend',
    args: ({ graph }) => obj('q_obj_x-blockdev-amend-arg', [
      req('job-id', 'str', 'Identifier for the newly created job.'),
      req('node-name', 'str', 'Name of the block node to work on'),
      req('options', blockdevAmendOptionsType(graph), 'Options (driver specific)'),
      opt('force', 'bool', 'Allow unsafe operations, format specific For luks that allows erase of the last active keyslot (permanent loss of data), and replacement of an active keyslot (possible loss of data if IO error happens)'),
    ]),
    returns: Empty,
    features: ['unstable'],
    doc: 'Starts a job to amend format specific options of an existing open block device The job is automatically finalized, but a manual job-dismiss is required.',
    handler: (a: { 'job-id': string; 'node-name': string; options: Record<string, unknown>; force?: boolean }, ctx: JobCommandContext) => {
      startAmendJob(ctx.jobs, ctx.graph, a['job-id'], a['node-name'], a.options, a.force ?? false);
      return {};
    },
  },
];
