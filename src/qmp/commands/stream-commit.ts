/**
 * block-stream and block-commit: argument checks in qsd 7.2's order and
 * words, then the jobs (src/blockdev/jobs/stream.ts, commit.ts). A base
 * that must be written (commit) is reopened read-write first; an
 * intermediate commit's base goes back to read-only when the job ends.
 */
import { enm, obj, opt, req } from '../../qapi/types.ts';
import { genericError, QmpError } from '../errors.ts';
import { StreamJob } from '../../blockdev/jobs/stream.ts';
import { CommitJob } from '../../blockdev/jobs/commit.ts';
import { checkFilterName } from '../../blockdev/surgery/filter.ts';
import { BlockJob, type BlockdevOnError } from '../../blockdev/jobs/block-job.ts';
import { VALID_ID, type BlockGraph } from '../../blockdev/graph.ts';
import type { BlockNode } from '../../blockdev/node.ts';
import type { CommandDef } from '../command.ts';
import { setReadOnly } from './snapshots-external.ts';

const Empty = obj('q_empty', []);
const OnError = enm('BlockdevOnError', ['report', 'ignore', 'enospc', 'stop', 'auto'], 'An enumeration of possible behaviors for errors on I/O operations.');

/** The backing chain below `top`, top first. */
function chain(top: BlockNode): BlockNode[] {
  const out: BlockNode[] = [];
  for (let n: BlockNode | undefined = top; n; n = n.child('backing')) out.push(n);
  return out;
}

/** A node of the chain named by its image file name. */
function byFilename(top: BlockNode, filename: string): BlockNode | undefined {
  return chain(top).find((n) => n.fileName() === filename);
}

/** The node directly above `node` in `top`'s chain. */
function above(top: BlockNode, node: BlockNode): BlockNode | undefined {
  const c = chain(top);
  const i = c.indexOf(node);
  return i > 0 ? c[i - 1] : undefined;
}

/** QEMU's op blocker for a node a block job already works on. */
function checkNotInJob(nodes: (BlockNode | undefined)[]): void {
  for (const n of nodes) {
    const e = n?.parents.find((p) => p.parent instanceof BlockJob);
    if (n && e) throw genericError(`Node '${n.nodeName}' is busy: block device is in use by block job: ${(e.parent as BlockJob).type}`);
  }
}

type Common = { 'job-id'?: string; device: string; speed?: number; 'on-error'?: BlockdevOnError; 'filter-node-name'?: string; 'backing-file'?: string; 'auto-finalize'?: boolean; 'auto-dismiss'?: boolean };

const commonArgs = [
  opt('job-id', 'str', 'identifier for the newly-created block job. If omitted, the device name will be used (qsd has none: the job then needs an explicit id).'),
  req('device', 'str', 'the device or node name of the top image'),
];
const tailArgs = [
  opt('backing-file', 'str', 'The backing file string to write into the image that ends up as the new backing file after the operation.'),
  opt('speed', 'int', 'the maximum speed, in bytes per second'),
  opt('on-error', OnError, "the action to take on an error (default report). 'stop' and 'enospc' can only be used if the block device supports io-status."),
  opt('filter-node-name', 'str', 'the node name that should be assigned to the filter driver that the job inserts into the graph above the top node.'),
  opt('auto-finalize', 'bool', 'When false, this job will wait in a PENDING state after it has finished its work, waiting for block-job-finalize before making any block graph changes.'),
  opt('auto-dismiss', 'bool', 'When false, this job will wait in a CONCLUDED state after it has completely ceased all work, and awaits block-job-dismiss.'),
];

function jobOptions(a: Common, graph: BlockGraph) {
  return {
    // qsd has no named block backends: a job without an id gets the empty one, which is refused.
    id: a['job-id'] ?? '',
    graph,
    speed: a.speed,
    autoFinalize: a['auto-finalize'],
    autoDismiss: a['auto-dismiss'],
    onError: a['on-error'] ?? 'report',
  };
}

type StreamArgs = Common & { base?: string; 'base-node'?: string; bottom?: string };
type CommitArgs = Common & { base?: string; 'base-node'?: string; top?: string; 'top-node'?: string };

