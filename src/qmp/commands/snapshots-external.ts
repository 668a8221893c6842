/**
 * External snapshots: blockdev-snapshot (an overlay the user added) and
 * blockdev-snapshot-sync (blockd creates the overlay file, qcow2, backed by
 * the node's image). Either way the overlay's backing link becomes the node
 * and then every user of the node — nodes and NBD exports — moves onto the
 * overlay inside a drained section (blockdev/surgery/replace.ts), so no request is lost
 * or reordered across the switch. The old node is then made read-only, as
 * qsd 7.2 does. Checks and texts follow qsd 7.2.
 *
 * Both are `transaction` actions, and run alone as a transaction of one (as
 * in QEMU): prepare creates/opens the overlay and moves the users onto it;
 * commit makes the old node read-only; abort moves the users back and
 * detaches the overlay (a -sync overlay node goes; its file stays).
 */
import { open } from 'node:fs/promises';
import { enm, obj, opt, req } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import { replaceNode, setBacking, withUsersHeld } from '../../blockdev/surgery/replace.ts';
import { generateNodeName } from '../../blockdev/surgery/node-names.ts';
import { qcow2Layout } from '../../blockdev/drivers/qcow2/create-layout.ts';
import type { BlockGraph } from '../../blockdev/graph.ts';
import type { BlockNode } from '../../blockdev/node.ts';
import { actionCommand, type CommandDef, type PreparedAction } from '../command.ts';
import { reopenNodes } from './reopen.ts';
import { checkIndividual } from './bitmaps.ts';

const Empty = obj('q_empty', []);
const NewImageMode = enm('NewImageMode', ['existing', 'absolute-paths'], 'An enumeration that tells QEMU how to set the backing file path in a new image file.');

/**
 * QEMU's lookup for device/node-name pairs: a device name finds only a named
 * block backend (qsd has none), a node-name finds a node.
 */
export function lookupNode(graph: BlockGraph, device: string | undefined, nodeName: string | undefined): BlockNode {
  const n = nodeName !== undefined ? graph.nodes.get(nodeName) : undefined;
  if (!n) throw genericError(`Cannot find device='${device ?? ''}' nor node-name='${nodeName ?? ''}'`);
  return n;
}

/** Refuses a node that is some node's backing image (QEMU's op blocker). */
export function checkNotBacking(node: BlockNode): void {
  const e = node.parents.find((p) => p.role === 'backing');
  if (e) throw genericError(`Node '${node.nodeName}' is busy: node is used as backing hd of '${e.parent.describe()}'`);
}

/**
 * Makes `overlay` the new top of `node`'s users; commit makes `node`
 * read-only (it only serves reads now), abort gives the users back to
 * `node` and takes the overlay's backing link away again.
 */
async function switchToOverlay(graph: BlockGraph, node: BlockNode, overlay: BlockNode): Promise<{ commit(): Promise<void>; abort(): Promise<void> }> {
  if (!overlay.driver.options.members.some((m) => m.name === 'backing')) throw genericError('The overlay does not support backing images');
  if (overlay.child('backing')) throw genericError('The overlay already has a backing image');
  if (overlay.parents.length > 0) throw genericError('The overlay is already in use');
  await setBacking(graph, overlay, node);
  try {
    await replaceNode(graph, node, overlay);
  } catch (e) {
    await setBacking(graph, overlay, undefined);
    throw e;
  }
  return {
    async commit() {
      if (!node.readOnly && !node.parents.some((e) => e.perm.write)) await setReadOnly(graph, node, true).catch(() => undefined);
    },
    async abort() {
      await replaceNode(graph, overlay, node);
      await setBacking(graph, overlay, undefined);
    },
  };
}

/** Takes a node blockd opened for an overlay out of the graph again (its file stays). */
async function dropOverlay(graph: BlockGraph, overlay: BlockNode): Promise<void> {
  graph.nodes.delete(overlay.nodeName);
  await overlay.close();
  for (const edge of [...overlay.children]) await graph.unlink(overlay, edge);
}

/**
 * Reopens a node and its protocol child read-only or read-write, one node at
 * a time (the format layer writes through its file while it changes mode, so
 * the two are not drained together): the file first when it gains write, last
 * when it drops it. Only a file whose read-only flag follows the node's
 * changes with it (an inline one); a file node added by itself keeps its own
 * (qsd: after a snapshot the old top is read-only, its blockdev-add'ed file
 * node still read-write).
 */
export async function setReadOnly(graph: BlockGraph, node: BlockNode, readOnly: boolean): Promise<void> {
  if (node.readOnly === readOnly) return;
  const files = node.children
    .filter((e) => (e.role === 'file' || e.role === 'data-file') && e.child.readOnly !== readOnly
      && e.child.readOnlyInherited && e.child.parents.length === 1)
    .map((e) => e.child);
  // Users above are held meanwhile: reopen drains the node with everything above it.
  const one = (n: BlockNode) => withUsersHeld(n, () => reopenNodes(graph, [{ ...currentOptions(n), 'read-only': readOnly }]));
  if (!readOnly) for (const f of files) await one(f);
  await one(node);
  if (readOnly) for (const f of files) await one(f);
}

