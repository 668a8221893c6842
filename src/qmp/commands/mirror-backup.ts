/**
 * blockdev-mirror, drive-mirror, blockdev-backup, drive-backup
 * (qapi/block-core.json 7.2): argument types as qsd 7.2 shows them, checks
 * in qsd's order with its texts. drive-* create (mode=absolute-paths, the
 * default) or open (mode=existing) the target file themselves; the target
 * node is then owned by the job and its users, not by the monitor.
 *
 * blockdev-backup and drive-backup are also `transaction` actions (and run
 * alone as a transaction of one, as in QEMU): prepare creates the job and
 * sets it up (the copy-before-write filter, the point in time); commit
 * starts it; abort cancels it before it ever ran. In a grouped transaction
 * the jobs share one job transaction (src/blockdev/jobs/txn.ts).
 */
import { BlockError } from '../../util/errors.ts';
import { VALID_ID, type BlockGraph } from '../../blockdev/graph.ts';
import { JobError } from '../../blockdev/jobs/errors.ts';
import { MirrorJob, checkMirrorGranularity, type MirrorSync } from '../../blockdev/jobs/mirror.ts';
import { BackupJob, type BackupSync } from '../../blockdev/jobs/backup.ts';
import { BlockJob, type BlockdevOnError } from '../../blockdev/jobs/block-job.ts';
import type { JobManager } from '../../blockdev/jobs/manager.ts';
import { BlockNode } from '../../blockdev/node.ts';
import { bitmapsOf } from '../../blockdev/bitmaps/registry.ts';
import { CHECK_ALLOW_RO } from '../../blockdev/bitmaps/dirty-bitmap.ts';
import { enm, obj, opt, req, type Member } from '../../qapi/types.ts';
import { actionCommand, type ActionContext, type CommandDef, type PreparedAction } from '../command.ts';

const MirrorSyncMode = enm('MirrorSyncMode', ['top', 'full', 'none', 'incremental', 'bitmap'], 'An enumeration of possible behaviors for the initial synchronization phase of storage mirroring.');
const BlockdevOnErrorT = enm('BlockdevOnError', ['report', 'ignore', 'enospc', 'stop', 'auto'], 'An enumeration of possible behaviors for errors on I/O operations.');
const MirrorCopyMode = enm('MirrorCopyMode', ['background', 'write-blocking'], 'An enumeration whose values tell the mirror block job when to trigger writes to the target.');
const NewImageMode = enm('NewImageMode', ['existing', 'absolute-paths'], 'An enumeration that tells QEMU how to set the backing file path in a new image file.');
const BitmapSyncMode = enm('BitmapSyncMode', ['on-success', 'never', 'always'], 'An enumeration of possible behaviors for the synchronization of a bitmap when used for data copy operations.');
const BackupPerf = obj('BackupPerf', [opt('use-copy-range', 'bool'), opt('max-workers', 'int'), opt('max-chunk', 'int')], { doc: 'Optional parameters for backup.' });

const jobId = opt('job-id', 'str', 'identifier for the newly-created block job.');
const device = req('device', 'str', 'the device name or node-name of a root node whose writes should be mirrored.');
const onErrors = [opt('on-source-error', BlockdevOnErrorT, 'the action to take on an error on the source'), opt('on-target-error', BlockdevOnErrorT, 'the action to take on an error on the target')];
const autoOpts = [opt('auto-finalize', 'bool', 'When false, this job will wait in a PENDING state after it has finished its work.'), opt('auto-dismiss', 'bool', 'When false, this job will wait in a CONCLUDED state after it has completely ceased all work.')];

