/**
 * Edges of the block graph: who uses a node, in which role, with which
 * permissions, and what it lets others do. Conflicts are refused when an edge
 * is attached, with a message naming both users, as QEMU does.
 */
import { BlockError } from '../util/errors.ts';
import type { BlockNode } from './node.ts';
import type { Perm } from './driver.ts';

/** Anything that holds an edge to a node: another node, an export, a job. */
export interface Parent {
  /** How messages name this user, e.g. "qcow0" or "export 'e1'". */
  describe(): string;
}

export interface ChildEdge {
  readonly parent: Parent;
  child: BlockNode;
  readonly role: string;
  perm: Perm;
  shared: Perm;
  /** `shared` follows what the parent's own users share (a raw node's file). */
  passThrough?: boolean;
}

export const ALL_PERM: Perm = { read: true, write: true, resize: true };
export const READ_PERM: Perm = { read: true, write: false, resize: false };

const PERM_NAMES: (keyof Perm)[] = ['read', 'write', 'resize'];

/** Throws if `edge` (not yet attached) conflicts with the users `node` already has. */
export function checkPermissions(node: BlockNode, edge: ChildEdge, ignore?: ChildEdge): void {
  for (const other of node.parents) {
    if (other === ignore) continue;
    for (const p of PERM_NAMES) {
      if (edge.perm[p] && !other.shared[p]) {
        throw new BlockError('EPERM',
          `Conflicts with use by ${other.parent.describe()} as '${other.role}', which does not allow '${p === 'read' ? 'consistent read' : p}' on ${node.nodeName}`);
      }
      if (other.perm[p] && !edge.shared[p]) {
        throw new BlockError('EPERM',
          `Conflicts with use by ${other.parent.describe()} as '${other.role}', which uses '${p === 'read' ? 'consistent read' : p}' on ${node.nodeName}`);
      }
    }
  }
}

/** Union of what the edges use, intersection of what they share. */
export function cumulative(edges: readonly ChildEdge[]): { perm: Perm; shared: Perm } {
  const perm: Perm = { read: false, write: false, resize: false };
  const shared: Perm = { read: true, write: true, resize: true };
  for (const e of edges) {
    for (const k of PERM_NAMES) {
      perm[k] ||= e.perm[k];
      shared[k] &&= e.shared[k];
    }
  }
  return { perm, shared };
}

/** Checks and attaches `edge`; the child's image locks follow (and may refuse it, leaving nothing attached). */
export function attachEdge(edge: ChildEdge): void {
  checkPermissions(edge.child, edge);
  edge.child.parents.push(edge);
  try {
    edge.child.refreshPermissions();
  } catch (e) {
    removeParent(edge);
    edge.child.refreshPermissions();
    throw e;
  }
}

export function detachEdge(edge: ChildEdge): void {
  removeParent(edge);
  edge.child.refreshPermissions();
}

function removeParent(edge: ChildEdge): void {
  const list = edge.child.parents;
  const i = list.indexOf(edge);
  if (i >= 0) list.splice(i, 1);
}
