/**
 * Dirty bitmap commands (qapi/block-core.json): block-dirty-bitmap-add,
 * -remove, -clear, -enable, -disable, -merge, with qsd 7.2's checks in its
 * order and its error texts; and the dirty-bitmaps member of
 * query-named-block-nodes.
 *
 * Each is also a `transaction` action: prepare makes the change and keeps
 * what undoes it (abort), commit stores a persistent bitmap's new state. As
 * in QEMU the change is visible at prepare, so a later action of the same
 * transaction sees it (a backup after a clear copies from the cleared bitmap).
 */
import type { BlockNode } from '../../blockdev/node.ts';
import type { BlockGraph } from '../../blockdev/graph.ts';
import { DirtyBitmap, CHECK_ALLOW_RO, CHECK_DEFAULT, Check, checkGranularity } from '../../blockdev/bitmaps/dirty-bitmap.ts';
import { addBitmap, bitmapChanged, bitmapsOf, existingBitmaps, removeBitmap } from '../../blockdev/bitmaps/registry.ts';
import { createHash } from 'node:crypto';
import { alt, arr, obj, opt, req } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import { nodeInfoHooks } from './block-info.ts';
import { actionCommand, type ActionContext, type CommandDef, type PreparedAction } from '../command.ts';

const BlockDirtyBitmap = obj('BlockDirtyBitmap', [
  req('node', 'str', 'name of device/node which the bitmap is tracking'),
  req('name', 'str', 'name of the dirty bitmap'),
]);

const BlockDirtyBitmapAdd = obj('BlockDirtyBitmapAdd', [
  req('node', 'str', 'name of device/node which the bitmap is tracking'),
  req('name', 'str', 'name of the dirty bitmap (must be less than 1024 bytes)'),
  opt('granularity', 'uint32', 'the bitmap granularity, default is 64k for block-dirty-bitmap-add'),
  opt('persistent', 'bool', 'the bitmap is persistent, i.e. it will be saved to the corresponding block device image file on its close. Default is false'),
  opt('disabled', 'bool', 'the bitmap is created in the disabled state, which means that it will not track drive changes. Default is false'),
]);

const BlockDirtyBitmapOrStr = alt('BlockDirtyBitmapOrStr', ['str', BlockDirtyBitmap]);

const BlockDirtyBitmapMerge = obj('BlockDirtyBitmapMerge', [
  req('node', 'str', 'name of device/node which the @target bitmap is tracking'),
  req('target', 'str', 'name of the destination dirty bitmap'),
  req('bitmaps', arr(BlockDirtyBitmapOrStr), 'name(s) of the source dirty bitmap(s) at @node and/or fully specified BlockDirtyBitmap elements'),
]);

/** block_dirty_bitmap_lookup: the node and its bitmap, or QEMU's error. */
function lookup(graph: BlockGraph, node: string, name: string): { node: BlockNode; bm: DirtyBitmap } {
  const n = graph.nodes.get(node);
  if (!n) throw genericError(`Node '${node}' not found`);
  const bm = existingBitmaps(n).find((b) => b.name === name);
  if (!bm) throw genericError(`Dirty bitmap '${name}' not found`);
  return { node: n, bm };
}

/** QEMU's action_check_completion_mode: bitmap and snapshot actions create no jobs to group. */
export function checkIndividual(action: string, ctx: ActionContext): void {
  if (ctx.completionMode !== 'individual') {
    throw genericError(`Action '${action}' does not support Transaction property completion-mode = ${ctx.completionMode}`);
  }
}

/** A bitmap action on one bitmap: `change` makes the change and returns how to undo it. */
function bitmapCommand(name: string, doc: string, flags: number, change: (bm: DirtyBitmap, node: BlockNode) => Promise<PreparedAction>): CommandDef {
  return actionCommand({
    name,
    args: BlockDirtyBitmap,
    doc,
    async action(a: { node: string; name: string }, ctx) {
      checkIndividual(name, ctx);
      const { node, bm } = lookup(ctx.graph, a.node, a.name);
      bm.check(flags);
      return change(bm, node);
    },
  });
}

/** Contents changed in place: commit stores them, abort puts the old ones back. */
function contentsChange(bm: DirtyBitmap, node: BlockNode, change: () => void): PreparedAction {
  const before = bm.bits.clone();
  change();
  return {
    commit: () => bitmapChanged(node, bm),
    abort: () => { bm.bits.clear(); bm.bits.or(before); },
  };
}

/** Recording switched on or off. */
function recordingChange(bm: DirtyBitmap, node: BlockNode, recording: boolean): PreparedAction {
  const before = bm.recording;
  bm.recording = recording;
  return {
    commit: () => bitmapChanged(node, bm),
    abort: () => { bm.recording = before; },
  };
}

/**
 * Removal (QEMU's two steps): prepare takes a persistent bitmap out of the
 * image and holds the bitmap busy; commit drops it from the node; abort makes
 * it persistent (stored) again.
 */
