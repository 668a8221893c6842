/**
 * snapshot-access (QEMU's block/snapshot-access.c): a node that serves the
 * point-in-time view its file child keeps (DriverOps.snapshotAccess: a
 * copy-before-write filter, user-added or a backup job's), for fleecing:
 * exported over NBD, it shows the disk as it was when copying began while
 * the disk is written through the filter. It takes no permission on its
 * child and writes nothing: writes and write-zeroes fail with ENOTSUP, a
 * discard tells the filter the range is no longer needed. Not a filter in
 * QEMU's sense (its data is not its child's), so a 'format' here.
 */
import { BlockError } from '../../util/errors.ts';
import { obj, req } from '../../qapi/types.ts';
import { BlockdevRef } from '../options.ts';
import { BlockNode } from '../node.ts';
import type { Driver, DriverOps, SnapshotAccess } from '../driver.ts';

const NONE = { read: false, write: false, resize: false };
const ALL = { read: true, write: true, resize: true };

export const snapshotAccessDriver: Driver = {
  name: 'snapshot-access',
  kind: 'format',
  options: obj('BlockdevOptionsGenericFormat', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
  ]),
  childPerm: () => ({ perm: NONE, shared: ALL }),
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>, { perm: NONE, shared: ALL });
    const api = (): SnapshotAccess => {
      const a = file.ops.snapshotAccess;
      if (!a) throw new BlockError('ENOTSUP', `Node '${file.nodeName}' offers no snapshot access`);
      return a;
    };
    const edge = file.parents.find((e) => e.role === 'file' && e.parent instanceof BlockNode && e.parent.nodeName === ctx.nodeName);
    if (!edge) throw new Error('assertion failed: snapshot-access node without its file edge');
    const self = edge.parent as BlockNode;
    const refuse = async () => { throw new BlockError('ENOTSUP', 'snapshot-access nodes are read-only'); };
    // The size is the child's at open (QEMU copies total_sectors once).
    const size = file.length();
    return {
      length: () => size,
      read: (o, buf) => api().read(o, buf),
      write: refuse,
      writeZeroes: refuse,
      // Without discard=unmap a discard does nothing (QEMU: no BDRV_O_UNMAP), as for any node; the option may change by reopen.
      discard: async (o, l) => { if (self.options.discard === 'unmap') await api().discard(o, l); },
      blockStatus: (o, l) => api().blockStatus(o, l),
      // QEMU flushes only children the node writes to: none.
      flush: async () => undefined,
      truncate: refuse,
      limits: { canFua: false, canZero: true, canTrim: true },
    };
  },
};
