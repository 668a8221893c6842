/**
 * blockdev-create: the BlockdevCreateOptions schema (a flat union on
 * `driver`, one variant per image creator) and the 'create' job that runs a
 * creator. A create job is a plain job (no BLOCK_JOB_* events) that is
 * finalised automatically and dismissed by the user (job-dismiss), as in
 * qemu-storage-daemon 7.2.
 *
 * To support a new format, write an ImageCreator (types.ts) next to file.ts
 * and add it to CREATORS.
 */
import { enm, obj, req, type ObjectType } from '../../qapi/types.ts';
import { JobError } from '../jobs/errors.ts';
import { Job } from '../jobs/job.ts';
import type { JobManager } from '../jobs/manager.ts';
import type { BlockGraph } from '../graph.ts';
import { fileCreator } from './file.ts';
import { qcow2Creator } from './qcow2.ts';
import { luksCreator } from './luks.ts';
import { vdiCreator } from './vdi.ts';
import { vpcCreator } from './vpc.ts';
import { qedCreator } from './qed.ts';
import { vhdxCreator } from './vhdx.ts';
import { parallelsCreator } from './parallels.ts';
import { rbdCreator } from './rbd.ts';
import { vmdkCreator } from './vmdk.ts';
import type { ImageCreator } from './types.ts';

export type { ImageCreator, CreateContext } from './types.ts';

export const CREATORS: readonly ImageCreator[] = [fileCreator, qcow2Creator, luksCreator, vdiCreator, vpcCreator, rbdCreator, qedCreator, vhdxCreator, parallelsCreator, vmdkCreator];

export function findCreator(driver: string): ImageCreator | undefined {
  return CREATORS.find((c) => c.driver === driver);
}

/**
 * BlockdevCreateOptions. The discriminator is the same BlockdevDriver enum as
 * blockdev-add's (every driver blockd has), so a driver without image
 * creation passes the schema and is refused by the command with qsd's words
 * (raw, null-co); only drivers with a creator have members.
 */
export function blockdevCreateOptionsType(driverNames: readonly string[]): ObjectType {
  const names = [...new Set([...driverNames, ...CREATORS.map((c) => c.driver)])].sort();
  const variants: Record<string, ObjectType> = {};
  for (const c of CREATORS) variants[c.driver] = c.options;
  return obj('BlockdevCreateOptions', [
    req('driver', enm('BlockdevDriver', names), 'block driver to create the image format'),
  ], { union: { discriminator: 'driver', variants }, doc: 'Options for creating an image format on a given node.' });
}

/** The job blockdev-create runs: progress 0/1, then 1/1 whether or not the creation worked. */
export class CreateJob extends Job {
  readonly type = 'create' as const;

  constructor(id: string, private readonly creator: ImageCreator, private readonly options: Record<string, unknown>,
    private readonly graph: BlockGraph) {
    super({ id, autoFinalize: true, autoDismiss: false });
  }

  protected async run(signal: AbortSignal): Promise<void> {
    this.progressSetRemaining(1);
    try {
      await this.creator.create(this.options, { graph: this.graph, signal });
    } finally {
      this.progressUpdate(1);
    }
  }
}

/**
 * Validated blockdev-create arguments → a started create job. The driver is
 * checked before the job id, as in qsd: a driver blockd has but cannot
 * create images for is refused with qsd's words; one blockd lacks entirely
 * with QEMU's words for a driver that is not built in.
 */
export function startCreateJob(jobs: JobManager, graph: BlockGraph, jobId: string, options: Record<string, unknown>): CreateJob {
  const driver = String(options.driver);
  const creator = findCreator(driver);
  if (!creator) {
    if (!graph.driver(driver)) throw new JobError('ENOTSUP', `Block driver '${driver}' not found or not supported`);
    throw new JobError('ENOTSUP', 'Driver does not support blockdev-create');
  }
  const job = jobs.add(new CreateJob(jobId, creator, options, graph));
  job.start();
  return job;
}
