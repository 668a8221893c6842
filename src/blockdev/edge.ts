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
  /**
   * How QEMU's permission errors name this user (its get_parent_desc):
   * "node 'n0'", "an unnamed block device", "stream job 'j0'". Defaults to describe().
   */
  permissionUser?(): string;
}

export interface ChildEdge {
  readonly parent: Parent;
  child: BlockNode;
  readonly role: string;
  perm: Perm;
  shared: Perm;
  /** `shared` follows what the parent's own users share (a raw node's file). */
  passThrough?: boolean;
  /** A format's backing edge: `shared` is cowShared() of what the parent's users share. */
  cow?: boolean;
  /**
   * How permission errors name this use when it is not the parent's own
   * (QEMU's jobs hold their targets through a BlockBackend of their own: "an
   * unnamed block device" as 'root', where blockd has one edge of the job).
   */
  permissionAs?: { user: string; role: string };
}

/**
 * What a format's backing edge shares, given what the format's own users
 * share (QEMU's bdrv_default_perms_for_cow): reads always; writes and resizes
 * of the backing node only while the users above can bear changing data. So
 * a job that lets nobody write a layer keeps everything below it from being
 * written too.
 */
export function cowShared(usersShare: Perm): Perm {
  return { read: true, write: usersShare.write, resize: usersShare.write };
}

/** Throws QEMU's conflict if `edge` sharing only `shared` would withhold what another user of its child holds. */
export function checkNewShared(edge: ChildEdge, shared: Perm): void {
  const node = edge.child;
  for (const other of [...node.parents].reverse()) {
    if (other === edge) continue;
    const m = PERM_NAMES.filter((p) => other.perm[p] && !shared[p]);
    if (m.length) throw conflict(node, { ...edge, shared }, other, m);
  }
}

export const ALL_PERM: Perm = { read: true, write: true, resize: true };
export const READ_PERM: Perm = { read: true, write: false, resize: false };

const PERM_NAMES: (keyof Perm)[] = ['read', 'write', 'resize'];

const QEMU_PERM_NAMES: Record<keyof Perm, string> = { read: 'consistent read', write: 'write', resize: 'resize' };

const userOf = (e: ChildEdge): string => e.permissionAs?.user ?? e.parent.permissionUser?.() ?? e.parent.describe();
const roleOf = (e: ChildEdge): string => e.permissionAs?.role ?? e.role;

/** QEMU's text (bdrv_a_allow_b) for `b` using what `a` does not share on `node`. */
function conflict(node: BlockNode, a: ChildEdge, b: ChildEdge, perms: (keyof Perm)[]): BlockError {
  const name = node.nodeName;
  return new BlockError('EPERM', `Permission conflict on node '${name}': permissions '${perms.map((p) => QEMU_PERM_NAMES[p]).join(', ')}' are both required by `
    + `${userOf(b)} (uses node '${name}' as '${roleOf(b)}' child) and unshared by ${userOf(a)} (uses node '${name}' as '${roleOf(a)}' child).`);
}

/**
 * Throws if `edge` (not yet attached) conflicts with the users `node`
 * already has, in QEMU's order: first an existing user needing what the new
 * edge does not share, then the new edge needing what an existing user does
 * not share (bdrv_parent_perms_conflict over the parent list, newest first).
 */
export function checkPermissions(node: BlockNode, edge: ChildEdge, ignore?: ChildEdge): void {
  const others = node.parents.filter((o) => o !== ignore && o !== edge).reverse();
  const missing = (user: ChildEdge, sharer: ChildEdge) => PERM_NAMES.filter((p) => user.perm[p] && !sharer.shared[p]);
  for (const other of others) {
    const m = missing(other, edge);
    if (m.length) throw conflict(node, edge, other, m);
  }
  for (const other of others) {
    const m = missing(edge, other);
    if (m.length) throw conflict(node, other, edge, m);
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
