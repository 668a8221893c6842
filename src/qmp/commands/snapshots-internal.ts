/**
 * Internal snapshots on a running node: blockdev-snapshot-internal-sync and
 * blockdev-snapshot-delete-internal-sync (qapi/block-core.json), with
 * qemu-storage-daemon 7.2's checks, in its order, and its error texts. The
 * node is drained while its image changes; the work itself is the node's
 * internal-snapshots capability (blockdev/internal-snapshots.ts; qcow2's is
 * drivers/qcow2/snapshot-write.ts). blockdev-snapshot-internal-sync is also a
 * `transaction` action: prepare takes the snapshot, abort deletes it again.
 */
import { BlockNode } from '../../blockdev/node.ts';
import { SnapshotError, errnoText, snapshotInfo, type InternalSnapshots } from '../../blockdev/internal-snapshots.ts';
import type { BlockGraph } from '../../blockdev/graph.ts';
import { obj, opt, req } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import { actionCommand, type CommandDef } from '../command.ts';
import { checkIndividual } from './bitmaps.ts';

export const SnapshotInfo = obj('SnapshotInfo', [
  req('id', 'str', 'unique snapshot id'),
  req('name', 'str', 'user chosen name'),
  req('vm-state-size', 'int', 'size of the VM state'),
  req('date-sec', 'int', 'UTC date of the snapshot in seconds'),
  req('date-nsec', 'int', 'fractional part in nano seconds to be used with date-sec'),
  req('vm-clock-sec', 'int', 'VM clock relative to boot in seconds'),
  req('vm-clock-nsec', 'int', 'fractional part in nano seconds to be used with vm-clock-sec'),
  opt('icount', 'int', 'Current instruction count. Appears when execution record/replay is enabled.'),
], { doc: 'Information about an internal snapshot' });

/** "<context>: <strerror>", as QEMU's error_setg_errno words it. */
function withErrno(context: string, e: unknown): Error {
  return genericError(`${context}: ${errnoText(e)}`);
}

/** qmp_get_root_bs: the node, which no other node may use as a child (exports and jobs may). */
function rootNode(graph: BlockGraph, device: string): BlockNode {
  const node = graph.nodes.get(device);
  if (!node) throw genericError(`Cannot find device='${device}' nor node-name='${device}'`);
  if (node.parents.some((e) => e.parent instanceof BlockNode)) throw genericError('Need a root block node');
  return node;
}

/** The node that takes a snapshot of `node`: itself, or (QEMU's fallback) its file child, down the chain. */
function snapshotImage(node: BlockNode): { image?: InternalSnapshots; node: BlockNode } {
  for (let n: BlockNode | undefined = node; n; n = n.child('file') ?? (n.isFilter ? n.primaryChild : undefined)) {
    const image = n.ops.internalSnapshots;
    if (image) return { image, node: n };
  }
  return { node };
}

/** The time of a snapshot: wall clock with microseconds; qsd's virtual clock reads the same. */
function now(): { sec: number; nsec: number; clockNsec: number } {
  const us = Math.round((performance.timeOrigin + performance.now()) * 1000);
  const sec = Math.floor(us / 1e6);
  const nsec = (us % 1e6) * 1000;
  return { sec, nsec, clockNsec: sec * 1e9 + nsec };
}

export const snapshotInternalCommands: CommandDef[] = [
  actionCommand({
    name: 'blockdev-snapshot-internal-sync',
    args: obj('q_obj_blockdev-snapshot-internal-sync-arg', [
      req('device', 'str', 'the device name or node-name of a root node to generate the snapshot from'),
      req('name', 'str', 'the name of the snapshot to create'),
    ]),
    doc: 'Synchronously take an internal snapshot of a block device, when the format of the image used supports it '
      + '(qcow2 without an external data file). If the name is an empty string, or a snapshot with that name already exists, the operation fails.',
    async action({ device, name }: { device: string; name: string }, ctx) {
      checkIndividual('blockdev-snapshot-internal-sync', ctx);
      const node = rootNode(ctx.graph, device);
      const { image, node: target } = snapshotImage(node);
      const snap = await target.drained(async () => {
        if (node.readOnly) throw genericError(`Device '${device}' is read only`);
        if (!image || image.readOnly) throw genericError(`Block format '${node.driver.name}' used by device '${device}' does not support internal snapshots`);
        if (name === '') throw genericError('Name is empty');
        try {
          image.check();
        } catch (e) {
          throw withErrno('Failed to get a snapshot list', e);
        }
        if (image.find(undefined, name)) throw genericError(`Snapshot with name '${name}' already exists on device '${device}'`);
        const t = now();
        try {
          return await image.create({ name, dateSec: t.sec, dateNsec: t.nsec, vmClockNsec: t.clockNsec, icount: -1 });
        } catch (e) {
          throw withErrno(`Failed to create snapshot '${name}' on device '${device}'`, e);
        }
      });
      ctx.host.log.info({ node: target.nodeName, snapshot: name }, 'internal snapshot created');
      return {
        // A later action failed: the snapshot goes again (QEMU only reports a failure here).
        abort: async () => {
          try {
            await target.drained(() => image!.remove(snap.id, snap.name));
          } catch (e) {
            ctx.host.log.error({ err: e, node: target.nodeName, snapshot: name }, 'could not delete the snapshot of an aborted transaction');
          }
        },
      };
    },
  }),
  {
    name: 'blockdev-snapshot-delete-internal-sync',
    args: obj('q_obj_blockdev-snapshot-delete-internal-sync-arg', [
      req('device', 'str', 'the device name or node-name of a root node to delete the snapshot from'),
      opt('id', 'str', 'optional the snapshot\'s ID to be deleted'),
      opt('name', 'str', 'optional the snapshot\'s name to be deleted'),
    ]),
    returns: SnapshotInfo,
    doc: 'Synchronously delete an internal snapshot of a block device, when the format of the image used supports it. '
      + 'The snapshot is identified by name or id or both; one of the name or id is required. Returns the deleted snapshot.',
    async handler({ device, id, name }: { device: string; id?: string; name?: string }, ctx) {
      const node = rootNode(ctx.graph, device);
      if (id === undefined && name === undefined) throw genericError('Name or id must be provided');
      const { image, node: target } = snapshotImage(node);
      const deleted = await target.drained(async () => {
        if (!image) throw genericError('Failed to get a snapshot list: Operation not supported');
        try {
          image.check();
        } catch (e) {
          throw withErrno('Failed to get a snapshot list', e);
        }
        if (!image.find(id, name)) {
          throw genericError(`Snapshot with id '${id ?? 'null'}' and name '${name ?? 'null'}' does not exist on device '${device}'`);
        }
        try {
          return await image.remove(id, name);
        } catch (e) {
          throw e instanceof SnapshotError ? genericError(e.message) : withErrno('Failed to remove snapshot from snapshot list', e);
        }
      });
      ctx.host.log.info({ node: target.nodeName, snapshot: deleted.name, id: deleted.id }, 'internal snapshot deleted');
      return snapshotInfo(deleted);
    },
  },
];
