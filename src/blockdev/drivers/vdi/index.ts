/**
 * vdi: VirtualBox disk images (QEMU's block/vdi.c), dynamic and static,
 * read and write. The image is a header sector, a block map (one
 * little-endian entry per 1 MiB block: its index in the data area, or
 * unallocated) and the data blocks. A write to an unallocated block
 * appends a whole block (zeroes around the data), then records it in the
 * map and the header's count, as QEMU does; reads of unallocated blocks are
 * zeroes. Header parsing and layout are header.ts.
 */
import { writeFile } from 'node:fs/promises';
import { obj, req } from '../../../qapi/types.ts';
import { BlockdevRef } from '../../options.ts';
import { Mutex } from '../qcow2/mutex.ts';
import { readClipped, writeGrowing } from '../../child-io.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import type { Extent } from '../../request.ts';
import { HEADER_SIZE, SECTOR, VDI_TYPE_STATIC, headerSector, isAllocated, parseVdiHeader, probeVdi, vdiLayout, type VdiHeader } from './header.ts';

class VdiImage {
  private readonly alloc = new Mutex();
  constructor(readonly file: BlockNode, readonly h: VdiHeader, private readonly bmap: Buffer) {}

  entry(block: number): number { return this.bmap.readUInt32LE(block * 4); }
  private where(entry: number, inBlock: number): number { return this.h.offsetData + entry * this.h.blockSize + inBlock; }

  /** Calls `fn` for each piece of [offset, offset+length) within one block. */
  private async eachBlock(offset: number, length: number, fn: (block: number, inBlock: number, n: number, done: number) => Promise<void>): Promise<void> {
    for (let done = 0; done < length;) {
      const block = Math.floor((offset + done) / this.h.blockSize);
      const inBlock = (offset + done) % this.h.blockSize;
      const n = Math.min(length - done, this.h.blockSize - inBlock);
      await fn(block, inBlock, n, done);
      done += n;
    }
  }

  read(offset: number, buf: Buffer): Promise<void> {
    return this.eachBlock(offset, buf.length, async (block, inBlock, n, done) => {
      const e = this.entry(block);
      const part = buf.subarray(done, done + n);
      if (isAllocated(e)) await readClipped(this.file, this.where(e, inBlock), part);
      else part.fill(0);
    });
  }

  write(offset: number, buf: Buffer): Promise<void> {
    return this.eachBlock(offset, buf.length, async (block, inBlock, n, done) => {
      const part = buf.subarray(done, done + n);
      if (!isAllocated(this.entry(block)) && await this.allocate(block, inBlock, part)) return;
      await writeGrowing(this.file, this.where(this.entry(block), inBlock), part);
    });
  }

  /** Writes a new block holding `part` at `inBlock`; false if another write allocated it meanwhile. */
  private allocate(block: number, inBlock: number, part: Buffer): Promise<boolean> {
    return this.alloc.run(async () => {
      if (isAllocated(this.entry(block))) return false;
      const e = this.h.blocksAllocated;
      const whole = Buffer.alloc(this.h.blockSize);
      part.copy(whole, inBlock);
      await writeGrowing(this.file, this.where(e, 0), whole);
      this.bmap.writeUInt32LE(e, block * 4);
      this.h.blocksAllocated = e + 1;
      await this.file.write(0, headerSector(this.h));
      const sector = Math.floor((block * 4) / SECTOR) * SECTOR;
      await writeGrowing(this.file, this.h.offsetBmap + sector, this.bmap.subarray(sector, sector + SECTOR));
      return true;
    });
  }

  /** QEMU's vdi_co_block_status: unallocated blocks are zero; a static image's blocks ask the file (BDRV_BLOCK_RECURSE). */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const block = Math.floor(offset / this.h.blockSize);
    const n = Math.min(length, this.h.blockSize - (offset % this.h.blockSize));
    const e = this.entry(block);
    if (!isAllocated(e)) return [{ offset, length: n, data: false, zero: true, allocated: true, depth: 1 }];
    const data: Extent = { offset, length: n, data: true, zero: false, allocated: true, depth: 1 };
    if (this.h.imageType !== VDI_TYPE_STATIC) return [data];
    const at = this.where(e, offset % this.h.blockSize);
    const flen = this.file.length();
    if (at >= flen) return [{ ...data, zero: true }];
    const [f] = await this.file.blockStatus(at, Math.min(n, flen - at));
    return [{ ...data, length: f.length, zero: f.zero }];
  }
}

export const vdiDriver: Driver = {
  name: 'vdi',
  kind: 'format',
  options: obj('BlockdevOptionsGenericFormat', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
  ]),
  probe: probeVdi,
  async createImage(filename, o) {
    // drive-mirror/drive-backup targets: a dynamic image, its header and map only.
    await writeFile(filename, vdiLayout(o.size, false).head);
  },
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const sector = Buffer.alloc(HEADER_SIZE);
    await readClipped(file, 0, sector);
    const h = parseVdiHeader(sector);
    // The map entries the disk uses (a hostile blocks_in_image cannot make blockd read more), whole sectors.
    const used = Math.ceil(h.diskSize / h.blockSize);
    const bmap = Buffer.alloc(Math.ceil((used * 4) / SECTOR) * SECTOR);
    await readClipped(file, h.offsetBmap, bmap);
    const img = new VdiImage(file, h, bmap);
    return {
      length: () => h.diskSize,
      read: (o, buf) => img.read(o, buf),
      write: (o, buf) => img.write(o, buf),
      flush: () => file.flush(),
      blockStatus: (o, l) => img.blockStatus(o, l),
      limits: { canFua: false },
      // QEMU's vdi_get_info: the block size; no format-specific data.
      info: () => ({ 'cluster-size': h.blockSize, 'dirty-flag': false }),
    };
  },
};
