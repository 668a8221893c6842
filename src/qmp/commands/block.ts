/**
 * Graph commands: blockdev-add, blockdev-del, blockdev-reopen, block_resize,
 * query-named-block-nodes, x-debug-query-block-graph (qapi/block-core.json),
 * with qsd 7.2's checks in qsd's order and its error texts.
 */
import { BlockError } from '../../util/errors.ts';
import { BlockNode } from '../../blockdev/node.ts';
import { isBlockExport } from '../../export/export.ts';
import { blockdevOptionsType, BlockdevDetectZeroesOptions } from '../../blockdev/options.ts';
import { arr, enm, obj, opt, ref, req, type ObjectType } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import { queryNamedBlockNodes, debugBlockGraph } from './block-info.ts';
import { reopenNodes } from './reopen.ts';
import type { CommandDef } from '../command.ts';

const SnapshotInfo = obj('SnapshotInfo', [
  req('id', 'str'), req('name', 'str'), req('vm-state-size', 'int'), req('date-sec', 'int'), req('date-nsec', 'int'),
  req('vm-clock-sec', 'int'), req('vm-clock-nsec', 'int'), opt('icount', 'int'),
]);

/** format-specific is QEMU's ImageInfoSpecific union (qcow2, luks, ...); its shape comes from the driver. */
const ImageInfo: ObjectType = obj('ImageInfo', [
  req('filename', 'str'), req('format', 'str'), opt('dirty-flag', 'bool'), opt('actual-size', 'int'), req('virtual-size', 'int'),
  opt('cluster-size', 'int'), opt('encrypted', 'bool'), opt('compressed', 'bool'), opt('backing-filename', 'str'),
  opt('full-backing-filename', 'str'), opt('backing-filename-format', 'str'), opt('snapshots', arr(SnapshotInfo)),
  opt('backing-image', ref('ImageInfo')), opt('format-specific', 'any'),
], { doc: 'Information about a QEMU image file' });

const BlockDirtyInfo = obj('BlockDirtyInfo', [
  opt('name', 'str'), req('count', 'int'), req('granularity', 'uint32'), req('recording', 'bool'), req('busy', 'bool'),
  req('persistent', 'bool'), opt('inconsistent', 'bool'),
]);

/** I/O throttling limits: blockd has none, so only the always-present members are ever 0 and the rest absent. */
const THROTTLE_MAX = ['bps_max', 'bps_rd_max', 'bps_wr_max', 'iops_max', 'iops_rd_max', 'iops_wr_max',
  'bps_max_length', 'bps_rd_max_length', 'bps_wr_max_length', 'iops_max_length', 'iops_rd_max_length', 'iops_wr_max_length', 'iops_size'];

const BlockdevCacheInfo = obj('BlockdevCacheInfo', [req('writeback', 'bool'), req('direct', 'bool'), req('no-flush', 'bool')]);

export const BlockDeviceInfo = obj('BlockDeviceInfo', [
  req('file', 'str'), opt('node-name', 'str'), req('ro', 'bool'), req('drv', 'str'), opt('backing_file', 'str'),
  req('backing_file_depth', 'int'), req('encrypted', 'bool'), req('detect_zeroes', BlockdevDetectZeroesOptions),
  req('bps', 'int'), req('bps_rd', 'int'), req('bps_wr', 'int'), req('iops', 'int'), req('iops_rd', 'int'), req('iops_wr', 'int'),
  req('image', ImageInfo), ...THROTTLE_MAX.map((n) => opt(n, 'int')), opt('group', 'str'),
  req('cache', BlockdevCacheInfo), req('write_threshold', 'int'), opt('dirty-bitmaps', arr(BlockDirtyInfo)),
], { doc: 'Information about the backing device for a block device.' });

const BlockPermission = enm('BlockPermission', ['consistent-read', 'write', 'write-unchanged', 'resize']);
const XDbgBlockGraph = obj('XDbgBlockGraph', [
  req('nodes', arr(obj('XDbgBlockGraphNode', [
    req('id', 'int'), req('type', enm('XDbgBlockGraphNodeType', ['block-backend', 'block-job', 'block-driver'])), req('name', 'str'),
  ]))),
  req('edges', arr(obj('XDbgBlockGraphEdge', [
    req('parent', 'int'), req('child', 'int'), req('name', 'str'), req('perm', arr(BlockPermission)), req('shared-perm', arr(BlockPermission)),
  ]))),
]);

function resizeTarget(node: BlockNode): BlockNode | undefined {
  let n: BlockNode | undefined = node;
  while (n && !n.ops.truncate && n.isFilter) n = n.primaryChild;
  return n?.ops.truncate ? n : undefined;
}

