/**
 * vmdk: VMware disk images (QEMU's block/vmdk.c), read and write:
 * monolithicSparse, streamOptimized (compressed grains; written only as
 * QEMU allows, whole new grains appended), monolithicFlat, twoGbMaxExtent
 * Sparse/Flat and other descriptor files naming FLAT, VMFS, SPARSE and
 * VMFSSPARSE extents (opened as children extents.N, relative to the
 * descriptor's directory), with a backing file from parentFileNameHint.
 * Descriptor text: descriptor.ts; sparse headers: header.ts; an extent's
 * grain tables and grains: extent.ts; opening: open.ts; the disk over its
 * extents: disk.ts; image creation: ../../create/vmdk.ts.
 */
import { obj, opt, req } from '../../../qapi/types.ts';
import { BlockError } from '../../../util/errors.ts';
import { BlockdevRef, BlockdevRefOrNull } from '../../options.ts';
import { resolveBacking } from '../qcow2/index.ts';
import type { Driver, DriverContext, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import { probeVmdk } from './descriptor.ts';
import { openVmdk, type VmdkState } from './open.ts';
import { VmdkDisk } from './disk.ts';
import { fileName, type VmdkExtent } from './extent.ts';
import { SECTOR } from './header.ts';

async function openBacking(options: Record<string, unknown>, s: VmdkState, ctx: DriverContext): Promise<BlockNode | undefined> {
  const ref = options.backing;
  if (ref === null) return undefined;
  if (ref !== undefined) return ctx.openChild('backing', ref as string | Record<string, unknown>);
  if (s.parentHint === undefined || s.parentHint === '') return undefined;
  // QEMU records the hint with backing format vmdk: the backing file is opened as vmdk, not probed.
  const filename = resolveBacking(s.parentHint, s.file);
  try {
    return await ctx.openChild('backing', { driver: 'vmdk', file: ctx.protocolOptions(filename), 'read-only': true });
  } catch (e) {
    throw new BlockError((e as BlockError).code ?? 'EINVAL', `Could not open backing file: ${(e as Error).message}`);
  }
}

/** QEMU's vmdk_get_extent_info. */
function extentInfo(e: VmdkExtent): Record<string, unknown> {
  return {
    filename: fileName(e.file), format: e.type, 'virtual-size': e.sectors * SECTOR,
    ...(e.compressed ? { compressed: true } : {}), ...(!e.flat ? { 'cluster-size': e.clusterBytes } : {}),
  };
}

/** QEMU's vmdk_get_info (cluster size, dirty flag: only when all extents are of one kind) and vmdk_get_specific_info. */
function info(s: VmdkState, backingName: string | undefined): Record<string, unknown> {
  const [first, ...rest] = s.extents;
  const same = first !== undefined && rest.every((e) => e.flat === first.flat && e.compressed === first.compressed && (e.flat || e.clusterSectors === first.clusterSectors));
  return {
    ...(same && !first.flat ? { 'cluster-size': first.clusterBytes } : {}),
    ...(same ? { 'dirty-flag': false } : {}),
    ...(backingName !== undefined ? { 'backing-filename': backingName, 'backing-filename-format': 'vmdk' } : {}),
    'format-specific': {
      type: 'vmdk',
      data: { 'create-type': s.createType ?? '', cid: s.cid, 'parent-cid': s.parentCid, extents: s.extents.map(extentInfo) },
    },
  };
}

export const vmdkDriver: Driver = {
  name: 'vmdk',
  kind: 'format',
  options: obj('BlockdevOptionsGenericCOWFormat', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
    opt('backing', BlockdevRefOrNull, 'reference to or definition of the backing file block device, null disables the backing file entirely'),
  ]),
  probe: (head) => probeVmdk(head),
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const s = await openVmdk(ctx, file);
    const backing = await openBacking(options, s, ctx);
    const disk = new VmdkDisk(s, () => backing);
    return disk.register({
      length: () => disk.size,
      read: (o, buf) => disk.read(o, buf),
      write: (o, buf) => disk.write(o, buf),
      writeZeroes: (o, l, flags) => disk.writeZeroes(o, l, flags),
      flush: () => disk.flush(),
      blockStatus: (o, l) => disk.blockStatus(o, l),
      // QEMU's vmdk has byte-granular requests (request_alignment 1) and writes zeroes itself.
      limits: { alignment: 1, canFua: false, canZero: true },
      info: () => info(s, s.parentHint !== undefined && s.parentHint !== '' ? s.parentHint : undefined),
    });
  },
};
