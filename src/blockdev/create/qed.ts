/**
 * blockdev-create for qed (QEMU's bdrv_qed_co_create): the `file` node is
 * truncated to nothing (QED ties allocation to the file's length), then
 * the header, the backing file name after it and a zeroed L1 table at one
 * cluster are written. A raw backing format is recorded as
 * QED_F_BACKING_FORMAT_NO_PROBE; any other is not recorded (it is probed on
 * open). Checks and texts are qsd 7.2's; the layout is drivers/qed/header.ts.
 */
import { enm, obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { QSD_BLOCKDEV_DRIVERS } from '../../qapi/block-drivers.ts';
import { BlockdevRef, checkFilePermissions, Refs } from './qcow2.ts';
import { DEFAULT_CLUSTER_SIZE, DEFAULT_TABLE_SIZE, checkCreateOptions, qedLayout } from '../drivers/qed/header.ts';
import type { CreateContext, ImageCreator } from './types.ts';

export const BlockdevCreateOptionsQed: ObjectType = obj('BlockdevCreateOptionsQed', [
  req('file', BlockdevRef, 'Node to create the image format on'),
  req('size', 'size', 'Size of the virtual disk in bytes'),
  opt('backing-file', 'str', 'File name of the backing file if a backing file should be used'),
  opt('backing-fmt', enm('BlockdevDriver', [...QSD_BLOCKDEV_DRIVERS]), 'Name of the block driver to use for the backing file'),
  opt('cluster-size', 'size', 'Cluster size in bytes (default: 65536)'),
  opt('table-size', 'int', 'L1/L2 table size (in clusters)'),
], { doc: 'Driver specific image creation options for qed.' });

interface QedCreate {
  file: string | Record<string, unknown>; size: number; 'backing-file'?: string; 'backing-fmt'?: string;
  'cluster-size'?: number; 'table-size'?: number;
}

/** QEMU keeps both in uint32_t fields: the low 32 bits of what was given. */
const u32 = (v: number) => Number(BigInt.asUintN(32, BigInt(Math.trunc(v))));

export const qedCreator: ImageCreator = {
  driver: 'qed',
  options: BlockdevCreateOptionsQed,
  async create(options, ctx: CreateContext): Promise<void> {
    const o = options as unknown as QedCreate;
    const layout = {
      size: o.size, clusterSize: u32(o['cluster-size'] ?? DEFAULT_CLUSTER_SIZE), tableSize: u32(o['table-size'] ?? DEFAULT_TABLE_SIZE),
      backingFile: o['backing-file'], backingFmt: o['backing-fmt'],
    };
    checkCreateOptions(layout);
    const refs = new Refs(ctx.graph);
    try {
      const file = await refs.open(o.file);
      checkFilePermissions(file);
      refs.link(file, 'root', { write: true, resize: true });
      const { head, l1Offset, l1Bytes } = qedLayout(layout);
      await file.truncate(0);
      await file.truncate(Math.max(head.length, l1Offset + l1Bytes));
      await file.write(0, head);
      await file.write(l1Offset, Buffer.alloc(l1Bytes));
      await file.flush();
    } finally {
      await refs.close();
    }
  },
};
