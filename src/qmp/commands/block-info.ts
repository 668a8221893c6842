/**
 * query-named-block-nodes and x-debug-query-block-graph: the graph as qsd
 * 7.2 describes it (BlockDeviceInfo, ImageInfo, XDbgBlockGraph).
 *
 * Filenames follow QEMU's bdrv_refresh_filename: a node has an "exact"
 * filename when it can be opened from a plain filename (a file's path,
 * "null-co://" for a null node without options, a format over such a file
 * when none of its own options matter); otherwise it is shown as
 * "json:{...}" with the options that matter ("strong" options) and its children.
 */
import { allocatedFileSize } from '../../blockdev/allocated-size.ts';
import { BlockNode } from '../../blockdev/node.ts';
import { isBlockExport } from '../../export/export.ts';
import type { BlockGraph } from '../../blockdev/graph.ts';
import type { ChildEdge, Parent } from '../../blockdev/edge.ts';
import { toQmpJson } from '../json-writer.ts';
import { qdictOrder } from '../../qapi/qdict-order.ts';
import type { TypeRef } from '../../qapi/types.ts';

function strongOptions(node: BlockNode): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  // QEMU's strong_runtime_opts, which each driver declares (Driver.strongOptions).
  // bs->options is a flat dictionary: an object-valued one (nbd's server) shows as dotted keys,
  // and a dotted name ('encrypt.key-secret') names a nested option.
  const put = (k: string, v: unknown) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) for (const [kk, vv] of Object.entries(v)) put(`${k}.${kk}`, vv);
    else if (v !== undefined) out[k] = v;
  };
  for (const k of node.driver.strongOptions ?? []) {
    const v = k.split('.').reduce<unknown>((o, part) => (o as Record<string, unknown> | undefined)?.[part], node.options);
    if (!Array.isArray(v)) { put(k, v); continue; }
    // A list (blkdebug's inject-error) is flat too ("inject-error.0.event"): flattened in the
    // order qdict_flatten inserts the keys, then copied out (append_strong_runtime_options) in
    // the order the flat dictionary lists them.
    const flat = new Map<string, unknown>();
    flattenInto(flat, k, v, node.driver.options.members.find((m) => m.name === k)?.type);
    for (const fk of qdictOrder([...flat.keys()])) out[fk] = flat.get(fk);
  }
  return out;
}

/** qdict_flatten of `v` under `key`: a struct's members (in schema order as QAPI's output visitor puts them) walked in hash order. */
export function flattenInto(out: Map<string, unknown>, key: string, v: unknown, type: TypeRef | undefined): void {
  if (Array.isArray(v)) {
    const element = type && typeof type === 'object' && type.kind === 'array' ? type.element : undefined;
    v.forEach((x, i) => flattenInto(out, `${key}.${i}`, x, element));
  } else if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const members = type && typeof type === 'object' && type.kind === 'object' ? type.members.map((m) => m.name) : [];
    const keys = [...members.filter((m) => m in o), ...Object.keys(o).filter((k) => !members.includes(k))];
    for (const k of qdictOrder(keys)) flattenInto(out, `${key}.${k}`, o[k], type && typeof type === 'object' && type.kind === 'object' ? type.members.find((m) => m.name === k)?.type : undefined);
  } else {
    out.set(key, v);
  }
}

/**
 * Whether the node's backing link is not the one its image header implies
 * (QEMU's bdrv_backing_overridden): then its filename has to spell the
 * backing out (or say "backing": null).
 */
function backingOverridden(node: BlockNode): boolean {
  const backing = node.child('backing');
  const auto = node.autoBacking;
  if (!backing) return auto !== undefined && ('node' in auto || auto.name !== '');
  if (!auto) return true;
  // A filter (a commit job's) shows its child's filename, so it overrides nothing by itself.
  let below = backing;
  while (below.isFilter && below.primaryChild) below = below.primaryChild;
  return 'node' in auto ? auto.node !== below : auto.name !== nodeFilename(backing);
}

