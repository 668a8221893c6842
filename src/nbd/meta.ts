/**
 * Metadata contexts (NBD_OPT_{LIST,SET}_META_CONTEXT, NBD_CMD_BLOCK_STATUS).
 *
 * A context is pluggable: a provider says which contexts an export offers
 * and computes their extents. The built-in providers are base:allocation,
 * qemu:allocation-depth (when the export has allocation-depth=on) and
 * qemu:dirty-bitmap:NAME (one per exported bitmap). Context ids are qsd's:
 * 0, 1, then 2 + bitmap index.
 *
 * Query matching follows qsd: a query naming a context exactly selects it;
 * for LIST only, an empty leaf ("base:", "qemu:", "qemu:dirty-bitmap:")
 * selects every context under it, and no queries at all selects everything.
 * Unknown queries select nothing. Replies come in the export's context
 * order, whatever the order of the queries.
 */
import type { BlockNode } from '../blockdev/node.ts';
import type { Extent } from '../blockdev/request.ts';
import { ReqFlag } from '../blockdev/request.ts';
import { STATE_DIRTY, STATE_HOLE, STATE_ZERO } from '../nbd-protocol/constants.ts';
import type { WireExtent } from '../nbd-protocol/replies.ts';

export interface MetaContext {
  readonly name: string;
  readonly id: number;
  /**
   * Extents from `offset` on, together covering at most `length` bytes, at
   * most `max` of them (adjacent extents with equal flags merged while the
   * sum stays within `maxLength`, default 2^32-1: what BLOCK_STATUS can carry).
   */
  extents(offset: number, length: number, max: number, maxLength?: number): Promise<WireExtent[]>;
}

/** A dirty bitmap as the NBD server sees it; whoever owns bitmaps supplies these. */
export interface DirtyBitmapView {
  readonly name: string;
  /** Runs covering a prefix of [offset, offset+length), each dirty or clean. */
  runs(offset: number, length: number): { length: number; dirty: boolean }[];
}

/** What a provider knows about the export it offers contexts for. */
export interface MetaExportInfo {
  readonly node: BlockNode;
  readonly allocationDepth: boolean;
  readonly bitmaps: readonly DirtyBitmapView[];
}

export interface MetaContextProvider {
  contexts(exp: MetaExportInfo): MetaContext[];
}

/** Collects extents into a bounded, merging list. */
class ExtentList {
  readonly items: WireExtent[] = [];
  total = 0;
  constructor(private readonly max: number, private readonly maxLength = 0xffffffff) {}
  /** Adds a run; false once it had to be refused because the list is full. */
  add(length: number, flags: number): boolean {
    if (length === 0) return true;
    const last = this.items[this.items.length - 1];
    if (last && last.flags === flags && last.length + length <= this.maxLength) {
      last.length += length;
    } else {
      if (this.items.length >= this.max) return false;
      this.items.push({ length, flags });
    }
    this.total += length;
    return true;
  }
}

/** Walks the node's block status over the range, mapping each extent to wire flags. */
async function fromBlockStatus(node: BlockNode, offset: number, length: number, max: number, maxLength: number | undefined,
  flagsOf: (e: Extent) => number): Promise<WireExtent[]> {
  const list = new ExtentList(max, maxLength);
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const exts = await node.blockStatus(pos, end - pos, max === 1 ? ReqFlag.REQ_ONE : 0);
    for (const e of exts) {
      if (!list.add(e.length, flagsOf(e))) return list.items;
      pos += e.length;
    }
  }
  return list.items;
}

export const baseAllocation: MetaContextProvider = {
  contexts: (exp) => [{
    name: 'base:allocation',
    id: 0,
    extents: (offset, length, max, maxLength) => fromBlockStatus(exp.node, offset, length, max, maxLength,
      (e) => (e.data ? 0 : STATE_HOLE) | (e.zero ? STATE_ZERO : 0)),
  }],
};

export const qemuAllocationDepth: MetaContextProvider = {
  contexts: (exp) => exp.allocationDepth ? [{
    name: 'qemu:allocation-depth',
    id: 1,
    extents: (offset, length, max, maxLength) => fromBlockStatus(exp.node, offset, length, max, maxLength, (e) => e.depth),
  }] : [],
};

export const qemuDirtyBitmaps: MetaContextProvider = {
  contexts: (exp) => exp.bitmaps.map((bm, i) => ({
    name: `qemu:dirty-bitmap:${bm.name}`,
    id: 2 + i,
    async extents(offset: number, length: number, max: number, maxLength?: number) {
      const list = new ExtentList(max, maxLength);
      let pos = offset;
      const end = offset + length;
      while (pos < end) {
        const runs = bm.runs(pos, end - pos);
        if (runs.length === 0) break;
        for (const r of runs) {
          if (!list.add(r.length, r.dirty ? STATE_DIRTY : 0)) return list.items;
          pos += r.length;
        }
      }
      return list.items;
    },
  })),
};

export const DEFAULT_PROVIDERS: readonly MetaContextProvider[] = [baseAllocation, qemuAllocationDepth, qemuDirtyBitmaps];

/** Contexts `queries` select among `available`; `list` is NBD_OPT_LIST_META_CONTEXT's looser matching. */
export function selectContexts(available: readonly MetaContext[], queries: readonly string[], list: boolean): MetaContext[] {
  if (list && queries.length === 0) return [...available];
  const chosen = new Set<MetaContext>();
  for (const q of queries) {
    for (const c of available) {
      if (c.name === q || (list && q.endsWith(':') && q.indexOf(':') > 0 && c.name.startsWith(q))) chosen.add(c);
    }
  }
  return available.filter((c) => chosen.has(c));
}
