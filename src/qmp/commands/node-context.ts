/**
 * x-blockdev-change and x-blockdev-set-iothread (unstable in qsd 7.2), with
 * qsd's checks in qsd's order and its texts.
 *
 * x-blockdev-change adds or removes a child of a quorum node (the graph's
 * addChild/delChild, through the driver's hooks); for any other driver the
 * reply is qsd's: "The node X does not support adding a child" (or removing).
 *
 * x-blockdev-set-iothread moves a node (with what it is connected to) to an
 * iothread's AioContext. blockd's graph lives in the main loop; an iothread
 * serves exports (iothread= on the export, src/iothread) with copies of
 * their nodes, never a node on its own. So a move to the main context
 * (iothread: null) is what every node already has, and a move to an
 * iothread, once qsd's checks pass, is refused.
 */
import { BlockNode } from '../../blockdev/node.ts';
import { alt, obj, opt, req } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import type { CommandDef } from '../command.ts';

const StrOrNull = alt('StrOrNull', ['str', 'null']);

export const nodeContextCommands: CommandDef[] = [
  {
    name: 'x-blockdev-change',
    args: obj('q_obj_x-blockdev-change-arg', [
      req('parent', 'str', 'the id or name of the parent node.'),
      opt('child', 'str', 'the name of a child under the given parent node.'),
      opt('node', 'str', 'the name of the node that will be added.'),
    ]),
    features: ['unstable'],
    doc: 'Dynamically reconfigure the block driver state graph: add (node) or remove (child) a child of a quorum node.',
    async handler({ parent, child, node }: { parent: string; child?: string; node?: string }, ctx) {
      const p = ctx.graph.findReference(parent);
      if ((child === undefined) === (node === undefined)) {
        throw genericError(child !== undefined ? 'The parameters child and node are in conflict' : 'Either child or node must be specified');
      }
      if (child !== undefined) {
        // QEMU names the parent as given (a device name or a node name).
        if (!p.children.some((e) => e.role === child)) throw genericError(`Node '${parent}' does not have child '${child}'`);
        await ctx.graph.delChild(p, child);
        return;
      }
      const n = ctx.graph.nodes.get(node!);
      if (!n) throw genericError(`Node '${node}' not found`);
      await ctx.graph.addChild(p, n);
    },
  },
  {
    name: 'x-blockdev-set-iothread',
    args: obj('q_obj_x-blockdev-set-iothread-arg', [
      req('node-name', 'str', 'the name of the block driver node'),
      req('iothread', StrOrNull, 'the name of the IOThread object or null for the main loop'),
      opt('force', 'bool', 'true if the node and its children should be moved when a BlockBackend is already attached'),
    ]),
    features: ['unstable'],
    doc: 'Move a node and its children into an IOThread (blockd: every node runs in the main loop; a move there succeeds, a move to an iothread is refused).',
    handler({ 'node-name': name, iothread, force }: { 'node-name': string; iothread: string | null; force?: boolean }, ctx) {
      const n = ctx.graph.nodes.get(name);
      if (!n) throw genericError(`Failed to find node with node-name='${name}'`);
      // bdrv_has_blk: a user that is not a node (an export, a job) is what QEMU holds through a BlockBackend.
      if (force !== true && n.parents.some((e) => !(e.parent instanceof BlockNode))) {
        throw genericError(`Node ${name} is associated with a BlockBackend and could be in use (use force=true to override this check)`);
      }
      if (iothread === null) return;
      if (ctx.host.objects.type(iothread) !== 'iothread') throw genericError(`Cannot find iothread ${iothread}`);
      throw genericError(`blockd runs every block node in its main loop: node '${name}' cannot move to iothread '${iothread}'`);
    },
  },
];