/** The options that describe a node, children included (QEMU's full_open_options). */
function fullOptions(node: BlockNode): Record<string, unknown> {
  const out: Record<string, unknown> = { driver: node.driver.name, ...strongOptions(node) };
  const overridden = backingOverridden(node);
  const list = node.driver.childList;
  for (const e of node.children) {
    if (e.role === 'backing' && !overridden) continue;
    // A list of children (quorum's) is shown gap-less in edge order (bdrv_gather_child_options).
    if (list !== undefined && e.role.startsWith(`${list}.`)) ((out[list] ??= []) as unknown[]).push(fullOptions(e.child));
    else out[e.role] = fullOptions(e.child);
  }
  if (overridden && !node.child('backing')) out.backing = null;
  return out;
}

function exactFilename(node: BlockNode): string | undefined {
  // A protocol node opens from its filename alone unless another strong option is set (null-co's size).
  if (node.driver.kind === 'protocol') {
    if (node.driver.filenameIsExact) return node.ops.filename?.();
    return Object.keys(strongOptions(node)).some((k) => k !== 'filename') ? undefined : node.ops.filename?.();
  }
  const file = node.child('file');
  if (node.driver.exactFilename) {
    const below = node.primaryChild && exactFilename(node.primaryChild);
    return below === undefined ? undefined : node.driver.exactFilename(node.options, below);
  }
  if (node.isFilter) return file && Object.keys(strongOptions(node)).length === 0 ? exactFilename(file) : undefined;
  if (Object.keys(strongOptions(node)).length > 0 || !file) return undefined;
  if (node.child('data-file') || backingOverridden(node)) return undefined;
  return exactFilename(file);
}

/** The filename query-named-block-nodes shows for a node. */
export function nodeFilename(node: BlockNode): string {
  // A filter shows its child's filename, unless options of its own matter (throttle's group).
  if (node.isFilter && node.primaryChild && !node.driver.exactFilename && Object.keys(strongOptions(node)).length === 0) return nodeFilename(node.primaryChild);
  return exactFilename(node) ?? `json:${toQmpJson(fullOptions(node))}`;
}

/** Whether QEMU's bdrv_get_info succeeds for the node (it then reports dirty-flag). */
function hasGetInfo(node: BlockNode, info: Record<string, unknown>): boolean {
  if (info['dirty-flag'] !== undefined || node.driver.getInfo === 'own') return true;
  const file = node.child('file') ?? node.child('image');
  return node.driver.getInfo === 'file' && file !== undefined && hasGetInfo(file, driverInfo(file));
}

function driverInfo(node: BlockNode): Record<string, unknown> {
  try {
    return node.ops.info?.() ?? {};
  } catch {
    return {};
  }
}

function safeLength(node: BlockNode): number {
  try {
    return node.length();
  } catch {
    return 0;
  }
}

/** QEMU's ImageInfo for a node; with `flat` false, the backing chain nests as backing-image. */
export function imageInfo(node: BlockNode, flat: boolean): Record<string, unknown> {
  const extra = driverInfo(node);
  const info: Record<string, unknown> = {
    'virtual-size': safeLength(node),
    filename: nodeFilename(node),
    format: node.driver.name,
  };
  const actual = allocatedFileSize(node);
  if (actual !== undefined) info['actual-size'] = actual;
  if (hasGetInfo(node, extra)) info['dirty-flag'] = false;
  for (const [k, v] of Object.entries(extra)) if (k !== 'actual-size' && v !== undefined) info[k] = v;
  if (typeof extra['backing-filename'] === 'string') {
    const full = fullBackingFilename(node, extra['backing-filename']);
    if (full !== undefined) info['full-backing-filename'] = full;
  }
  const below = filteredOrCow(node);
  if (!flat && below) info['backing-image'] = imageInfo(below, false);
  return info;
}

/** The child whose image shows as backing-image (QEMU's bdrv_filter_or_cow_bs): a filter's child, else the backing node. */
function filteredOrCow(node: BlockNode): BlockNode | undefined {
  return node.isFilter ? node.primaryChild : node.child('backing');
}

/**
 * The header's backing name made absolute against the directory of the
 * image's file (QEMU's bdrv_get_full_backing_filename, path_combine: no
 * normalisation); none when that directory is unknown (a json: filename).
 */
function fullBackingFilename(node: BlockNode, name: string): string | undefined {
  if (name.startsWith('/') || /^[A-Za-z0-9+.-]+:/.test(name)) return name;
  let base: BlockNode | undefined = node;
  while (base && base.driver.kind !== 'protocol') base = base.primaryChild;
  const dir = base ? exactFilename(base) : undefined;
  if (dir === undefined) return undefined;
  return dir.slice(0, dir.lastIndexOf('/') + 1) + name;
}