export const streamCommitCommands: CommandDef[] = [
  {
    name: 'block-stream',
    args: obj('q_obj_block-stream-arg', [
      ...commonArgs,
      opt('base', 'str', 'the common backing file name. It cannot be set if base-node or bottom is also set.'),
      opt('base-node', 'str', 'the node name of the backing file. It cannot be set if base or bottom is also set.'),
      tailArgs[0],
      opt('bottom', 'str', 'the last node in the chain that should be streamed into top. It cannot be set if base or base-node is also set. It cannot be filter node.'),
      ...tailArgs.slice(1),
    ]),
    returns: Empty,
    doc: 'Copy data from a backing file into a block device.',
    handler: async (a: StreamArgs, ctx) => {
      const graph = ctx.graph;
      if (a.base !== undefined && a['base-node'] !== undefined) throw genericError("'base' and 'base-node' cannot be specified at the same time");
      if (a.base !== undefined && a.bottom !== undefined) throw genericError("'base' and 'bottom' cannot be specified at the same time");
      if (a.bottom !== undefined && a['base-node'] !== undefined) throw genericError("'bottom' and 'base-node' cannot be specified at the same time");
      const top = graph.findReference(a.device);
      let base: BlockNode | undefined;
      let bottom: BlockNode | undefined;
      if (a.base !== undefined) {
        base = byFilename(top, a.base);
        if (!base) throw genericError(`Can't find '${a.base}' in the backing chain`);
      }
      if (a['base-node'] !== undefined) {
        base = graph.find(a['base-node']);
        if (!chain(top).includes(base) || base === top) throw genericError(`Node '${base.nodeName}' is not a backing image of '${top.nodeName}'`);
      }
      if (a.bottom !== undefined) {
        bottom = graph.find(a.bottom);
        if (!chain(top).includes(bottom) || bottom === top) throw genericError(`Node '${bottom.nodeName}' is not a backing image of '${top.nodeName}'`);
        base = bottom.child('backing');
      } else if (base) {
        bottom = above(top, base);
      }
      if (a['backing-file'] !== undefined && !base) throw genericError("backing file specified, but streaming the entire chain");
      checkNotInJob([top]);
      if (!VALID_ID.test(a['job-id'] ?? '')) throw genericError(`Invalid job ID '${a['job-id'] ?? ''}'`);
      const wasReadOnly = top.readOnly;
      if (wasReadOnly) await setReadOnly(graph, top, false);
      const job = ctx.jobs.add(new StreamJob({
        ...jobOptions(a, graph), top, base, bottom,
        backingFile: a['backing-file'], filterNodeName: a['filter-node-name'],
        onFinished: async () => { if (wasReadOnly && !top.isClosed) await setReadOnly(graph, top, true).catch(() => undefined); },
      }));
      try {
        job.setUp();
      } catch (e) {
        await job.tearDown().catch(() => undefined);
        job.earlyFail();
        if (wasReadOnly && !top.isClosed) await setReadOnly(graph, top, true).catch(() => undefined);
        throw e;
      }
      job.start();
      return {};
    },
  },
  {
    name: 'block-commit',
    args: obj('q_obj_block-commit-arg', [
      ...commonArgs,
      opt('base-node', 'str', 'The node name of the backing image to write data into. If not specified, this is the deepest backing image.'),
      opt('base', 'str', 'Same as base-node, except that it is a file name rather than a node name.'),
      opt('top-node', 'str', 'The node name of the backing image within the image chain which contains the topmost data to be committed down. If not specified, this is the active layer.'),
      opt('top', 'str', 'Same as top-node, except that it is a file name rather than a node name.'),
      ...tailArgs,
    ]),
    returns: Empty,
    doc: 'Live commit of data from overlay image nodes into backing nodes - i.e., writes data between \'top\' and \'base\' into \'base\'.',
    handler: async (a: CommitArgs, ctx) => {
      const graph = ctx.graph;
      const device = graph.nodes.get(a.device);
      if (!device) throw new QmpError('DeviceNotFound', `Device '${a.device}' not found`);
      // A root has no users but exports (qsd's root-role parents): no node above it, no job on it.
      if (device.parents.some((e) => e.role !== 'root')) throw genericError('Need a root block node');
      if (a.base !== undefined && a['base-node'] !== undefined) throw genericError("'base' and 'base-node' cannot be used at the same time");
      if (a.top !== undefined && a['top-node'] !== undefined) throw genericError("'top' and 'top-node' cannot be used at the same time");
      const c = chain(device);
      let top = device;
      if (a['top-node'] !== undefined) {
        top = graph.find(a['top-node']);
        if (!c.includes(top)) throw genericError(`'${top.nodeName}' is not in this backing file chain`);
      } else if (a.top !== undefined) {
        const t = byFilename(device, a.top);
        if (!t) throw genericError(`Top image file ${a.top} not found`);
        top = t;
      }
      let base: BlockNode | undefined;
      if (a['base-node'] !== undefined) {
        base = graph.find(a['base-node']);
        if (!c.includes(base)) throw genericError(`'${base.nodeName}' is not in this backing file chain`);
      } else if (a.base !== undefined) {
        base = byFilename(device, a.base);
        if (!base) throw genericError(`Can't find '${a.base}' in the backing chain`);
      } else {
        base = c[c.length - 1];
      }
      if (top === base) throw genericError('cannot commit an image into itself');
      if (c.indexOf(base!) < c.indexOf(top)) throw genericError(`'${base!.nodeName}' is not in the backing chain of '${top.nodeName}'`);
      const overlay = top === device ? undefined : above(device, top);
      // QEMU's rule: active commit (mirror-like) when `top` is the device or someone writes to it.
      const active = !overlay || top.parents.some((e) => e.perm.write);
      if (a['backing-file'] !== undefined && active) {
        throw genericError(overlay ? "'backing-file' specified, but 'top' has a writer on it" : "'backing-file' specified, but 'top' is the active layer");
      }
      checkNotInJob([device, top, base]);
      if (!VALID_ID.test(a['job-id'] ?? '')) throw genericError(`Invalid job ID '${a['job-id'] ?? ''}'`);
      // qsd makes an active commit's filter before its job (a taken name: no job events).
      if (active) checkFilterName(graph, a['filter-node-name']);
      const wasReadOnly = base!.readOnly;
      await setReadOnly(graph, base!, false);
      const b = base!;
      const job = ctx.jobs.add(new CommitJob({
        ...jobOptions(a, graph), device, top, base: b, overlay, active, backingFile: a['backing-file'], filterNodeName: a['filter-node-name'],
        setReadOnly: (n, ro) => setReadOnly(graph, n, ro),
        // An intermediate base goes back to read-only; after an active commit it may have top's writers.
        onFinished: async () => { if (wasReadOnly && !active) await setReadOnly(graph, b, true).catch(() => undefined); },
      }));
      try {
        await job.setUp();
      } catch (e) {
        await job.tearDown().catch(() => undefined);
        job.earlyFail();
        if (wasReadOnly) await setReadOnly(graph, b, true).catch(() => undefined);
        throw e;
      }
      job.start();
      return {};
    },
  },
];
