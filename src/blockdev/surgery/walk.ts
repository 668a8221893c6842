/**
 * Walks of the block graph that the surgery and the jobs share: below a
 * node (the cycle check), above it (everything a drain must hold), and down
 * a backing chain.
 */
import { BlockError } from '../../util/errors.ts';
import { BlockNode } from '../node.ts';

/** True if `node` is `top` or can be reached from it through child edges. */
export function reaches(top: BlockNode, node: BlockNode): boolean {
  if (top === node) return true;
  return top.children.some((e) => reaches(e.child, node));
}

/** `node` and every node above it (through node users; exports and jobs are not nodes). */
export function ancestry(node: BlockNode): BlockNode[] {
  const out = new Set<BlockNode>();
  const visit = (n: BlockNode) => {
    if (out.has(n)) return;
    out.add(n);
    for (const e of n.parents) if (e.parent instanceof BlockNode) visit(e.parent);
  };
  visit(node);
  return [...out];
}

/** Depth of `node` under `top` through backing links (1 = top itself); Infinity if absent or not given. */
export function backingDepth(top: BlockNode, node: BlockNode | undefined): number {
  if (!node) return Infinity;
  let d = 1;
  for (let n: BlockNode | undefined = top; n; n = n.child('backing'), d++) if (n === node) return d;
  return Infinity;
}

/** Refuses to make `child` a `role` child of `parent` when `parent` lies below `child` (QEMU's text). */
export function refuseCycle(parent: BlockNode, child: BlockNode, role: string): void {
  if (reaches(child, parent)) {
    throw new BlockError('EINVAL', `Making '${child.nodeName}' a ${role} child of '${parent.nodeName}' would create a cycle`);
  }
}