/** How many backing-image levels the non-flat image info nests (qsd counts them as it nests them: 0 when flat). */
function backingDepth(node: BlockNode, flat: boolean): number {
  if (flat) return 0;
  let depth = 0;
  for (let n = filteredOrCow(node); n; n = filteredOrCow(n)) depth++;
  return depth;
}

/** Adds members to a node's BlockDeviceInfo (dirty-bitmaps: src/qmp/commands/bitmaps.ts). */
export const nodeInfoHooks: ((node: BlockNode, info: Record<string, unknown>) => void)[] = [];

/** One BlockDeviceInfo. */
export function blockDeviceInfo(node: BlockNode, flat: boolean): Record<string, unknown> {
  const image = imageInfo(node, flat);
  const cache = node.options.cache ?? {};
  const out: Record<string, unknown> = {
    file: image.filename,
    'node-name': node.nodeName,
    ro: node.readOnly,
    drv: node.driver.name,
    backing_file_depth: backingDepth(node, flat),
    encrypted: image.encrypted === true,
    detect_zeroes: node.options['detect-zeroes'] ?? 'off',
    bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0,
    image,
    cache: { writeback: true, direct: cache.direct === true, 'no-flush': cache['no-flush'] === true },
    write_threshold: node.writeThreshold,
  };
  // The live backing node's filename (QEMU's bdrv_cow_bs), whatever the header says.
  const backing = node.isFilter ? undefined : node.child('backing');
  if (backing) out.backing_file = nodeFilename(backing);
  for (const hook of nodeInfoHooks) hook(node, out);
  return out;
}

/** query-named-block-nodes: the node named last first, as qsd lists them. */
export function queryNamedBlockNodes(graph: BlockGraph, flat: boolean): Record<string, unknown>[] {
  return [...graph.nodes.values()].sort((a, b) => b.nameSeq - a.nameSeq).map((n) => blockDeviceInfo(n, flat));
}

const permList = (p: { read: boolean; write: boolean; resize: boolean }, shared: boolean): string[] => {
  const out: string[] = [];
  if (p.resize) out.push('resize');
  if (shared) out.push('write-unchanged');
  if (p.write) out.push('write');
  if (p.read) out.push('consistent-read');
  return out;
};

/**
 * x-debug-query-block-graph: users that are not nodes (exports, jobs) first,
 * then nodes in creation order; ids are handed out as nodes are first seen,
 * and both lists come out newest first, as in qsd.
 */
export function debugBlockGraph(graph: BlockGraph): { nodes: Record<string, unknown>[]; edges: Record<string, unknown>[] } {
  const ids = new Map<unknown, number>();
  const nodes: Record<string, unknown>[] = [];
  const edges: Record<string, unknown>[] = [];
  const idOf = (x: unknown) => {
    let id = ids.get(x);
    if (id === undefined) ids.set(x, (id = ids.size + 1));
    return id;
  };
  const addEdge = (e: ChildEdge) => {
    edges.push({ parent: idOf(e.parent), child: idOf(e.child), name: e.role, perm: permList(e.perm, false), 'shared-perm': permList(e.shared, true) });
  };
  const users = new Map<Parent, ChildEdge[]>();
  for (const n of graph.nodes.values()) {
    for (const e of n.parents) {
      if (e.parent instanceof BlockNode) continue;
      if (!users.has(e.parent)) users.set(e.parent, []);
      users.get(e.parent)!.push(e);
    }
  }
  for (const [user, list] of users) {
    const u = user as { id?: unknown; describe(): string };
    const isExport = isBlockExport(user);
    nodes.push({ id: idOf(user), type: isExport ? 'block-backend' : 'block-job', name: isExport ? '' : String(u.id ?? u.describe()) });
    for (const e of list) addEdge(e);
  }
  for (const n of graph.nodes.values()) {
    nodes.push({ id: idOf(n), type: 'block-driver', name: n.nodeName });
    for (const e of n.children) addEdge(e);
  }
  return { nodes: nodes.reverse(), edges: edges.reverse() };
}
