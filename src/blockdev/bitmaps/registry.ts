/**
 * Which dirty bitmaps each node has. A node's bitmaps mark every write,
 * write-zeroes and discard that reaches it while they record. Nodes whose
 * format stores bitmaps (qcow2) have a BitmapStore among their operations
 * (DriverOps.bitmapStore): the store loads bitmaps at open, keeps
 * them on disk and marks writes itself (before the driver writes, so what is
 * on disk is never less dirty than the data). Other nodes get their bitmaps
 * marked through BlockNode.writeObservers.
 */
import { BlockError } from '../../util/errors.ts';
import type { BlockNode } from '../node.ts';
import { CHECK_ALLOW_RO, DirtyBitmap, MAX_NAME_SIZE } from './dirty-bitmap.ts';
import { NodeBitmaps } from './node-bitmaps.ts';

/** Bitmaps of nodes whose format keeps none (a node with a store has the store's own). */
const byNode = new WeakMap<BlockNode, NodeBitmaps>();

/** The node's bitmaps (created empty, and hooked to its writes, on first use). */
export function bitmapsOf(node: BlockNode): NodeBitmaps {
  const own = node.ops.bitmapStore?.nodeBitmaps;
  if (own) return own;
  let nb = byNode.get(node);
  if (!nb) {
    nb = new NodeBitmaps(undefined, () => node.length());
    byNode.set(node, nb);
    // The observer is told of writes, write-zeroes and discards alike; a discard is recognised by the
    // node's discard counter, which the node bumps just before it tells its observers (same tick).
    // A discard the node ignores (discard=ignore, QEMU's !BDRV_O_UNMAP) dirties nothing, as in QEMU.
    let discards = node.stats.discardOps;
    const observe = nb.observe;
    node.writeObservers.add((offset, length) => {
      if (node.stats.discardOps !== discards) {
        discards = node.stats.discardOps;
        if (node.options.discard !== 'unmap') return;
      }
      observe(offset, length);
    });
  }
  return nb;
}

/** Bitmaps of a node without creating anything (for queries). */
export function existingBitmaps(node: BlockNode): DirtyBitmap[] {
  const nb = node.ops.bitmapStore?.nodeBitmaps ?? byNode.get(node);
  nb?.syncSize();
  return nb?.bitmaps ?? [];
}

/** QEMU's bdrv_get_default_bitmap_granularity: the cluster size within [4 KiB, 64 KiB], else 64 KiB. */
export function defaultGranularity(node: BlockNode): number {
  let cs: unknown;
  try { cs = node.ops.info?.()['cluster-size']; } catch { cs = undefined; }
  if (typeof cs === 'number' && cs > 0) return Math.min(65536, Math.max(4096, cs));
  return 65536;
}

export interface AddOptions { granularity?: number; persistent?: boolean; disabled?: boolean }

/** block-dirty-bitmap-add's work after the node was found. */
export async function addBitmap(node: BlockNode, name: string, o: AddOptions): Promise<DirtyBitmap> {
  const granularity = o.granularity ?? defaultGranularity(node);
  const nb = bitmapsOf(node);
  if (o.persistent) {
    if (!nb.store) throw new BlockError('ENOTSUP', `Can't store persistent bitmaps to ${node.nodeName}: Operation not supported`);
    nb.store.checkCanStore(name, granularity);
  }
  if (nb.find(name)) throw new BlockError('EINVAL', `Bitmap already exists: ${name}`);
  if (Buffer.byteLength(name) > MAX_NAME_SIZE) throw new BlockError('EINVAL', `Bitmap name too long: ${name}`);
  const bm = new DirtyBitmap(name, granularity, node.length());
  if (o.disabled) bm.recording = false;
  bm.persistent = o.persistent === true;
  nb.bitmaps.unshift(bm);
  if (bm.persistent) {
    try {
      await nb.store!.added(bm);
    } catch (e) {
      nb.bitmaps.splice(nb.bitmaps.indexOf(bm), 1);
      throw e;
    }
  }
  return bm;
}

export async function removeBitmap(node: BlockNode, bm: DirtyBitmap): Promise<void> {
  const nb = bitmapsOf(node);
  if (bm.persistent) await nb.store?.removed(bm);
  const i = nb.bitmaps.indexOf(bm);
  if (i >= 0) nb.bitmaps.splice(i, 1);
}

/** Tells the node's store that a persistent bitmap changed outside the write path. */
export async function bitmapChanged(node: BlockNode, bm: DirtyBitmap): Promise<void> {
  if (bm.persistent) await bitmapsOf(node).store?.changed(bm);
}

/** What an NBD export holds of a bitmap; the bitmap is busy while an export holding it exists. */
export interface ExportedBitmap { readonly name: string; readonly bitmap: DirtyBitmap; runs(offset: number, length: number): { length: number; dirty: boolean }[] }

/**
 * The bitmap an NBD export of `node` offers under `name`: looked up on the
 * node, then down its filter and backing chain, as qsd does. It counts as
 * busy for as long as an export (a parent of `node`) lists it. A read-only
 * export refuses a bitmap still recording on a writable node (qsd's check:
 * what such an export reports could change under a client that cannot write).
 */
export function findBitmapForExport(node: BlockNode, name: string, exportWritable = false): ExportedBitmap | undefined {
  for (let n: BlockNode | undefined = node; n; n = n.isFilter ? n.primaryChild : n.child('backing')) {
    const bm = existingBitmaps(n).find((b) => b.name === name);
    if (!bm) continue;
    // qsd refuses this before it looks at the bitmap's state (a busy bitmap gets this text too).
    if (!exportWritable && !n.readOnly && bm.recording) {
      throw new BlockError('EINVAL', `Enabled bitmap '${name}' incompatible with readonly export`);
    }
    bm.check(CHECK_ALLOW_RO);
    const view: ExportedBitmap = { name, bitmap: bm, runs: (o, l) => bm.runs(o, l) };
    bm.users.add(() => node.parents.some((e) => (e.parent as { bitmaps?: unknown[] }).bitmaps?.includes(view)));
    return view;
  }
  return undefined;
}

/**
 * Whether anything other than an empty bitmap list watches the node's
 * writes: a bitmap, or a write observer of its own (a job's). Writes made
 * where the node's observers do not run (an iothread's copy of the node)
 * would be missed by such a watcher.
 */
export function writesAreWatched(node: BlockNode): boolean {
  const own = byNode.get(node);
  if (node.ops.bitmapStore || (own && own.bitmaps.length > 0)) return true;
  return node.writeObservers.size > (own ? 1 : 0);
}