/**
 * A node's options with each child named by reference naming the child it
 * has now: a job (commit's overlay, block-stream's top) may have moved the
 * backing link since blockdev-add, and QEMU's keep-old-options reopen keeps
 * the current children (bdrv_reopen_commit drops the child references from
 * bs->options) rather than going back to the ones first named.
 */
function currentOptions(n: BlockNode): Record<string, unknown> {
  const o: Record<string, unknown> = { ...n.options };
  for (const [k, v] of Object.entries(o)) {
    if (typeof v !== 'string' || k === 'node-name') continue;
    const child = n.children.find((e) => e.role === k)?.child;
    if (child) o[k] = child.nodeName;
    else if (k === 'backing') o[k] = null;
  }
  return o;
}

/**
 * Writes a new, empty qcow2 image backed by `backing`. qsd's bdrv_img_create
 * opens three nodes to do so (the new file's protocol node, then the qcow2
 * and its file to write the header); their generated names are drawn here
 * too, so the names after it are numbered as qsd's.
 */
async function createOverlay(filename: string, size: number, backingFile: string, backingFormat: string): Promise<void> {
  for (let i = 0; i < 3; i++) generateNodeName();
  const layout = qcow2Layout({ size, backingFile, backingFormat });
  let fh;
  try {
    fh = await open(filename, 'w');
  } catch (e) {
    throw genericError(`Could not create '${filename}': ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'No such file or directory' : (e as Error).message}`);
  }
  try {
    await fh.truncate(layout.fileLength);
    for (const w of layout.writes) await fh.write(w.data, 0, w.data.length, w.offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export const snapshotExternalCommands: CommandDef[] = [
  actionCommand({
    name: 'blockdev-snapshot',
    args: obj('BlockdevSnapshot', [
      req('node', 'str', 'device or node name that will have a snapshot taken.'),
      req('overlay', 'str', 'reference to the existing block device that will become the overlay of node, as part of taking the snapshot. It must not have a current backing file.'),
    ]),
    returns: Empty,
    features: ['allow-write-only-overlay'],
    doc: 'Takes a snapshot of a block device. Take a snapshot, by installing \'node\' as the backing image of \'overlay\'. Additionally, if \'node\' is associated with a block device, the block device changes to using \'overlay\' as its new active image.',
    action: async ({ node, overlay }: { node: string; overlay: string }, ctx): Promise<PreparedAction> => {
      checkIndividual('blockdev-snapshot', ctx);
      const n = ctx.graph.findReference(node);
      const o = ctx.graph.findReference(overlay);
      checkNotBacking(n);
      return switchToOverlay(ctx.graph, n, o);
    },
  }),
  actionCommand({
    name: 'blockdev-snapshot-sync',
    args: obj('BlockdevSnapshotSync', [
      opt('device', 'str', 'the name of the device to take a snapshot of.'),
      opt('node-name', 'str', 'graph node name to generate the snapshot from'),
      req('snapshot-file', 'str', 'the target of the new overlay image. If the file exists, or if it is a device, the overlay will be created in the existing file/device. Otherwise, a new file will be created.'),
      opt('snapshot-node-name', 'str', 'the graph node name of the new image'),
      opt('format', 'str', "the format of the overlay image, default is 'qcow2'."),
      opt('mode', NewImageMode, "whether and how QEMU should create a new image, default is 'absolute-paths'."),
    ]),
    returns: Empty,
    doc: 'Takes a synchronous snapshot of a block device.',
    action: async (a: { device?: string; 'node-name'?: string; 'snapshot-file': string; 'snapshot-node-name'?: string; format?: string; mode?: string }, ctx): Promise<PreparedAction> => {
      checkIndividual('blockdev-snapshot-sync', ctx);
      const graph = ctx.graph;
      const node = lookupNode(graph, a.device, a['node-name']);
      checkNotBacking(node);
      const name = a['snapshot-node-name'];
      if (name === undefined) throw genericError('New overlay node-name missing');
      if (graph.nodes.has(name)) throw genericError('New overlay node-name already in use');
      const format = a.format ?? 'qcow2';
      if (!graph.driver(format)) throw genericError(`Unknown driver '${format}'`);
      if ((a.mode ?? 'absolute-paths') === 'absolute-paths') {
        if (format !== 'qcow2') throw genericError('The overlay does not support backing images');
        await createOverlay(a['snapshot-file'], node.length(), node.fileName(), node.driver.name);
      }
      const overlay = await graph.add({
        driver: format, 'node-name': name, file: { driver: 'file', filename: a['snapshot-file'] }, backing: null,
      }, true);
      let done;
      try {
        done = await switchToOverlay(graph, node, overlay);
      } catch (e) {
        await dropOverlay(graph, overlay);
        throw e;
      }
      return {
        commit: done.commit,
        async abort() { await done.abort(); await dropOverlay(graph, overlay); },
        // Like qsd: an overlay nobody uses (the node had no users) is not kept; its file is.
        async clean() { if (graph.nodes.get(overlay.nodeName) === overlay && overlay.parents.length === 0) await dropOverlay(graph, overlay); },
      };
    },
  }),
];
