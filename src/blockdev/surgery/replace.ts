/**
 * Graph surgery for live block operations: moving every user of a node to
 * another node (external snapshot, commit pivot), and changing a node's
 * backing link (stream, intermediate commit). Both happen while the nodes
 * involved are drained, and both refuse to make a cycle.
 *
 * Why a gate: a user that is not a node (an NBD export) calls the node it
 * points at directly, so while that node is drained its new requests wait
 * inside that node — and would run there once the drain ends, after the
 * user has moved on. So the users are first moved (without a drain, nothing
 * changes for them) onto a transparent gate node that forwards to the old
 * node; the gate is drained, the old node waits until idle, and the users
 * move on to the new node. Requests that queued at the gate are then
 * forwarded to the new node, in the order they arrived, before any later one.
 *
 * Format drivers hold their children (qcow2 its backing node); a node whose
 * children change is reopened in place: its driver state is closed and
 * opened again on the node's current children (what QEMU's reopen with a new
 * 'backing' does). Filters follow their edges and need nothing.
 */
import { BlockError } from '../../util/errors.ts';
import { BlockNode } from '../node.ts';
import { attachEdge, checkPermissions, cumulative, detachEdge, type ChildEdge } from '../edge.ts';
import type { BlockGraph } from '../graph.ts';
import type { Driver, DriverOps } from '../driver.ts';
import { obj } from '../../qapi/types.ts';
import { ancestry, reaches, refuseCycle } from './walk.ts';

/** Users of `from` that replaceNode would move to `to`: all but those at or below `to` (the chain itself). */
export function movableEdges(from: BlockNode, to: BlockNode): ChildEdge[] {
  return from.parents.filter((e) => !(e.parent instanceof BlockNode && reaches(to, e.parent)));
}

const gateDriver: Driver = { name: 'replace-gate', kind: 'filter', options: obj('q_gate', []), open: async () => ({}) };

/** A node outside the graph that forwards every request to `target()`. */
function makeGate(target: () => BlockNode): BlockNode {
  const gate = new BlockNode(`#gate${Math.floor(Math.random() * 1e6)}`, gateDriver, { driver: gateDriver.name }, false, true);
  const ops: DriverOps = {
    length: () => target().length(),
    limits: { alignment: 1, canFua: true, canZero: true, canTrim: true },
    read: (o, b) => target().read(o, b),
    write: (o, b, f) => target().write(o, b, f),
    writeZeroes: (o, l, f) => target().writeZeroes(o, l, f),
    discard: (o, l) => target().discard(o, l),
    flush: () => target().flush(),
    blockStatus: (o, l, f) => target().blockStatus(o, l, f),
  };
  gate.setOps(ops);
  return gate;
}

function moveEdge(e: ChildEdge, to: BlockNode, check: boolean): void {
  detachEdge(e);
  e.child = to;
  if (check) {
    attachEdge(e);
  } else {
    to.parents.push(e);
    to.refreshPermissions();
  }
}


/**
 * Moves every user of `from` (nodes and exports) to `to`, except the edges
 * at or below `to` (an overlay's backing link to `from`). Permissions are
 * checked on `to` (QEMU's conflict messages); on failure nothing moved.
 */
export async function replaceNode(
  graph: BlockGraph, from: BlockNode, to: BlockNode, skip?: (e: ChildEdge) => boolean,
  hooks: {
    /** Runs once `from` is idle and its users are held, just before they move (a commit's last copy). */
    beforeSwitch?: () => Promise<void>;
    /** Runs once they have moved, still held, with `from` unused by them (a snapshot makes it read-only). */
    afterSwitch?: () => Promise<void>;
  } = {},
): Promise<void> {
  if (from === to) throw new BlockError('EINVAL', `Cannot replace node '${from.nodeName}' by itself`);
  const edges = movableEdges(from, to).filter((e) => !skip?.(e));
  if (edges.length === 0) return;
  if (to.readOnly && edges.some((e) => e.perm.write)) {
    throw new BlockError('EPERM', `Read-only block node '${to.nodeName}' cannot support read-write users`);
  }
  let target = from;
  const gate = makeGate(() => target);
  for (const e of edges) moveEdge(e, gate, false);
  let link: ChildEdge | undefined = graph.link(gate, from, 'file', cumulative(edges));
  try {
    await gate.drained(async () => {
      // Everything already sent to `from` finishes first. (Nothing above `from` but the gate has users yet.)
      await from.drained(() => undefined);
      await hooks.beforeSwitch?.();
      for (const e of edges) checkPermissions(to, e);
      // Image locks for the users about to arrive, taken before anything moves (a conflict leaves all in place).
      to.refreshPermissions(edges);
      // Node users are held at their own entry: they move now (and reopen on their new child).
      const nodeEdges = edges.filter((e) => e.parent instanceof BlockNode);
      for (const e of nodeEdges) moveEdge(e, to, false);
      for (const p of new Set(nodeEdges.map((e) => e.parent as BlockNode))) await reopenOnChildren(graph, p);
      const l = link!;
      link = undefined;
      // Not closed yet when it is implicit and now unused: the users held at the gate (exports)
      // have not moved, and closing it would close what lies below it (a copy-on-read filter
      // taken out from over a blockdev-snapshot-sync overlay closed the overlay under its export).
      await graph.unlink(gate, l, true);
      await hooks.afterSwitch?.();
      // Other users (exports) call the node their edge points at: they move last, with no await
      // before the gate opens, so what waited at the gate reaches `to` before anything newer.
      for (const e of edges) if (!(e.parent instanceof BlockNode)) moveEdge(e, to, false);
      target = to;
    });
    await graph.closeIfUnused(from);
  } catch (err) {
    if (link) {
      // Give the users back to `from`.
      for (const e of [...gate.parents]) moveEdge(e, from, false);
      await graph.unlink(gate, link);
    }
    throw err;
  }
}

