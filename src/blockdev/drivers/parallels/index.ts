/**
 * parallels: Parallels (Virtuozzo) disk images as QEMU's block/parallels.c
 * opens them, read and write. Header checks: header.ts; the BAT and I/O:
 * image.ts; the format extension (dirty bitmaps), read-only opens only as
 * in QEMU: extension.ts.
 */
import { writeFile } from 'node:fs/promises';
import { obj, req } from '../../../qapi/types.ts';
import { BlockError } from '../../../util/errors.ts';
import { BlockdevRef } from '../../options.ts';
import { readClipped } from '../../child-io.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import { DEFAULT_CLUSTER_SIZE, HEADER_SIZE, INUSE_MAGIC, MEM_ALIGN, parallelsLayout, parseParallelsHeader, probeParallels } from './header.ts';
import { ParallelsImage } from './image.ts';
import { readFormatExtension } from './extension.ts';
import { NodeBitmaps, type BitmapStore } from '../../bitmaps/node-bitmaps.ts';
import type { DirtyBitmap } from '../../bitmaps/dirty-bitmap.ts';

/**
 * The bitmaps a read-only image's extension defines, as the node's own
 * (read-only, so never marked; QEMU stores no new ones in parallels images).
 */
function extensionStore(nodeName: string, bitmaps: DirtyBitmap[], length: () => number): BitmapStore {
  const store: BitmapStore = {
    bitmaps,
    nodeBitmaps: undefined as unknown as NodeBitmaps,
    checkCanStore() { throw new BlockError('ENOTSUP', `Can't store persistent bitmaps to ${nodeName}: Operation not supported`); },
    async added() { /* only persistent bitmaps reach a store, and checkCanStore refuses them */ },
    async removed() { /* the extension's bitmaps are not persistent: nothing on disk changes */ },
    async changed() { /* as removed() */ },
  };
  (store as { nodeBitmaps: NodeBitmaps }).nodeBitmaps = new NodeBitmaps(store, length);
  return store;
}

export const parallelsDriver: Driver = {
  name: 'parallels',
  kind: 'format',
  options: obj('BlockdevOptionsGenericFormat', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
  ]),
  probe: probeParallels,
  async createImage(filename, o) {
    // qemu-img's way (parallels_co_create_opts): sizes rounded up to whole sectors.
    const { head, dataOffset } = parallelsLayout(Math.ceil(o.size / 512) * 512, DEFAULT_CLUSTER_SIZE);
    const b = Buffer.alloc(Math.max(dataOffset, head.length));
    head.copy(b);
    await writeFile(filename, b);
  },
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const first = Buffer.alloc(HEADER_SIZE);
    await readClipped(file, 0, first);
    const h = parseParallelsHeader(first);
    const length = h.totalSectors * 512n;
    if (length > BigInt(Number.MAX_SAFE_INTEGER)) throw new BlockError('EINVAL', 'Parallels image size is too large for blockd');
    // QEMU reads header_size bytes (zeroes past the file's end); blockd keeps what lies inside the file.
    const keep = Math.min(h.headerSize, Math.max(Math.ceil(file.length() / MEM_ALIGN) * MEM_ALIGN, MEM_ALIGN));
    const head = Buffer.alloc(keep);
    await readClipped(file, 0, head);
    const img = new ParallelsImage(file, h, head);
    const rw = !ctx.readOnly;
    if (h.inuse === INUSE_MAGIC && rw) {
      throw new BlockError('EPERM', 'parallels: Image was not closed correctly; cannot be opened read/write');
    }
    let bitmaps: DirtyBitmap[] = [];
    if (h.extOff !== 0n) {
      // QEMU ignores the extension of a read-write image (with a warning) and reads it otherwise.
      if (rw) ctx.log.warn('Format Extension ignored in RW mode');
      else bitmaps = await readFormatExtension(file, h, Number(h.extOff) * 512);
    }
    if (rw) await img.updateHeader(true);
    return {
      length: () => Number(length),
      read: (o, buf) => img.read(o, buf),
      write: (o, buf) => img.write(o, buf),
      flush: () => img.flush(),
      blockStatus: async (o, l) => img.blockStatus(o, l),
      close: async () => { if (rw) await img.close(); },
      // QEMU's parallels has sector-based readv/writev: 512-byte requests; no write-zeroes of its own.
      limits: { alignment: 512, canFua: false, canZero: false, canTrim: false },
      ...(bitmaps.length ? { bitmapStore: extensionStore(ctx.nodeName, bitmaps, () => Number(length)) } : {}),
    };
  },
};