const BlockdevMirrorArgs = obj('q_obj_blockdev-mirror-arg', [
  jobId, device, req('target', 'str', 'the id or node-name of the block device to mirror to'),
  opt('replaces', 'str', 'with sync=full graph node name to be replaced by the new image when a whole image copy is done.'),
  req('sync', MirrorSyncMode, 'what parts of the disk image should be copied to the destination'),
  opt('speed', 'int', 'the maximum speed, in bytes per second'),
  opt('granularity', 'int', 'granularity of the dirty bitmap, default is 64K if the image format doesn\'t have clusters, 4K if the clusters are smaller than that, else the cluster size.'),
  opt('buf-size', 'int', 'maximum amount of data in flight from source to target'),
  ...onErrors,
  opt('filter-node-name', 'str', 'the node name that should be assigned to the filter driver that the mirror job inserts into the graph above device.'),
  opt('copy-mode', MirrorCopyMode, 'when to copy data to the destination; defaults to \'background\''),
  ...autoOpts,
]);

const DriveMirror = obj('DriveMirror', [
  jobId, device, req('target', 'str', 'the target of the new image.'),
  opt('format', 'str', 'the format of the new destination, default is to probe if mode is \'existing\', else the format of the source'),
  opt('node-name', 'str', 'the new block driver state node name in the graph'),
  opt('replaces', 'str', 'with sync=full graph node name to be replaced by the new image when a whole image copy is done.'),
  req('sync', MirrorSyncMode, 'what parts of the disk image should be copied to the destination'),
  opt('mode', NewImageMode, 'whether and how QEMU should create a new image, default is \'absolute-paths\'.'),
  opt('speed', 'int', 'the maximum speed, in bytes per second'),
  opt('granularity', 'int', 'granularity of the dirty bitmap'),
  opt('buf-size', 'int', 'maximum amount of data in flight from source to target'),
  ...onErrors,
  opt('unmap', 'bool', 'Whether to try to unmap target sectors where source has only zero.'),
  opt('copy-mode', MirrorCopyMode, 'when to copy data to the destination; defaults to \'background\''),
  ...autoOpts,
], { doc: 'A set of parameters describing drive mirror setup.' });

const backupBase: Member[] = [
  jobId, req('device', 'str', 'the device name or node-name of a root node which should be copied.'),
  req('sync', MirrorSyncMode, 'what parts of the disk image should be copied to the destination'),
  opt('speed', 'int', 'the maximum speed, in bytes per second.'),
  opt('bitmap', 'str', 'The name of a dirty bitmap to use.'),
  opt('bitmap-mode', BitmapSyncMode, 'Specifies the type of data the bitmap should contain after the operation concludes.'),
  opt('compress', 'bool', 'true to compress data, if the target format supports it.'),
  ...onErrors, ...autoOpts,
  opt('filter-node-name', 'str', 'the node name that should be assigned to the filter driver that the backup job inserts into the graph above node specified by drive.'),
  opt('x-perf', BackupPerf, 'Performance options.'),
];

const BlockdevBackup = obj('BlockdevBackup', [...backupBase, req('target', 'str', 'the device name or node-name of the backup target node.')]);
const DriveBackup = obj('DriveBackup', [
  ...backupBase, req('target', 'str', 'the target of the new image.'),
  opt('format', 'str', 'the format of the new destination, default is to probe if mode is \'existing\', else the format of the source'),
  opt('mode', NewImageMode, 'whether and how QEMU should create a new image, default is \'absolute-paths\'.'),
]);

interface JobCommonArgs {
  'job-id'?: string; device: string; sync: MirrorSync | 'incremental' | 'bitmap'; speed?: number;
  'on-source-error'?: BlockdevOnError; 'on-target-error'?: BlockdevOnError;
  'auto-finalize'?: boolean; 'auto-dismiss'?: boolean; 'filter-node-name'?: string;
}
interface MirrorArgs extends JobCommonArgs {
  target: string; replaces?: string; granularity?: number; 'buf-size'?: number; 'copy-mode'?: 'background' | 'write-blocking';
  format?: string; 'node-name'?: string; mode?: 'existing' | 'absolute-paths'; unmap?: boolean;
}
interface BackupArgs extends JobCommonArgs {
  target: string; bitmap?: string; 'bitmap-mode'?: string; compress?: boolean; format?: string; mode?: 'existing' | 'absolute-paths';
}

interface Ctx { graph: BlockGraph; jobs: JobManager; jobTxn?: ActionContext['jobTxn'] }

