/**
 * x-blockdev-amend's job (QEMU block/amend.c): the BlockdevAmendOptions
 * schema (a flat union on `driver`, one variant per driver with
 * Driver.amendOptions) and the 'amend' job that runs the node's
 * DriverOps.amend once. Like a create job it is a plain job, finalised
 * automatically and dismissed by the user, with progress 0/1 then 1/1.
 */
import { enm, obj, req, type ObjectType } from '../../qapi/types.ts';
import { JobError } from './errors.ts';
import { Job } from './job.ts';
import type { JobManager } from './manager.ts';
import type { BlockGraph } from '../graph.ts';
import type { BlockNode } from '../node.ts';

export function blockdevAmendOptionsType(graph: BlockGraph): ObjectType {
  const variants: Record<string, ObjectType> = {};
  for (const name of graph.driverNames()) {
    const o = graph.driver(name)!.amendOptions;
    if (o) variants[name] = o;
  }
  return obj('BlockdevAmendOptions', [
    req('driver', enm('BlockdevDriver', graph.driverNames()), 'Block driver of the node to amend.'),
  ], { union: { discriminator: 'driver', variants }, doc: 'Options for amending an image format' });
}

export class AmendJob extends Job {
  readonly type = 'amend' as const;

  constructor(id: string, private readonly node: BlockNode, private readonly options: Record<string, unknown>, private readonly force: boolean) {
    super({ id, autoFinalize: true, autoDismiss: false });
  }

  protected async run(): Promise<void> {
    this.progressSetRemaining(1);
    try {
      await this.node.ops.amend!(this.options, this.force);
    } finally {
      this.progressUpdate(1);
    }
  }
}

/** qmp_x_blockdev_amend's checks, in its order and words, then the started job. */
export function startAmendJob(jobs: JobManager, graph: BlockGraph, jobId: string, nodeName: string, options: Record<string, unknown>, force: boolean): AmendJob {
  const node = graph.nodes.get(nodeName);
  if (!node) throw new JobError('EINVAL', `Cannot find device='' nor node-name='${nodeName}'`);
  const driver = String(options.driver);
  const wanted = graph.driver(driver);
  if (!wanted) throw new JobError('ENOTSUP', `Block driver '${driver}' not found or not supported`);
  if (node.driver !== wanted) throw new JobError('EINVAL', "x-blockdev-amend doesn't support changing the block driver");
  if (!node.ops.amend) throw new JobError('ENOTSUP', 'Driver does not support x-blockdev-amend');
  const { driver: _driver, ...members } = options;
  const job = jobs.add(new AmendJob(jobId, node, members, force));
  job.start();
  return job;
}