export const blockCommands: CommandDef[] = [
  {
    name: 'blockdev-add',
    args: ({ graph }) => blockdevOptionsType(graph),
    doc: 'Creates a new block device (a node of the block graph), with inline children as needed.',
    async handler(opts: Record<string, unknown>, ctx) {
      if (opts['node-name'] === undefined) throw genericError("'node-name' must be specified for the root node");
      const node = await ctx.graph.add(opts);
      ctx.host.log.info({ node: node.nodeName, driver: node.driver.name }, 'blockdev added');
    },
  },
  {
    name: 'blockdev-del',
    args: obj('q_obj_blockdev-del-arg', [req('node-name', 'str', 'Name of the graph node to delete.')]),
    doc: 'Deletes a block device that has been added using blockdev-add. It must not be in use (by an export, a job or another node).',
    async handler({ 'node-name': name }: { 'node-name': string }, ctx) {
      const node = ctx.graph.nodes.get(name);
      if (!node) throw genericError(`Failed to find node with node-name='${name}'`);
      const users = node.parents.filter((e) => !(e.parent instanceof BlockNode));
      if (users.some((e) => isBlockExport(e.parent))) throw genericError(`Node ${name} is in use`);
      if (users.length > 0) throw genericError(`Node '${name}' is busy: block device is in use by ${users[0]!.parent.describe()}`);
      if (node.implicit) throw genericError(`Node ${name} is not owned by the monitor`);
      if (node.parents.length > 0) throw genericError(`Block device ${name} is in use`);
      await node.drained(() => ctx.graph.del(name));
      ctx.host.log.info({ node: name }, 'blockdev deleted');
    },
  },
  {
    name: 'blockdev-reopen',
    args: ({ graph }) => obj('q_obj_blockdev-reopen-arg', [req('options', arr(blockdevOptionsType(graph)), 'options for each node to reopen')]),
    doc: 'Reopens one or more block devices with new options, atomically: all of them change or none does. '
      + 'Omitted options return to their defaults. read-only, detect-zeroes, discard and cache.no-flush can change on any node; '
      + 'other options only where the driver supports it.',
    async handler({ options }: { options: Record<string, unknown>[] }, ctx) {
      await reopenNodes(ctx.graph, options);
    },
  },
  {
    name: 'block_resize',
    args: obj('q_obj_block_resize-arg', [
      opt('device', 'str', 'the name of the device to get the image resized'),
      opt('node-name', 'str', 'graph node name to get the image resized'),
      req('size', 'int', 'new image size in bytes'),
    ]),
    doc: 'Resize a block image while it is in use (by node-name; blockd has no named devices).',
    async handler(a: { device?: string; 'node-name'?: string; size: number }, ctx) {
      const node = a['node-name'] !== undefined ? ctx.graph.nodes.get(a['node-name']) : undefined;
      if (!node) throw genericError(`Cannot find device='${a.device ?? ''}' nor node-name='${a['node-name'] ?? ''}'`);
      if (a.size < 0) throw genericError("Parameter 'size' expects a >0 size");
      // QEMU takes the resize permission with a temporary user for the duration.
      const blocker = node.parents.find((e) => !e.shared.resize);
      if (blocker) {
        const who = blocker.parent instanceof BlockNode ? `node '${blocker.parent.nodeName}'` : 'an unnamed block device';
        throw genericError(`Permission conflict on node '${node.nodeName}': permissions 'resize' are both required by an unnamed block device `
          + `(uses node '${node.nodeName}' as 'root' child) and unshared by ${who} (uses node '${node.nodeName}' as '${blocker.role}' child).`);
      }
      if (node.readOnly) throw genericError('Image is read-only');
      if (!resizeTarget(node)) throw genericError('Image format driver does not support resize');
      if (!Number.isSafeInteger(a.size)) throw new BlockError('EOVERFLOW', 'Value too large for defined data type');
      try {
        await node.truncate(a.size);
      } catch (e) {
        // A format forwarded the resize to a protocol that cannot (raw over null-co).
        if (e instanceof BlockError && e.code === 'ENOTSUP' && / does not support resizing$/.test(e.message)) {
          throw genericError('Image format driver does not support resize');
        }
        throw e;
      }
      ctx.host.log.info({ node: node.nodeName, size: a.size }, 'node resized');
    },
  },
  {
    name: 'query-named-block-nodes',
    args: obj('q_obj_query-named-block-nodes-arg', [opt('flat', 'bool', 'Omit the nested data about backing image ("backing-image" key) if true. Default is false')]),
    returns: arr(BlockDeviceInfo),
    doc: 'Get the named block driver list',
    handler: ({ flat }: { flat?: boolean }, ctx) => queryNamedBlockNodes(ctx.graph, flat === true),
  },
  {
    name: 'x-debug-query-block-graph',
    returns: XDbgBlockGraph,
    features: ['unstable'],
    doc: 'Get the block graph.',
    handler: (_a, ctx) => debugBlockGraph(ctx.graph),
  },
];
