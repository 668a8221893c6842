/**
 * What an iothread takes over when it serves an export: the exported node
 * and everything below it. Only a subtree whose drivers keep no state of
 * their own in memory can move (WORKER_DRIVERS): the iothread opens its
 * own copy of it over the same files, and the main loop's copy, idle while
 * the iothread serves the export, is then still right when it comes back,
 * with nothing to write back or reload. (A qcow2 node caches its tables and
 * allocates clusters: two copies of it would disagree.)
 */
import type { BlockNode } from '../blockdev/node.ts';
import type { BlockExport } from '../export/export.ts';
import { writesAreWatched } from '../blockdev/bitmaps/registry.ts';

/** Drivers whose nodes an iothread can open a copy of: every request goes straight to the file (or nowhere). */
export const WORKER_DRIVERS: ReadonlySet<string> = new Set(['file', 'host_device', 'raw', 'null-co', 'null-aio']);

/** The export's nodes, root first, children in edge order: the same walk on both sides names the same nodes. */
export function subtreeNodes(root: BlockNode): BlockNode[] {
  const out: BlockNode[] = [];
  const walk = (n: BlockNode) => {
    out.push(n);
    for (const e of n.children) walk(e.child);
  };
  walk(root);
  return out;
}

/**
 * Why the export's nodes cannot move to an iothread now, or undefined if
 * they can: a driver that keeps state, another user of a node (a second
 * export, a job, a parent node), or something that must see every write
 * (a dirty bitmap, a job's observer, a write threshold).
 */
export function moveBlocker(exp: BlockExport): string | undefined {
  const root = exp.node;
  for (const n of subtreeNodes(root)) {
    const name = `node '${n.nodeName}'`;
    if (!WORKER_DRIVERS.has(n.driver.name)) return `${name} (driver ${n.driver.name}) keeps state in memory; only ${[...WORKER_DRIVERS].join(', ')} nodes move to an iothread`;
    if (n.isClosed) return `${name} is closed`;
    // The root's one user is the export; a node below it has its parent in the subtree only.
    if (n.parents.length !== 1 || (n === root && n.parents[0]!.parent !== exp)) return `${name} has other users`;
    if (writesAreWatched(n)) return `${name} has a dirty bitmap or a job watching its writes`;
    if (n.writeThreshold > 0) return `${name} has a write threshold`;
  }
  return undefined;
}

/**
 * blockdev options that open a copy of the subtree in one go: each node's
 * options with its children inline (by their current edges, not the names
 * given at blockdev-add), its current read-only state, and no image locks
 * (the main loop's copy holds them; a second lock from this process would
 * conflict with its own).
 */
export function inlineOptions(n: BlockNode): Record<string, unknown> {
  const o: Record<string, unknown> = { ...n.options, 'read-only': n.readOnly };
  delete o['auto-read-only'];
  if (n.implicit) delete o['node-name'];
  for (const e of n.children) o[e.role] = inlineOptions(e.child);
  if (n.driver.name === 'file' || n.driver.name === 'host_device') o.locking = 'off';
  return o;
}
