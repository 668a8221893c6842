/**
 * A filter's view of its child that follows the edge: graph surgery (a
 * snapshot taken under the filter, a mirror's pivot) moves the edge to a
 * new node without reopening the filter, so the filter must not hold on to
 * the node it opened.
 */
import { BlockNode } from '../node.ts';
import type { DriverContext } from '../driver.ts';

/** The node `ctx`'s `role` edge points at now (`first`: what openChild returned). */
export function followEdge(ctx: DriverContext, first: BlockNode, role: string): () => BlockNode {
  // Read first: an implicit node gets its generated name on this first use.
  const name = ctx.nodeName;
  const edge = first.parents.find((e) => e.role === role && e.parent instanceof BlockNode && e.parent.nodeName === name);
  if (!edge) throw new Error(`assertion failed: node '${ctx.nodeName}' without its '${role}' edge`);
  return () => edge.child;
}