/**
 * Moves every user of `from` (except those `keep` says stay) onto `to` at
 * once, checking permissions on `to`; all or nothing. For a caller that
 * already holds `from` drained (a mirror pivoting while its final drain is
 * held), where replaceNode's gate would wait on that very drain.
 */
export function moveUsers(from: BlockNode, to: BlockNode, keep: (e: ChildEdge) => boolean): ChildEdge[] {
  const moving = from.parents.filter((e) => !keep(e));
  for (const e of moving) if (e.parent instanceof BlockNode) refuseCycle(e.parent, to, e.role);
  // Check against the users `to` keeps and against each other, before changing anything.
  const moved: ChildEdge[] = [];
  try {
    for (const e of moving) {
      checkPermissions(to, e);
      removeUser(e);
      e.child = to;
      to.parents.push(e);
      moved.push(e);
    }
    // Image locks follow the users: `to` may be refused by another process's locks.
    to.refreshPermissions();
  } catch (err) {
    for (const e of moved.reverse()) { removeUser(e); e.child = from; from.parents.push(e); }
    to.refreshPermissions();
    throw err;
  }
  from.refreshPermissions();
  return moved;
}

function removeUser(e: ChildEdge): void {
  const list = e.child.parents;
  const i = list.indexOf(e);
  if (i >= 0) list.splice(i, 1);
}

/**
 * Changes the backing link of `node` to `backing` (undefined: none) and, for
 * a format that records one (Driver.setBackingFile: qcow2), the backing file
 * name in its image (`backingFile`/`backingFormat`; undefined: none). The node is drained meanwhile; layers that lose their
 * last user and were opened implicitly are closed.
 */
export async function setBacking(
  graph: BlockGraph, node: BlockNode, backing: BlockNode | undefined,
  header?: { backingFile?: string; backingFormat?: string },
): Promise<void> {
  if (backing) refuseCycle(node, backing, 'backing');
  await node.drained(async () => {
    const old = node.children.find((e) => e.role === 'backing');
    if (old?.child === backing && !header) return;
    await node.ops.close?.();
    try {
      if (header && node.driver.setBackingFile && !node.readOnly) {
        await node.driver.setBackingFile(node, header.backingFile, header.backingFormat);
        node.autoBacking = header.backingFile === undefined ? undefined : { name: header.backingFile };
      }
      if (old?.child !== backing) {
        if (backing) {
          const perm = old ? { perm: { ...old.perm }, shared: { ...old.shared }, cow: old.cow } : { perm: { read: true, write: false, resize: false }, shared: { read: true, write: true, resize: true }, cow: node.driver.kind === 'format' };
          graph.link(node, backing, 'backing', perm);
        }
        if (old) await graph.unlink(node, old);
      }
    } finally {
      await graph.openOnChildren(node);
    }
  });
}

/** Reopens a node's driver on its current children (nodes whose children moved). */
export async function reopenOnChildren(graph: BlockGraph, node: BlockNode): Promise<void> {
  if (node.driver.kind !== 'format') return;
  await node.ops.close?.();
  await graph.openOnChildren(node);
}

/**
 * Runs `fn` while every user that is not a node (exports) of `node` and of
 * the nodes above it is held at a gate and nothing is in flight anywhere
 * above `node`. A plain drain of `node` can deadlock when a request in
 * flight above it still has to pass through it (an overlay's copy-on-write
 * read of its backing node); this cannot, because the holding happens above
 * the nodes and in-flight requests are let through before `fn` runs.
 */
export async function withUsersHeld<T>(node: BlockNode, fn: () => Promise<T>): Promise<T> {
  const nodes = ancestry(node);
  const held: { edge: ChildEdge; home: BlockNode; gate: BlockNode }[] = [];
  const gates = new Map<BlockNode, BlockNode>();
  for (const n of nodes) {
    for (const e of [...n.parents]) {
      if (e.parent instanceof BlockNode) continue;
      let gate = gates.get(n);
      if (!gate) { gate = makeGate(() => n); gates.set(n, gate); }
      moveEdge(e, gate, false);
      held.push({ edge: e, home: n, gate });
    }
  }
  const drainAll = async (list: BlockNode[], inner: () => Promise<T>): Promise<T> => {
    const [first, ...rest] = list;
    if (!first) return inner();
    return first.drained(() => drainAll(rest, inner));
  };
  try {
    return await drainAll([...gates.values()], async () => {
      // Let what is in flight finish, from the top down (nothing new arrives; a lower node is
      // drained only once nothing above it still has to pass through it).
      for (const n of [...nodes].reverse()) await n.drained(() => undefined);
      try {
        return await fn();
      } finally {
        for (const h of held) moveEdge(h.edge, h.home, false);
      }
    });
  } catch (e) {
    for (const h of held) if (h.edge.child === h.gate) moveEdge(h.edge, h.home, false);
    throw e;
  }
}
