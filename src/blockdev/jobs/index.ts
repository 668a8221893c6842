/** The job framework: status tables, Job and BlockJob base classes, the JobManager, the token bucket. */
export * from './status.ts';
export * from './errors.ts';
export { Job, type JobEventSink, type JobInfo, type JobMilestone, type JobOptions } from './job.ts';
export {
  BlockJob, type BlockJobInfo, type BlockJobOptions, type BlockIoStatus, type BlockdevOnError, type BlockErrorAction,
} from './block-job.ts';
export { JobManager, type EmitFn } from './manager.ts';
export { TokenBucket } from '../../util/token-bucket.ts';
