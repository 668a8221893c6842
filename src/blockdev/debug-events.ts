/**
 * blkdebug's events (QEMU's BlkdebugEvent, in QEMU's order) and the ones
 * blockd raises. In QEMU a node raises an event on its child (raw's
 * read_aio before it reads its file) or the block layer raises one on a node
 * (pwritev before a write reaches the driver); a blkdebug node reacts to the
 * events it hears. A rule for an event blockd never raises could never fire,
 * so blkdebug refuses it at open instead of accepting it silently.
 */
import { enm } from '../qapi/types.ts';

export const BLKDEBUG_EVENTS = [
  'l1_update', 'l1_grow_alloc_table', 'l1_grow_write_table',
  'l1_grow_activate_table', 'l2_load', 'l2_update',
  'l2_update_compressed', 'l2_alloc_cow_read', 'l2_alloc_write',
  'read_aio', 'read_backing_aio', 'read_compressed', 'write_aio',
  'write_compressed', 'vmstate_load', 'vmstate_save', 'cow_read',
  'cow_write', 'reftable_load', 'reftable_grow', 'reftable_update',
  'refblock_load', 'refblock_update', 'refblock_update_part',
  'refblock_alloc', 'refblock_alloc_hookup', 'refblock_alloc_write',
  'refblock_alloc_write_blocks', 'refblock_alloc_write_table',
  'refblock_alloc_switch_table', 'cluster_alloc',
  'cluster_alloc_bytes', 'cluster_free', 'flush_to_os',
  'flush_to_disk', 'pwritev_rmw_head', 'pwritev_rmw_after_head',
  'pwritev_rmw_tail', 'pwritev_rmw_after_tail', 'pwritev',
  'pwritev_zero', 'pwritev_done', 'empty_image_prepare',
  'l1_shrink_write_table', 'l1_shrink_free_l2_clusters',
  'cor_write', 'cluster_alloc_space', 'none',
] as const;

export type BlkdebugEvent = (typeof BLKDEBUG_EVENTS)[number];

export const BlkdebugEventType = enm('BlkdebugEvent', [...BLKDEBUG_EVENTS]);

/**
 * Who raises what in blockd:
 * - none: the blkdebug node itself, once, at the end of its open (rules for it are active from the start);
 * - read_aio, write_aio: raw and qcow2 on their file child, before a guest read or write goes there
 *   (qcow2: before guest data is read or written, also in a data file);
 * - read_backing_aio, read_compressed, write_compressed: qcow2 on its file, before it reads from
 *   its backing node, reads a compressed cluster or writes one;
 * - l2_load, refblock_load / l2_update, refblock_update_part: qcow2 on its file as its metadata
 *   caches read a table in / write one back; cluster_alloc, cluster_alloc_bytes, cluster_free as it
 *   allocates clusters (any: data, tables), bytes for a compressed cluster, or frees;
 *   l2_update_compressed before it points an L2 entry at a compressed cluster; l2_alloc_write,
 *   l2_alloc_cow_read and l1_update as it allocates an L2 table, l1_grow_alloc_table,
 *   l1_grow_write_table and l1_grow_activate_table as it grows the L1 table;
 * - flush_to_os, flush_to_disk: BlockNode on a node's primary child when the node is flushed
 *   (flush_to_disk not with cache.no-flush);
 * - pwritev, pwritev_zero, pwritev_done and the pwritev_rmw_* events: BlockNode on the node
 *   being written, around the driver's write, write-zeroes and read-modify-write cycle;
 * - cor_write: copy-on-read on its file child, before it writes copied data there.
 */
export const RAISED_EVENTS: ReadonlySet<BlkdebugEvent> = new Set<BlkdebugEvent>([
  'none', 'read_aio', 'write_aio', 'read_backing_aio', 'read_compressed', 'write_compressed',
  'l2_load', 'l2_update', 'l2_update_compressed', 'refblock_load', 'refblock_update_part',
  'cluster_alloc', 'cluster_alloc_bytes', 'cluster_free',
  'l1_update', 'l2_alloc_write', 'l2_alloc_cow_read', 'l1_grow_alloc_table', 'l1_grow_write_table', 'l1_grow_activate_table',
  'flush_to_os', 'flush_to_disk',
  'pwritev', 'pwritev_zero', 'pwritev_done',
  'pwritev_rmw_head', 'pwritev_rmw_after_head', 'pwritev_rmw_tail', 'pwritev_rmw_after_tail',
  'cor_write',
]);

export const BLKDEBUG_IO_TYPES = ['read', 'write', 'write-zeroes', 'discard', 'flush', 'block-status'] as const;
export type BlkdebugIoType = (typeof BLKDEBUG_IO_TYPES)[number];
export const BlkdebugIoTypeEnum = enm('BlkdebugIOType', [...BLKDEBUG_IO_TYPES]);
