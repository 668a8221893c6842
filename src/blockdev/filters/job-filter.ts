/**
 * The filter node a commit job puts above the node it works on, as qsd
 * does: 'commit_top' above the top of an intermediate commit, 'mirror_top'
 * above the device of an active commit. It only passes requests on (a
 * filter without ops), but it is a node of the graph for the job's
 * lifetime: query-named-block-nodes lists it, under the job's
 * filter-node-name or a generated name, and the users of the node below
 * (the overlay's backing link, exports) are its users meanwhile. Users move
 * on and off through replaceNode's gate, so no request is lost or reordered.
 */
import { BlockError } from '../../util/errors.ts';
import { BlockNode } from '../node.ts';
import { ALL_PERM, type ChildEdge } from '../edge.ts';
import { replaceNode } from '../surgery/replace.ts';
import { autoFilterName, internalFilterDriver } from '../surgery/filter.ts';
import type { BlockGraph } from '../graph.ts';
import type { Driver } from '../driver.ts';

const drivers = new Map<string, Driver>();
const driverNamed = (name: string) => drivers.get(name) ?? drivers.set(name, internalFilterDriver(name)).get(name)!;

export interface JobFilterOptions {
  driver: 'commit_top' | 'mirror_top';
  /** filter-node-name; a generated '#block…' name without it. */
  name?: string;
  /** qsd opens commit_top without read-write, mirror_top with it. */
  readOnly: boolean;
  /** Edges of `below` that stay where they are (the job's own). */
  keep: (e: ChildEdge) => boolean;
}

/** Refuses a filter name already taken (qsd's text), before anything changes. */
export function checkFilterName(graph: BlockGraph, name: string | undefined): void {
  if (name !== undefined && graph.nodes.has(name)) throw new BlockError('EINVAL', `Duplicate nodes with node-name='${name}'`);
}

/** Puts the filter above `below`; every user of `below` but the kept ones moves onto it. */
export async function insertJobFilter(graph: BlockGraph, below: BlockNode, o: JobFilterOptions): Promise<BlockNode> {
  checkFilterName(graph, o.name);
  const name = o.name ?? autoFilterName(graph);
  const driver = driverNamed(o.driver);
  const filter = new BlockNode(name, driver, { driver: driver.name, 'node-name': name }, o.readOnly, o.name === undefined);
  const edge = graph.link(filter, below, 'backing', { perm: { read: true, write: !o.readOnly, resize: false }, shared: ALL_PERM });
  filter.setOps({});
  try {
    await replaceNode(graph, below, filter, o.keep);
  } catch (e) {
    await graph.unlink(filter, edge);
    throw e;
  }
  graph.nodes.set(name, filter);
  return filter;
}

/**
 * Takes the filter out: its users move to `to` (the node below, or the base
 * an active commit pivots to; `beforeSwitch` runs while they are held) and
 * the filter leaves the graph.
 */
export async function removeJobFilter(graph: BlockGraph, filter: BlockNode, to: BlockNode, beforeSwitch?: () => Promise<void>): Promise<void> {
  // Without users there is nothing to hold: the last work runs as it is.
  if (filter.parents.length === 0) await beforeSwitch?.();
  else await replaceNode(graph, filter, to, undefined, { beforeSwitch });
  if (graph.nodes.get(filter.nodeName) === filter) graph.nodes.delete(filter.nodeName);
  for (const e of [...filter.children]) await graph.unlink(filter, e);
}