async function removal(bm: DirtyBitmap, node: BlockNode): Promise<PreparedAction> {
  const wasPersistent = bm.persistent;
  if (wasPersistent) {
    bm.persistent = false;
    try {
      await bitmapsOf(node).store?.removed(bm);
    } catch (e) {
      bm.persistent = true;
      throw e;
    }
  }
  let held = true;
  bm.users.add(() => held);
  return {
    async commit() { held = false; await removeBitmap(node, bm); },
    async abort() {
      held = false;
      if (!wasPersistent) return;
      bm.persistent = true;
      await bitmapsOf(node).store?.added(bm);
    },
  };
}

export const bitmapCommands: CommandDef[] = [
  actionCommand({
    name: 'block-dirty-bitmap-add',
    args: BlockDirtyBitmapAdd,
    doc: 'Create a dirty bitmap with a name on the node, and start tracking the writes.',
    async action(a: { node: string; name: string; granularity?: number; persistent?: boolean; disabled?: boolean }, ctx) {
      checkIndividual('block-dirty-bitmap-add', ctx);
      if (a.name === '') throw genericError('Bitmap name cannot be empty');
      const node = ctx.graph.findReference(a.node);
      if (a.granularity !== undefined) checkGranularity(a.granularity);
      const bm = await addBitmap(node, a.name, a);
      return { abort: () => removeBitmap(node, bm) };
    },
  }),
  bitmapCommand('block-dirty-bitmap-remove', 'Stop write tracking and remove the dirty bitmap that was created with block-dirty-bitmap-add. If the bitmap is persistent, remove it from its storage too.',
    Check.BUSY | Check.RO, removal),
  bitmapCommand('block-dirty-bitmap-clear', 'Clear (reset) a dirty bitmap on the device, so that an incremental backup from this point in time forward will only backup clusters modified after this clear operation.',
    CHECK_DEFAULT, async (bm, node) => contentsChange(bm, node, () => bm.clear())),
  bitmapCommand('block-dirty-bitmap-enable', 'Enables a dirty bitmap so that it will begin tracking disk changes.',
    CHECK_ALLOW_RO, async (bm, node) => recordingChange(bm, node, true)),
  bitmapCommand('block-dirty-bitmap-disable', 'Disables a dirty bitmap so that it will stop tracking disk changes.',
    CHECK_ALLOW_RO, async (bm, node) => recordingChange(bm, node, false)),
  actionCommand({
    name: 'block-dirty-bitmap-merge',
    args: BlockDirtyBitmapMerge,
    doc: 'Merge dirty bitmaps listed in @bitmaps to the @target dirty bitmap. Dirty bitmaps in @bitmaps will be unchanged, except if it also appears as the @target bitmap. Any bits already set in @target will still be set after the merge, i.e., this operation does not clear the target. On error, @target is unchanged.',
    async action(a: { node: string; target: string; bitmaps: (string | { node: string; name: string })[] }, ctx) {
      checkIndividual('block-dirty-bitmap-merge', ctx);
      const { node, bm: dst } = lookup(ctx.graph, a.node, a.target);
      // qsd's order: every source is found first, then the target is checked, then each source is merged
      // into an anonymous bitmap (so the target is untouched on error), then that into the target.
      const sources: DirtyBitmap[] = [];
      for (const src of a.bitmaps) {
        if (typeof src === 'string') {
          const found = bitmapsOf(node).find(src);
          if (!found) throw genericError(`Dirty bitmap '${src}' not found`);
          sources.push(found);
        } else {
          sources.push(lookup(ctx.graph, src.node, src.name).bm);
        }
      }
      dst.check(CHECK_DEFAULT);
      const anon = new DirtyBitmap('', dst.granularity, node.length());
      for (const bm of sources) {
        bm.check(Check.INCONSISTENT);
        if (bm.size !== anon.size) {
          throw genericError(`Bitmaps are of different sizes (destination size is ${anon.size}, source size is ${bm.size}) and can't be merged`);
        }
        anon.merge(bm);
      }
      return contentsChange(dst, node, () => dst.merge(anon));
    },
  }),
  {
    name: 'x-debug-block-dirty-bitmap-sha256',
    args: BlockDirtyBitmap,
    returns: obj('BlockDirtyBitmapSha256', [req('sha256', 'str', 'ASCII representation of SHA256 bitmap hash')]),
    features: ['unstable'],
    doc: 'Get bitmap SHA256. The hash covers the bits in QEMU\'s in-memory layout: one bit per granule, in 64-bit words.',
    handler(a: { node: string; name: string }, ctx) {
      const { bm } = lookup(ctx.graph, a.node, a.name);
      const words = Math.ceil(bm.bits.size / 64);
      return { sha256: createHash('sha256').update(bm.bits.toBytes(0, words * 64)).digest('hex') };
    },
  },
];

// query-named-block-nodes: the node's bitmaps, newest first, when it has any.
nodeInfoHooks.push((node, out) => {
  const list = existingBitmaps(node);
  if (list.length) out['dirty-bitmaps'] = list.map((b) => b.info());
});
