/**
 * blockdev-create for vmdk (QEMU's vmdk_co_create and vmdk_co_do_create):
 * monolithicSparse and streamOptimized are one sparse extent on `file`
 * with the descriptor at sector 1; monolithicFlat and twoGbMaxExtent*
 * write a descriptor file on `file` and one extent per `extents` entry
 * (2 GiB each for the split subformats). The steps, checks and texts are
 * qsd 7.2's, in its order (`file` is first initialised as an extent of the
 * descriptor's own, then overwritten by the descriptor, as QEMU does); the
 * sparse layout is drivers/vmdk/header.ts, the descriptor
 * drivers/vmdk/descriptor.ts.
 */
import { randomInt } from 'node:crypto';
import path from 'node:path';
import { BlockError } from '../../util/errors.ts';
import { arr, enm, obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { BlockdevRef, checkFilePermissions, Refs } from './qcow2.ts';
import { sparseLayout } from '../drivers/vmdk/header.ts';
import { descriptorText } from '../drivers/vmdk/descriptor.ts';
import { fileName } from '../drivers/vmdk/extent.ts';
import { writeGrowing } from '../child-io.ts';
import type { BlockNode } from '../node.ts';
import type { CreateContext, ImageCreator } from './types.ts';

const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'] as const;
const ADAPTERS = ['ide', 'buslogic', 'lsilogic', 'legacyESX'] as const;
const SPLIT_SIZE = 0x80000000;

export const BlockdevCreateOptionsVmdk: ObjectType = obj('BlockdevCreateOptionsVmdk', [
  req('file', BlockdevRef, 'Where to store the new image file. This refers to the image file for monolithcSparse and streamOptimized format, or the descriptor file for other formats.'),
  req('size', 'size', 'Size of the virtual disk in bytes'),
  opt('extents', arr(BlockdevRef), 'Where to store the data extents. Required for monolithcFlat, twoGbMaxExtentSparse and twoGbMaxExtentFlat formats.'),
  opt('subformat', enm('BlockdevVmdkSubformat', [...SUBFORMATS]), 'The subformat of the VMDK image. Default: "monolithicSparse".'),
  opt('backing-file', 'str', 'The path of backing file. Default: no backing file is used.'),
  opt('adapter-type', enm('BlockdevVmdkAdapterType', [...ADAPTERS]), 'The adapter type used to fill in the descriptor. Default: ide.'),
  opt('hwversion', 'str', 'Hardware version. The meaningful options are "4" or "6". Default: "4".'),
  opt('toolsversion', 'str', 'VMware guest tools version. Default: "2147483647"'),
  opt('zeroed-grain', 'bool', 'Whether to enable zeroed-grain feature for sparse subformats. Default: false.'),
], { doc: 'Driver specific image creation options for VMDK.' });

type Ref = string | Record<string, unknown>;
interface VmdkCreateOptions {
  file: Ref; size: number; extents?: Ref[]; subformat?: typeof SUBFORMATS[number]; 'backing-file'?: string;
  'adapter-type'?: typeof ADAPTERS[number]; hwversion?: string; toolsversion?: string; 'zeroed-grain'?: boolean;
}

/** QEMU's vmdk_init_extent on an opened node: a flat extent is only sized; a sparse one gets header and grain directories. */
async function initExtent(file: BlockNode, size: number, flat: boolean, compress: boolean, zeroed: boolean): Promise<void> {
  if (flat) {
    await file.truncate(size);
    return;
  }
  const l = sparseLayout(size, compress, zeroed);
  await writeGrowing(file, 0, l.header);
  await file.truncate(l.fileLength);
  for (const w of l.writes) await writeGrowing(file, w.offset, w.data);
}

export const vmdkCreator: ImageCreator = {
  driver: 'vmdk',
  options: BlockdevCreateOptionsVmdk,
  async create(options, ctx: CreateContext): Promise<void> {
    const o = options as unknown as VmdkCreateOptions;
    if (o.size % 512 !== 0) throw new BlockError('EINVAL', 'Image size must be a multiple of 512 bytes');
    const sub = o.subformat ?? 'monolithicSparse';
    const adapter = o['adapter-type'] ?? 'ide';
    const heads = adapter === 'ide' ? 16 : 255;
    const split = sub === 'twoGbMaxExtentFlat' || sub === 'twoGbMaxExtentSparse';
    const flat = sub === 'monolithicFlat' || sub === 'twoGbMaxExtentFlat';
    const compress = sub === 'streamOptimized';
    const zeroed = o['zeroed-grain'] === true;
    const line = (sectors: number, name: string) => flat ? `RW ${sectors} FLAT "${name}" 0\n` : `RW ${sectors} SPARSE "${name}"\n`;
    if (flat && o['backing-file'] !== undefined) throw new BlockError('ENOTSUP', "Flat image can't have backing file");
    if (flat && zeroed) throw new BlockError('ENOTSUP', "Flat image can't enable zeroed grain");
    const refs = new Refs(ctx.graph);
    try {
      const open = async (r: Ref) => {
        const n = await refs.open(r);
        checkFilePermissions(n);
        refs.link(n, 'root', { write: true, resize: true });
        return n;
      };
      const extentSize = split ? SPLIT_SIZE : o.size;
      let created = !split && !flat ? extentSize : 0;
      const desc = await open(o.file);
      await initExtent(desc, created, flat, compress, zeroed);
      let lines = !split && !flat ? line(Math.ceil(created / 512), path.basename(fileName(desc))) : '';
      let parentCid = 0xffffffff;
      let parentHint: string | undefined;
      if (o['backing-file'] !== undefined) {
        parentCid = await backingCid(o['backing-file'], desc, ctx);
        parentHint = o['backing-file'];
      }
      const list = o.extents ?? [];
      let idx = 1;
      while (created < o.size) {
        const cur = Math.min(o.size - created, extentSize);
        if (idx - 1 >= list.length) throw new BlockError('EINVAL', `Extent [${Math.min(idx - 1, list.length)}] not specified`);
        const ext = await open(list[idx - 1]);
        await initExtent(ext, cur, flat, compress, zeroed);
        lines += line(Math.ceil(cur / 512), path.basename(fileName(ext)));
        created += cur;
        idx++;
      }
      if (idx - 1 < list.length) throw new BlockError('EINVAL', 'List of extents contains unused extents');
      const text = Buffer.from(descriptorText({
        cid: randomInt(0, 2 ** 32 - 1), parentCid, createType: sub, parentHint, extentLines: lines,
        hwVersion: o.hwversion ?? '4', size: o.size, heads, adapterType: adapter, toolsVersion: o.toolsversion ?? '2147483647',
      }), 'latin1');
      const at = !split && !flat ? 0x200 : 0;
      await writeGrowing(desc, at, text);
      if (at === 0) await desc.truncate(text.length);
      await desc.flush();
    } finally {
      await refs.close();
    }
  },
};

/** QEMU opens the backing file (relative to the new image) without its own backing, as vmdk, for its CID. */
async function backingCid(name: string, image: BlockNode, ctx: CreateContext): Promise<number> {
  const base = fileName(image);
  const full = name.startsWith('/') ? name : base.slice(0, base.lastIndexOf('/') + 1) + name;
  const fmt = await ctx.graph.probeFormat(full);
  if (fmt !== 'vmdk') throw new BlockError('EINVAL', `Invalid backing file format: ${fmt}. Must be vmdk`);
  const refs = new Refs(ctx.graph);
  try {
    const node = await refs.open({ driver: 'vmdk', file: { driver: 'file', filename: full }, backing: null, 'read-only': true });
    const cid = (node.ops.info?.()['format-specific'] as { data?: { cid?: number } } | undefined)?.data?.cid;
    if (cid === undefined) throw new BlockError('EINVAL', 'Failed to read parent CID');
    return cid;
  } finally {
    await refs.close();
  }
}
