/**
 * blockdev-create for vhdx (QEMU's vhdx_co_create): file identifier,
 * headers, region tables, BAT and metadata on the `file` node, dynamic or
 * fixed, with QEMU's defaults (1 MiB log, a block size by image size, ZERO
 * block states) and its checks and texts. The layout is
 * drivers/vhdx/header.ts.
 */
import { BlockError } from '../../util/errors.ts';
import { enm, obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { BlockdevRef, checkFilePermissions, Refs } from './qcow2.ts';
import { writeGrowing } from '../child-io.ts';
import { BLOCK_SIZE_MAX, DEFAULT_LOG_SIZE, MAX_IMAGE_SIZE, MiB, defaultBlockSize, vhdxLayout } from '../drivers/vhdx/header.ts';
import type { CreateContext, ImageCreator } from './types.ts';

export const BlockdevCreateOptionsVhdx: ObjectType = obj('BlockdevCreateOptionsVhdx', [
  req('file', BlockdevRef, 'Node to create the image format on'),
  req('size', 'size', 'Size of the virtual disk in bytes'),
  opt('log-size', 'size', 'Log size in bytes, must be a multiple of 1 MB (default: 1 MB)'),
  opt('block-size', 'size', 'Block size in bytes, must be a multiple of 1 MB and not larger than 256 MB (default: automatically choose a block size depending on the image size)'),
  opt('subformat', enm('BlockdevVhdxSubformat', ['dynamic', 'fixed']), 'vhdx subformat (default: dynamic)'),
  opt('block-state-zero', 'bool', "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic."),
], { doc: 'Driver specific image creation options for vhdx.' });

interface VhdxCreateOptions {
  file: string | Record<string, unknown>; size: number; 'log-size'?: number; 'block-size'?: number;
  subformat?: 'dynamic' | 'fixed'; 'block-state-zero'?: boolean;
}

const fail = (msg: string) => new BlockError('EINVAL', msg);

export const vhdxCreator: ImageCreator = {
  driver: 'vhdx',
  options: BlockdevCreateOptionsVhdx,
  async create(options, ctx: CreateContext): Promise<void> {
    const o = options as unknown as VhdxCreateOptions;
    if (o.size > MAX_IMAGE_SIZE) throw fail('Image size too large; max of 64TB');
    const logSize = o['log-size'] ?? DEFAULT_LOG_SIZE;
    if (logSize > 0xffffffff) throw fail('Log size must be smaller than 4 GB');
    if (logSize < MiB || logSize % MiB !== 0) throw fail('Log size must be a multiple of 1 MB');
    const blockSize = o['block-size'] ?? defaultBlockSize(o.size);
    if (blockSize < MiB || blockSize % MiB !== 0) throw fail('Block size must be a multiple of 1 MB');
    if ((blockSize & (blockSize - 1)) !== 0) throw fail('Block size must be a power of two');
    if (blockSize > BLOCK_SIZE_MAX) throw fail(`Block size must not exceed ${BLOCK_SIZE_MAX}`);
    const refs = new Refs(ctx.graph);
    try {
      const file = await refs.open(o.file);
      checkFilePermissions(file);
      refs.link(file, 'root', { write: true, resize: true });
      const { writes, fileLength } = vhdxLayout({
        size: o.size, logSize, blockSize, fixed: o.subformat === 'fixed', zeroBlocks: o['block-state-zero'] ?? true,
      });
      await file.truncate(fileLength);
      for (const [at, b] of writes) await writeGrowing(file, at, b);
      await file.flush();
    } finally {
      await refs.close();
    }
  },
};