function checkJobId(jobs: JobManager, id: string): void {
  if (!VALID_ID.test(id)) throw new JobError('EINVAL', `Invalid job ID '${id}'`);
  if (jobs.get(id)) throw new JobError('EINVAL', `Job ID '${id}' already in use`);
}

/**
 * A node another mirror or backup works on already has that job's filter
 * above it: mirror refuses it as qsd does ("Need a root block node"),
 * backup names the job that holds it.
 */
function checkRoot(source: BlockNode, forBackup = false): void {
  const filtered = source.parents.some((e) => e.parent instanceof BlockNode && e.parent.driver.jobFilter === true && !e.parent.isClosed);
  if (!filtered) return;
  if (!forBackup) throw new BlockError('EINVAL', 'Need a root block node');
  const job = source.parents.map((e) => e.parent).find((p): p is BlockJob => p instanceof BlockJob);
  throw new BlockError('EBUSY', `Node '${source.nodeName}' is busy: block device is in use by block job: ${job?.type ?? 'mirror'}`);
}

async function startMirror(a: MirrorArgs, ctx: Ctx, source: BlockNode, target: BlockNode, created: boolean): Promise<void> {
  const id = a['job-id'] ?? '';
  checkJobId(ctx.jobs, id);
  const badSpeed = a.speed !== undefined && a.speed < 0;
  const job = new MirrorJob({
    id, graph: ctx.graph, speed: badSpeed ? 0 : a.speed, autoFinalize: a['auto-finalize'], autoDismiss: a['auto-dismiss'],
    source, target, sync: a.sync as MirrorSync, granularity: a.granularity, bufSize: a['buf-size'],
    copyMode: a['copy-mode'], onSourceError: a['on-source-error'], onTargetError: a['on-target-error'],
    replaces: a.replaces !== undefined ? ctx.graph.find(a.replaces) : undefined,
    // QEMU's zero_target: drive-mirror trusts a new image to read as zeroes, blockdev-mirror never does.
    filterNodeName: a['filter-node-name'], zeroTarget: a.sync === 'full' && !created, unmap: a.unmap,
  });
  ctx.jobs.add(job);
  // qsd creates the job before it checks the speed (created → null).
  if (badSpeed) { job.earlyFail(); throw new BlockError('EINVAL', "Parameter 'speed' expects a non-negative value"); }
  try {
    await job.setUp();
  } catch (e) {
    await job.tearDown().catch(() => undefined);
    job.earlyFail();
    throw e;
  }
  job.start();
}

function mirrorChecks(a: MirrorArgs, ctx: Ctx): BlockNode {
  const source = ctx.graph.findReference(a.device);
  if (a.sync === 'incremental' || a.sync === 'bitmap') throw new BlockError('EINVAL', `Sync mode '${a.sync}' not supported`);
  if (a.granularity !== undefined && a.granularity !== 0) checkMirrorGranularity(a.granularity);
  if (a['buf-size'] !== undefined && a['buf-size'] < 0) throw new BlockError('EINVAL', "Invalid parameter 'buf-size'");
  checkRoot(source);
  return source;
}

