/**
 * change-backing-file (QEMU blockdev.c qmp_change_backing_file): records a
 * new backing file name in the header of an image in a root node's chain,
 * leaving the live graph as it is. qsd's checks, order and texts; a
 * read-only image is made writable for the change and read-only again. As
 * in qsd, the backing format recorded with it is the image's own format
 * (QEMU passes image_bs->drv->format_name), which is what management tools
 * calling it get today.
 */
import { BlockNode } from '../../blockdev/node.ts';
import { BlockJob } from '../../blockdev/jobs/block-job.ts';
import { setBacking } from '../../blockdev/surgery/replace.ts';
import { errnoText } from '../../blockdev/internal-snapshots.ts';
import { obj, req } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import type { CommandDef } from '../command.ts';
import { setReadOnly } from './snapshots-external.ts';

/** The next node down a chain (QEMU's bdrv_filter_or_cow_bs). */
const below = (n: BlockNode) => n.child('backing') ?? (n.isFilter ? n.primaryChild : undefined);

export const backingFileCommands: CommandDef[] = [
  {
    name: 'change-backing-file',
    args: obj('q_obj_change-backing-file-arg', [
      req('device', 'str', 'The device name or node-name of the root node that owns image-node-name.'),
      req('image-node-name', 'str', 'The name of the block driver state node of the image to modify. The "device" argument is used to verify "image-node-name" is in the chain described by "device".'),
      req('backing-file', 'str', 'The string to write as the backing file. This string is not validated, so care should be taken when specifying the string or the image chain may not be able to be reopened again.'),
    ]),
    doc: 'Change the backing file in the image file metadata. This does not cause QEMU to reopen the image file to reparse the backing filename (it may, however, perform a reopen to change permissions from r/o -> r/w -> r/o, if needed). The new backing file string is written into the image file metadata, and the QEMU internal strings are updated.',
    async handler(a: { device: string; 'image-node-name': string; 'backing-file': string }, ctx) {
      const bs = ctx.graph.nodes.get(a.device);
      if (!bs) throw genericError(`Cannot find device='${a.device}' nor node-name='${a.device}'`);
      if (bs.parents.some((e) => e.parent instanceof BlockNode)) throw genericError('Need a root block node');
      const image = ctx.graph.nodes.get(a['image-node-name']);
      if (!image) throw genericError(`Cannot find device='' nor node-name='${a['image-node-name']}'`);
      let base = image;
      for (let n = below(image); n; n = below(n)) base = n;
      if (base === image) throw genericError('not allowing backing file change on an image without a backing file');
      const job = bs.parents.find((e) => e.parent instanceof BlockJob);
      if (job) throw genericError(`Node '${bs.nodeName}' is busy: block device is in use by block job: ${(job.parent as BlockJob).type}`);
      let inChain = false;
      for (let n: BlockNode | undefined = bs; n; n = below(n)) if (n === image) inChain = true;
      if (!inChain) throw genericError(`'${a.device}' and image file are not in the same chain`);
      const ro = image.readOnly;
      if (ro) await setReadOnly(ctx.graph, image, false);
      try {
        if (!image.driver.setBackingFile) throw genericError(`Could not change backing file to '${a['backing-file']}': Operation not supported`);
        await setBacking(ctx.graph, image, image.child('backing'), { backingFile: a['backing-file'], backingFormat: image.driver.name })
          .catch((e: unknown) => { throw genericError(`Could not change backing file to '${a['backing-file']}': ${errnoText(e)}`); });
      } finally {
        if (ro) await setReadOnly(ctx.graph, image, true);
      }
      return {};
    },
  },
];
