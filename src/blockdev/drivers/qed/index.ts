/**
 * qed: the QEMU Enhanced Disk format (QEMU's block/qed.c), read and write,
 * with a backing file (raw when the image says QED_F_BACKING_FORMAT_NO_PROBE,
 * else probed), zero clusters and the need-check flag as QEMU keeps it.
 * Opening: header checks (header.ts), unknown autoclear bits cleared on a
 * writable open, the L1 table read, and an image left with the need-check
 * flag checked and repaired when opened read-write (check.ts). I/O: image.ts.
 */
import { writeFile } from 'node:fs/promises';
import { obj, opt, req } from '../../../qapi/types.ts';
import { BlockError } from '../../../util/errors.ts';
import { BlockdevRef, BlockdevRefOrNull } from '../../options.ts';
import { readClipped } from '../../child-io.ts';
import { resolveBacking } from '../qcow2/index.ts';
import type { Driver, DriverContext, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import { ReqFlag } from '../../request.ts';
import {
  AUTOCLEAR_FEATURE_MASK, F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK, HEADER_SIZE, encodeHeader, isImageSizeValid,
  parseQedHeader, probeQed, qedLayout, DEFAULT_CLUSTER_SIZE, DEFAULT_TABLE_SIZE, type QedHeader,
} from './header.ts';
import { QedImage } from './image.ts';
import { checkAndRepair } from './check.ts';

interface Backing { node?: BlockNode; name?: string; format?: string }

/**
 * The backing format change-backing-file (or stream, commit) gave, by the
 * image's file node: QEMU's block layer keeps it as the node's
 * backing_format (what query-named-block-nodes shows) though QED records
 * only "raw or probe"; the node's image is opened again after the change.
 */
const changedFormat = new WeakMap<BlockNode, { format?: string }>();

async function openBacking(options: Record<string, unknown>, h: QedHeader, file: BlockNode, ctx: DriverContext): Promise<Backing> {
  let name: string | undefined;
  let format: string | undefined;
  if (h.features & F_BACKING_FILE) {
    const b = Buffer.alloc(h.backingFilenameSize);
    await readClipped(file, h.backingFilenameOffset, b);
    const nul = b.indexOf(0);
    name = b.toString('utf8', 0, nul < 0 ? b.length : nul);
    if (h.features & F_BACKING_FORMAT_NO_PROBE) format = 'raw';
  }
  const opt = options.backing;
  if (opt === null) return { name, format };
  if (opt !== undefined) return { node: await ctx.openChild('backing', opt as string | Record<string, unknown>), name, format };
  if (!name) return { name, format };
  const filename = resolveBacking(name, file);
  let fmt = format;
  if (fmt === undefined) {
    try {
      fmt = await ctx.probeFormat(filename);
    } catch (e) {
      throw new BlockError('ENOENT', `Could not open backing file: ${(e as Error).message}`);
    }
  }
  const node = await ctx.openChild('backing', { driver: fmt, file: ctx.protocolOptions(filename), 'read-only': true }, { probed: format === undefined });
  return { node, name, format };
}

export const qedDriver: Driver = {
  name: 'qed',
  kind: 'format',
  options: obj('BlockdevOptionsGenericCOWFormat', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
    opt('backing', BlockdevRefOrNull, 'reference to or definition of the backing file block device, null disables the backing file entirely'),
  ]),
  probe: probeQed,
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const head = Buffer.alloc(HEADER_SIZE);
    await readClipped(file, 0, head);
    const { h, fileSize } = parseQedHeader(head, file.length());
    if (h.imageSize > Number.MAX_SAFE_INTEGER) throw new BlockError('EINVAL', 'QED image size is too large for blockd');
    if ((h.autoclearFeatures & ~AUTOCLEAR_FEATURE_MASK) !== 0n && !file.readOnly) {
      h.autoclearFeatures &= AUTOCLEAR_FEATURE_MASK;
      try { await file.write(0, encodeHeader(h)); } catch { throw new BlockError('EIO', 'Failed to update header'); }
      await file.flush().catch(() => undefined);
    }
    const l1 = Buffer.alloc(h.clusterSize * h.tableSize);
    await readClipped(file, h.l1TableOffset, l1);
    const backing = await openBacking(options, h, file, ctx);
    const changed = changedFormat.get(file);
    if (changed) backing.format = changed.format;
    const img = new QedImage(file, h, fileSize, l1, () => backing.node);
    if ((h.features & F_NEED_CHECK) && !file.readOnly) {
      try { await checkAndRepair(img); } catch { throw new BlockError('EIO', 'Image corrupted'); }
    }
    await img.armedAtOpen();
    return {
      length: () => h.imageSize,
      read: (o, buf) => img.read(o, buf),
      write: (o, buf) => img.write(o, buf.length, buf),
      writeZeroes: async (o, l, flags) => {
        const cs = img.g.cs;
        const start = Math.min(o + l, Math.ceil(o / cs) * cs);
        const end = Math.max(start, Math.floor((o + l) / cs) * cs);
        // The generic layer's split at pwrite_zeroes_alignment (the cluster size): the unaligned head and
        // tail are QED's -ENOTSUP and become ordinary writes of zeroes, unless NO_FALLBACK.
        const plain = async (at: number, n: number) => {
          if (n <= 0) return;
          if (flags & ReqFlag.NO_FALLBACK) throw new BlockError('ENOTSUP', 'Operation not supported');
          await img.write(at, n, Buffer.alloc(n));
        };
        await plain(o, start - o);
        if (end > start) await img.write(start, end - start, undefined);
        await plain(end, o + l - end);
      },
      flush: () => file.flush(),
      blockStatus: (o, l) => img.blockStatus(o, l),
      truncate: (size) => img.truncate(size, isImageSizeValid(BigInt(size), h.clusterSize, h.tableSize)),
      drainBegin: () => img.drainBegin(),
      close: () => img.close(),
      // QEMU's qed has sector-based readv/writev: 512-byte requests.
      limits: { alignment: 512, canFua: false, canZero: true, canTrim: false },
      // QEMU's bdrv_qed_get_info: the cluster size and the need-check flag; no format-specific data.
      info: () => ({
        'cluster-size': h.clusterSize, 'dirty-flag': img.dirty,
        ...(backing.name !== undefined ? { 'backing-filename': backing.name } : {}),
        ...(backing.format !== undefined ? { 'backing-filename-format': backing.format } : {}),
      }),
    };
  },
  /**
   * QEMU's bdrv_qed_change_backing_file: a new header with the name right
   * after it (QED_F_BACKING_FORMAT_NO_PROBE for raw), written through the
   * file child while the node's image is closed; refused with ENOSPC when
   * it does not fit in the header clusters, and for a name when unknown
   * compat features may own the space after the header.
   */
  async setBackingFile(node, backingFile, backingFormat) {
    const file = node.child('file');
    if (!file) return;
    const head = Buffer.alloc(HEADER_SIZE);
    await readClipped(file, 0, head);
    if (backingFile !== undefined && head.readBigUInt64LE(24) !== 0n) throw new BlockError('ENOTSUP', 'Operation not supported');
    let features = head.readBigUInt64LE(16) & ~(F_BACKING_FILE | F_BACKING_FORMAT_NO_PROBE);
    const name = Buffer.from(backingFile ?? '', 'utf8');
    if (backingFile !== undefined) {
      features |= F_BACKING_FILE;
      if (backingFormat === 'raw') features |= F_BACKING_FORMAT_NO_PROBE;
    }
    head.writeBigUInt64LE(features, 16);
    head.writeUInt32LE(HEADER_SIZE, 56);
    head.writeUInt32LE(name.length, 60);
    if (HEADER_SIZE + name.length > head.readUInt32LE(12) * head.readUInt32LE(4)) throw new BlockError('ENOSPC', 'No space left on device');
    await file.write(0, Buffer.concat([head, name]));
    await file.flush();
    changedFormat.set(file, { format: backingFile === undefined ? undefined : backingFormat });
  },
  async createImage(filename, o) {
    // qemu-img's way (bdrv_qed_co_create_opts): the size rounded up to whole sectors, default geometry.
    const { head, l1Offset, l1Bytes } = qedLayout({ size: Math.ceil(o.size / 512) * 512, clusterSize: DEFAULT_CLUSTER_SIZE,
      tableSize: DEFAULT_TABLE_SIZE, backingFile: o.backingFile, backingFmt: o.backingFormat });
    const b = Buffer.alloc(l1Offset + l1Bytes);
    head.copy(b);
    await writeFile(filename, b);
  },
};