/** Creates (absolute-paths) or opens (existing) a drive-* target: an implicit node the job and its users own. */
async function openNewTarget(ctx: Ctx, source: BlockNode, filename: string, format: string | undefined,
  mode: 'existing' | 'absolute-paths' | undefined, nodeName: string | undefined, backing?: BlockNode, forBackup = false): Promise<{ node: BlockNode; created: boolean }> {
  // QEMU takes the source's format for a new image; blockd's formats that can create one are those
  // with a createImage() hook, and anything else (a protocol node, null-co) gets raw.
  // A filename with a protocol prefix (an nbd:// URI) names a remote image the protocol driver opens.
  const file = ctx.graph.protocolOptions(filename);
  const remote = file.driver !== 'file';
  const created = mode !== 'existing';
  if (remote && created) throw new BlockError('ENOTSUP', `blockd cannot create an image on a '${String(file.driver)}' target: use mode=existing`);
  if (remote && format === undefined) throw new BlockError('ENOTSUP', `blockd does not probe the format of a '${String(file.driver)}' target: give 'format'`);
  const probed = format === undefined && mode === 'existing';
  const fmt = format ?? (probed ? await ctx.graph.probeFormat(filename) : source.driver.createImage ? source.driver.name : 'raw');
  const driver = ctx.graph.driver(fmt);
  if (!driver?.createImage) throw new BlockError('EINVAL', `Unknown driver '${fmt}'`);
  const size = source.length();
  if (created) {
    const backingFile = backing?.ops.filename?.();
    await driver.createImage(filename, { size, backingFile, backingFormat: backingFile ? backing!.driver.name : undefined });
  }
  const opts: Record<string, unknown> = { driver: fmt, file };
  if (nodeName !== undefined) opts['node-name'] = nodeName;
  // QEMU's drive-backup opens its target so that zeroes written to it become (unmapped) zero clusters.
  if (forBackup) Object.assign(opts, { discard: 'unmap', 'detect-zeroes': 'unmap' });
  // The new image's backing file is the source's backing node, which is open already.
  if (created && driver.options.members.some((m) => m.name === 'backing')) opts.backing = backing ? backing.nodeName : null;
  const node = await ctx.graph.add(opts, true, probed);
  // A zeroed target matters only without a backing file (holes then read as the backing's data).
  return { node, created: created && !backing };
}

async function backupChecks(a: BackupArgs, ctx: Ctx, target?: BlockNode): Promise<BlockNode> {
  const source = ctx.graph.findReference(a.device);
  if ((a.sync === 'incremental' || a.sync === 'bitmap') && a.bitmap === undefined) {
    throw new BlockError('EINVAL', `must provide a valid bitmap name for '${a.sync}' sync mode`);
  }
  if (a.bitmap !== undefined) {
    const bm = bitmapsOf(source).find(a.bitmap);
    if (!bm) throw new BlockError('ENOENT', `Bitmap '${a.bitmap}' could not be found`);
    if (a.sync === 'incremental') {
      if (a['bitmap-mode'] !== undefined && a['bitmap-mode'] !== 'on-success') {
        throw new BlockError('EINVAL', `Bitmap sync mode must be 'on-success' when using sync mode 'incremental'`);
      }
    } else if (a['bitmap-mode'] === undefined) {
      throw new BlockError('EINVAL', 'Bitmap sync mode must be given when providing a bitmap');
    }
    if (a.sync !== 'incremental' && a.sync !== 'bitmap') {
      throw new BlockError('ENOTSUP', `blockd supports a backup bitmap only with sync modes 'bitmap' and 'incremental'`);
    }
    bm.check(CHECK_ALLOW_RO);
  } else if (a['bitmap-mode'] !== undefined) {
    throw new BlockError('EINVAL', 'Cannot specify bitmap sync mode without a bitmap');
  }
  if (a.speed !== undefined && a.speed < 0) throw new BlockError('EINVAL', "Parameter 'speed' expects a non-negative value");
  if (source === target) throw new BlockError('EINVAL', 'Source and target cannot be the same');
  checkRoot(source, true);
  return source;
}

