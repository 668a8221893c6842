/**
 * blockdev-reopen: new options for a list of nodes, applied all together or
 * not at all (QEMU's reopen queue: prepare every node, then commit all or
 * abort all).
 *
 * As in QEMU, the options given are complete: an omitted option returns to
 * its default (so leaving out read-only makes a node read-write). What may
 * change:
 * - on any node: read-only, detect-zeroes, discard, cache.no-flush;
 * - driver options and cache.direct: only through the driver's
 *   prepareReopen() hook (DriverOps); without it, qsd's "Cannot change the
 *   option 'x'" / "Option 'x' cannot be reset to its default value";
 * - read-only → read-write on a protocol node also needs the hook (the file
 *   must be reopened for writing), except for drivers whose nodes hold nothing
 *   (Driver.reopenWithoutHook: null-co);
 * - children: a child reference must name the current child (blockd does
 *   not swap children in a reopen).
 *
 * Permissions are rechecked on the final state: a node becoming read-only
 * must have no writing user ("Read-only block node 'x' cannot support
 * read-write users"); edges of nodes changing mode gain or drop write.
 */
import { isDeepStrictEqual } from 'node:util';
import { checkPermissions, type ChildEdge } from '../../blockdev/edge.ts';
import type { BlockGraph } from '../../blockdev/graph.ts';
import { childPermission } from '../../blockdev/perm.ts';
import type { BlockNode } from '../../blockdev/node.ts';
import type { Perm, ReopenTransaction } from '../../blockdev/driver.ts';
import { detectZeroesMode } from '../../blockdev/detect-zeroes.ts';
import { genericError } from '../errors.ts';
import { qdictOrder } from '../../qapi/qdict-order.ts';
import type { TypeRef } from '../../qapi/types.ts';
import { flattenInto } from './block-info.ts';

const CHILD_ROLES = new Set(['file', 'backing', 'data-file', 'image']);

interface Plan {
  node: BlockNode;
  options: Record<string, unknown>;
  readOnly: boolean;
  hook?: ReopenTransaction;
}

export async function reopenNodes(graph: BlockGraph, list: Record<string, unknown>[]): Promise<void> {
  const byNode = new Map<BlockNode, Plan>();
  for (const options of list) {
    const name = options['node-name'];
    if (typeof name !== 'string') throw genericError('node-name not specified');
    const node = graph.nodes.get(name);
    if (!node) throw genericError(`Failed to find node with node-name='${name}'`);
    byNode.set(node, { node, options, readOnly: options['read-only'] === true });
  }
  // QEMU's reopen queue takes in the children a node opened inline (its 'file' and 'data-file'
  // without a read-only option of their own): they follow the node's read-only flag, their other
  // options unchanged. (A backing node stays read-only whatever its parent does.) They are not
  // drained themselves: their only user is drained, and its own reopen (prepared first: a
  // qcow2 writes its metadata back) still writes to them.
  const drainedNodes = [...byNode.keys()];
  for (const p of byNode.values()) {
    for (const e of p.node.children) {
      const c = e.child;
      if ((e.role !== 'file' && e.role !== 'data-file') || !c.readOnlyInherited || c.parents.length !== 1 || byNode.has(c)) continue;
      byNode.set(c, { node: c, options: { ...c.options }, readOnly: p.readOnly });
    }
  }
  const plans = [...byNode.values()];
  for (const p of plans) checkOptions(p);

  await drainedAll(drainedNodes, async () => {
    const revertPerms = applyPermissions(plans);
    try {
      for (const p of plans) {
        const needsHook = p.node.driver.kind === 'protocol' && !p.node.driver.reopenWithoutHook && p.node.readOnly && !p.readOnly;
        const direct = p.node.options.cache?.direct === true;
        const newDirect = (p.options.cache as { direct?: boolean } | undefined)?.direct === true;
        if (p.node.ops.prepareReopen) {
          p.hook = await p.node.ops.prepareReopen({ ...p.options }, p.readOnly);
        } else if (needsHook || direct !== newDirect) {
          throw genericError(`Block format '${p.node.driver.name}' used by node '${p.node.nodeName}' does not support reopening files`);
        }
      }
    } catch (e) {
      revertPerms();
      for (const p of plans) if (p.hook) await p.hook.abort();
      throw e;
    }
    for (const p of plans) {
      p.hook?.commit();
      p.node.readOnly = p.readOnly;
      const opts = p.node.options as Record<string, unknown>;
      for (const k of Object.keys(opts)) if (k !== 'node-name') delete opts[k];
      Object.assign(opts, p.options, { 'node-name': p.node.nodeName });
      p.node.optionsChanged();
    }
  });
}

