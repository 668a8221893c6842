/**
 * Filters that jobs put above a node and take out again (mirror_top,
 * copy-before-write for backup): move parent edges from one node to
 * another, insert a filter node above a node, and take it out again.
 * Callers hold a drained section around every move (node.drained), so no
 * request is in flight on the nodes involved; requests queued at a
 * filter's entry while it is being removed still pass through the
 * filter's ops, which forward to wherever the filter points by then.
 */
import { BlockError } from '../../util/errors.ts';
import { BlockNode } from '../node.ts';
import { checkPermissions, type ChildEdge } from '../edge.ts';
import type { BlockGraph } from '../graph.ts';
import type { Driver, DriverOps, Perm } from '../driver.ts';
import { obj } from '../../qapi/types.ts';
import { reaches } from './walk.ts';

/**
 * Moves every parent edge of `from` (except those `keep` says stay) onto
 * `to`, checking permissions on `to`; all or nothing.
 */
export function moveParents(from: BlockNode, to: BlockNode, keep: (e: ChildEdge) => boolean): ChildEdge[] {
  const moving = from.parents.filter((e) => !keep(e));
  for (const e of moving) {
    if (e.parent === to) throw new BlockError('EINVAL', `Making '${to.nodeName}' a child of itself would create a cycle`);
    if (e.parent instanceof BlockNode && reaches(to, e.parent)) {
      throw new BlockError('EINVAL', `Making '${e.parent.nodeName}' a child of '${to.nodeName}' would create a cycle`);
    }
  }
  // Check against the users `to` keeps and against each other, before changing anything.
  const moved: ChildEdge[] = [];
  try {
    for (const e of moving) {
      checkPermissions(to, e);
      detach(e);
      e.child = to;
      to.parents.push(e);
      moved.push(e);
    }
    // Image locks follow the users: `to` may be refused by another process's locks.
    to.refreshPermissions();
  } catch (err) {
    for (const e of moved.reverse()) { detach(e); e.child = from; from.parents.push(e); }
    to.refreshPermissions();
    throw err;
  }
  from.refreshPermissions();
  return moved;
}

function detach(e: ChildEdge): void {
  const list = e.child.parents;
  const i = list.indexOf(e);
  if (i >= 0) list.splice(i, 1);
}

let filterCounter = 0;

/** QEMU-style generated node names for implicit filters when the user gives none. */
export function autoFilterName(graph: BlockGraph): string {
  let n: string;
  do n = `#block${String(900 + (filterCounter++ % 100)).padStart(3, '0')}${String(Math.floor(Math.random() * 100)).padStart(2, '0')}`;
  while (graph.nodes.has(n));
  return n;
}

export interface InsertedFilter {
  node: BlockNode;
  /** The filter's edge to the node below. */
  edge: ChildEdge;
}

/**
 * Puts a filter node (ops given) above `below`, taking over all of `below`'s
 * parents except `keep` ones, inside a drained section of `below`.
 */
export async function insertFilter(graph: BlockGraph, below: BlockNode, o: {
  name?: string; driver: Driver; role: string; ops: DriverOps; keep: (e: ChildEdge) => boolean; perm: Perm; shared: Perm;
}): Promise<InsertedFilter> {
  const name = o.name ?? autoFilterName(graph);
  if (graph.nodes.has(name)) throw new BlockError('EINVAL', `Duplicate nodes with node-name='${name}'`);
  const node = new BlockNode(name, o.driver, { driver: o.driver.name, 'node-name': name }, below.readOnly, o.name === undefined);
  const edge = graph.link(node, below, o.role, { perm: o.perm, shared: o.shared });
  node.setOps(o.ops);
  try {
    await below.drained(() => moveParents(below, node, (e) => e === edge || o.keep(e)));
  } catch (e) {
    await graph.unlink(node, edge);
    throw e;
  }
  graph.nodes.set(name, node);
  return { node, edge };
}

/**
 * Takes an inserted filter out again: its parents move to `to` (the node
 * below, or a mirror's target), inside a drained section of the filter.
 * `beforeMove` runs inside that section (e.g. to point the filter at `to`).
 */
export async function removeFilter(graph: BlockGraph, f: InsertedFilter, to: BlockNode, beforeMove?: () => void): Promise<void> {
  await f.node.drained(() => {
    beforeMove?.();
    moveParents(f.node, to, () => false);
  });
  if (graph.nodes.get(f.node.nodeName) === f.node) graph.nodes.delete(f.node.nodeName);
  await graph.unlink(f.node, f.edge);
}

/** A driver object for filters that jobs insert and the user cannot blockdev-add. */
export function internalFilterDriver(name: string): Driver {
  return {
    name,
    kind: 'filter',
    options: obj(`BlockdevOptions-${name}`, []),
    open() { return Promise.reject(new BlockError('EINVAL', `Driver '${name}' cannot be opened with blockdev-add`)); },
  };
}
