/**
 * Bytes a node takes on disk (QEMU's bdrv_get_allocated_file_size), if
 * known: a driver's own 'actual-size', a filter's child's, or the sum over
 * a format node's data children (quorum's children.N, vmdk's extents.N too). query-named-block-nodes shows it as
 * actual-size; the FUSE export derives st_blocks from it.
 */
import type { BlockNode } from './node.ts';

const DATA_ROLES = new Set(['file', 'data-file']);

export function allocatedFileSize(node: BlockNode): number | undefined {
  const own = driverInfo(node)['actual-size'];
  if (typeof own === 'number') return own;
  if (node.driver.kind === 'protocol' || node.driver.noAllocatedSize) return undefined;
  if (node.isFilter) return node.primaryChild ? allocatedFileSize(node.primaryChild) : undefined;
  let sum = 0;
  for (const e of node.children) {
    if (!DATA_ROLES.has(e.role) && !e.role.startsWith('children.') && !e.role.startsWith('extents.')) continue;
    const s = allocatedFileSize(e.child);
    if (s === undefined) return undefined;
    sum += s;
  }
  return sum;
}

function driverInfo(node: BlockNode): Record<string, unknown> {
  try {
    return node.ops.info?.() ?? {};
  } catch {
    return {};
  }
}