/** Refuses what cannot change without the driver's help. */
function checkOptions(p: Plan): void {
  const { node, options } = p;
  if (options.driver !== node.driver.name) throw genericError("Cannot change the option 'driver'");
  for (const m of node.driver.options.members) {
    const neu = options[m.name];
    const old = node.options[m.name];
    if (CHILD_ROLES.has(m.name)) {
      const child = node.child(m.name);
      if (neu === undefined || neu === null) {
        if (child && m.name !== 'backing') throw genericError(`Cannot change the option '${m.name}'`);
        continue;
      }
      if (typeof neu === 'string' ? neu !== child?.nodeName : !isDeepStrictEqual(neu, old)) {
        throw genericError(`Cannot change the option '${m.name}'`);
      }
      continue;
    }
    if (isDeepStrictEqual(neu, old) || node.ops.prepareReopen) continue;
    if (Array.isArray(old) || Array.isArray(neu)) checkFlat(m.name, old, neu, m.type);
    if (neu === undefined) throw genericError(`Option '${m.name}' cannot be reset to its default value`);
    throw genericError(`Cannot change the option '${m.name}'`);
  }
  if ((options['force-share'] === true) !== (node.options['force-share'] === true)) {
    throw genericError("Cannot change the option 'force-share'");
  }
  try {
    detectZeroesMode(options);
  } catch (e) {
    throw genericError((e as Error).message);
  }
}

/**
 * A list option (blkdebug's inject-error) as QEMU compares it: key by flat
 * key ("inject-error.0.errno"), first the old keys the new options lack,
 * then the new keys whose value differs, each in the flat dictionary's order.
 */
function checkFlat(name: string, old: unknown, neu: unknown, type: TypeRef): void {
  const flat = (v: unknown): Map<string, unknown> => {
    const out = new Map<string, unknown>();
    if (v !== undefined) flattenInto(out, name, v, type);
    return out;
  };
  const a = flat(old);
  const b = flat(neu);
  // bs->options is a copy (qdict_clone_shallow) of the flattened options: its keys went in in the
  // order the flattened dictionary lists them, and the check walks the copy.
  const walk = (m: Map<string, unknown>) => qdictOrder(qdictOrder([...m.keys()]));
  for (const k of walk(a)) if (!b.has(k)) throw genericError(`Option '${k}' cannot be reset to its default value`);
  for (const k of walk(b)) if (!isDeepStrictEqual(a.get(k), b.get(k))) throw genericError(`Cannot change the option '${k}'`);
}

/** The write and resize bits of an edge as the graph gives them at open (perm.ts's one rule) for a parent in the given mode. */
function defaultWrite(parent: BlockNode, role: string, readOnly: boolean): { perm: Partial<Perm>; shared: Partial<Perm> } {
  const { perm, shared } = childPermission(parent.driver, role, readOnly);
  return { perm: { write: perm.write, resize: perm.resize }, shared: { write: shared.write, resize: shared.resize } };
}

/** Moves edges of nodes changing mode to their new permissions and checks the result; returns the undo. */
function applyPermissions(plans: Plan[]): () => void {
  const saved: { edge: ChildEdge; perm: Perm; shared: Perm }[] = [];
  // Image locks follow the edges both ways (a conflict with another process refuses the reopen).
  const refresh = () => { for (const n of new Set(saved.map((s) => s.edge.child))) n.refreshPermissions(); };
  const undo = () => {
    for (const s of saved.reverse()) { s.edge.perm = s.perm; s.edge.shared = s.shared; }
    refresh();
  };
  const finalRO = new Map(plans.map((p) => [p.node, p.readOnly]));
  const isRO = (n: BlockNode) => finalRO.get(n) ?? n.readOnly;
  try {
    for (const p of plans) {
      if (p.readOnly === p.node.readOnly) continue;
      for (const e of p.node.children) {
        const before = defaultWrite(p.node, e.role, p.node.readOnly);
        // Only edges still at their defaults follow the mode (drivers may have asked for less).
        if (e.perm.write !== before.perm.write) continue;
        const after = defaultWrite(p.node, e.role, p.readOnly);
        saved.push({ edge: e, perm: { ...e.perm }, shared: { ...e.shared } });
        e.perm = { ...e.perm, ...after.perm };
        if (!e.passThrough && !e.cow) e.shared = { ...e.shared, ...after.shared };
      }
    }
    const touched = new Set<BlockNode>([...plans.map((p) => p.node), ...saved.map((s) => s.edge.child)]);
    for (const n of touched) {
      if (isRO(n) && n.parents.some((e) => e.perm.write)) {
        throw genericError(`Read-only block node '${n.nodeName}' cannot support read-write users`);
      }
    }
    for (const s of saved) checkPermissions(s.edge.child, s.edge, s.edge);
    refresh();
  } catch (e) {
    undo();
    throw e;
  }
  return undo;
}

async function drainedAll(nodes: BlockNode[], fn: () => Promise<void>): Promise<void> {
  const [first, ...rest] = nodes;
  if (!first) return fn();
  await first.drained(() => drainedAll(rest, fn));
}
