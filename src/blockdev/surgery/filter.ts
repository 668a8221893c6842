/**
 * Inserting a filter node above a node and taking it out again: the
 * filters jobs put in for their lifetime (mirror_top, commit_top,
 * copy-before-write for backup; stream's copy-on-read is a blockdev-add'ed
 * node that goes in with replaceNode and comes out here).
 *
 * The users of the node below move onto the filter, and back (or on to
 * another node) at the end, in one of two ways:
 * - 'gate': through replaceNode's gate (replace.ts), for a caller that holds
 *   nothing drained; no request is lost or reordered, and a `beforeSwitch`
 *   step can run while the users are held (an active commit's last copy);
 * - 'drain': at once inside a drained section of the node they leave
 *   (moveUsers), for a caller whose own drain of the node below is still
 *   held (a mirror's final sync), which a gate's drain would wait on.
 *   Requests queued at the filter's entry meanwhile still pass through its
 *   ops, which forward to wherever the filter points by then.
 */
import { BlockError } from '../../util/errors.ts';
import { BlockNode } from '../node.ts';
import type { ChildEdge } from '../edge.ts';
import type { BlockGraph } from '../graph.ts';
import type { Driver, DriverOps, Perm } from '../driver.ts';
import { moveUsers, replaceNode } from './replace.ts';
import { generateNodeName } from './node-names.ts';

export type UserMove = 'gate' | 'drain';

export interface FilterSpec {
  /** The user's filter-node-name; a generated '#block…' name without it (the node is implicit then). */
  name?: string;
  driver: Driver;
  /** The filter's role over the node below. */
  role: 'file' | 'backing';
  ops: DriverOps;
  readOnly: boolean;
  perm: Perm;
  shared: Perm;
  /** Users of the node below that stay where they are (the job's own edges). */
  keep: (e: ChildEdge) => boolean;
}

/** Refuses a filter name already taken (qsd's text), before anything changes. */
export function checkFilterName(graph: BlockGraph, name: string | undefined): void {
  if (name !== undefined && graph.nodes.has(name)) throw new BlockError('EINVAL', `Duplicate nodes with node-name='${name}'`);
}

/** Puts a filter above `below`; every user of `below` but the kept ones moves onto it. */
export async function insertFilter(graph: BlockGraph, below: BlockNode, spec: FilterSpec, how: UserMove): Promise<BlockNode> {
  checkFilterName(graph, spec.name);
  const name = spec.name ?? generateNodeName((n) => graph.nodes.has(n));
  const filter = new BlockNode(name, spec.driver, { driver: spec.driver.name, 'node-name': name }, spec.readOnly, spec.name === undefined);
  const edge = graph.link(filter, below, spec.role, { perm: spec.perm, shared: spec.shared });
  filter.setOps(spec.ops);
  try {
    const keep = (e: ChildEdge) => e === edge || spec.keep(e);
    if (how === 'gate') await replaceNode(graph, below, filter, keep);
    else await below.drained(() => moveUsers(below, filter, keep));
  } catch (e) {
    await graph.unlink(filter, edge);
    throw e;
  }
  graph.nodes.set(name, filter);
  return filter;
}

/**
 * Takes a filter out: its users move to `to` (the node below, or the node
 * a job pivots to; with 'gate', `beforeSwitch` runs while they are held)
 * and the filter leaves the graph.
 */
export async function removeFilter(
  graph: BlockGraph, filter: BlockNode, to: BlockNode, how: UserMove, beforeSwitch?: () => Promise<void>,
): Promise<void> {
  if (how === 'drain') {
    await filter.drained(() => moveUsers(filter, to, () => false));
  } else if (filter.parents.length === 0) {
    // Without users there is nothing to hold: the last work runs as it is.
    await beforeSwitch?.();
  } else {
    await replaceNode(graph, filter, to, undefined, { beforeSwitch });
  }
  if (graph.nodes.get(filter.nodeName) === filter) graph.nodes.delete(filter.nodeName);
  for (const e of [...filter.children]) await graph.unlink(filter, e);
}