/** Creates and sets up the backup job; the caller starts it (commit) or cancels it (abort). */
async function prepareBackup(a: BackupArgs, ctx: Ctx, source: BlockNode, target: BlockNode, created: boolean): Promise<BackupJob> {
  if (source === target) throw new BlockError('EINVAL', 'Source and target cannot be the same');
  if (source.length() !== target.length()) throw new BlockError('EINVAL', 'Source and target image have different sizes');
  // QEMU names the drive by its BlockBackend, which a blockdev node does not have: "".
  if (a.compress && !target.canCompress) throw new BlockError('ENOTSUP', 'Compression is not supported for this drive ');
  // blockd's own refusal (qsd compresses there): said now rather than as the job's "Operation not supported".
  const refused = a.compress ? target.compressRefusal() : undefined;
  if (refused) throw new BlockError('ENOTSUP', refused);
  const id = a['job-id'] ?? '';
  checkJobId(ctx.jobs, id);
  const job = new BackupJob({
    id, graph: ctx.graph, speed: a.speed, autoFinalize: a['auto-finalize'], autoDismiss: a['auto-dismiss'],
    source, target, compress: a.compress, sync: (a.sync === 'incremental' || a.sync === 'bitmap' ? 'full' : a.sync) as BackupSync,
    bitmap: a.bitmap !== undefined ? bitmapsOf(source).find(a.bitmap) : undefined,
    bitmapMode: a.sync === 'incremental' ? 'on-success' : a['bitmap-mode'] as 'on-success' | 'never' | 'always' | undefined,
    onSourceError: a['on-source-error'], onTargetError: a['on-target-error'],
    filterNodeName: a['filter-node-name'], txn: ctx.jobTxn,
  });
  ctx.jobs.add(job);
  try {
    await job.setUp();
  } catch (e) {
    await job.tearDown().catch(() => undefined);
    job.earlyFail();
    throw e;
  }
  return job;
}

/** A prepared backup: commit starts the job; abort cancels it (it never ran) and waits until it is gone. */
function backupAction(job: BackupJob, afterAbort?: () => Promise<void>): PreparedAction {
  return {
    commit: () => job.start(),
    async abort() {
      job.cancel(true);
      await job.concluded;
      await afterAbort?.();
    },
  };
}

/** Drops a drive-* target node nobody took (set-up failed). */
async function dropUnused(ctx: Ctx, node: BlockNode): Promise<void> {
  if (node.parents.length === 0 && ctx.graph.nodes.get(node.nodeName) === node) {
    ctx.graph.nodes.delete(node.nodeName);
    await node.close();
    for (const e of [...node.children]) await ctx.graph.unlink(node, e);
  }
}

export const mirrorBackupCommands: CommandDef[] = [
  {
    name: 'blockdev-mirror',
    args: BlockdevMirrorArgs,
    doc: 'Start mirroring a block device\'s writes to a new destination.',
    async handler(a: MirrorArgs, ctx) {
      const source = mirrorChecks(a, ctx);
      const target = ctx.graph.findReference(a.target);
      if (source === target) throw new BlockError('EINVAL', "Can't mirror node into itself");
      await startMirror(a, ctx, source, target, false);
    },
  },
  {
    name: 'drive-mirror',
    args: DriveMirror,
    doc: 'Start mirroring a block device\'s writes to a new destination. target specifies the target of the new image.',
    async handler(a: MirrorArgs, ctx) {
      const source = mirrorChecks(a, ctx);
      const backing = a.sync === 'top' ? source.child('backing') : undefined;
      const { node, created } = await openNewTarget(ctx, source, a.target, a.format, a.mode, a['node-name'], backing);
      try {
        await startMirror(a, ctx, source, node, created);
      } catch (e) {
        await dropUnused(ctx, node);
        throw e;
      }
    },
  },
  actionCommand({
    name: 'blockdev-backup',
    args: BlockdevBackup,
    doc: 'Start a point-in-time copy of a block device to a new destination.',
    async action(a: BackupArgs, ctx) {
      const target = ctx.graph.findReference(a.target);
      const source = await backupChecks(a, ctx, target);
      return backupAction(await prepareBackup(a, ctx, source, target, false));
    },
  }),
  actionCommand({
    name: 'drive-backup',
    args: DriveBackup,
    features: ['deprecated'],
    doc: 'Start a point-in-time copy of a block device to a new destination (deprecated: use blockdev-backup).',
    async action(a: BackupArgs, ctx) {
      const source = await backupChecks(a, ctx);
      const backing = a.sync === 'top' ? source.child('backing') : undefined;
      const { node, created } = await openNewTarget(ctx, source, a.target, a.format, a.mode, undefined, backing, true);
      try {
        return backupAction(await prepareBackup(a, ctx, source, node, created), () => dropUnused(ctx, node));
      } catch (e) {
        await dropUnused(ctx, node);
        throw e;
      }
    },
  }),
];
