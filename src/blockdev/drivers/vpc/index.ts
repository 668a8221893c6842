/**
 * vpc: Virtual PC / Hyper-V VHD images (QEMU's block/vpc.c), fixed and
 * dynamic, read and write. A fixed image is the disk followed by a footer;
 * a dynamic one has a block allocation table (BAT) whose entries point at
 * blocks, each a sector bitmap and the block's data. A write to an
 * unallocated block appends it where the footer was (bitmap all ones, the
 * footer rewritten after it, then the BAT entry), as QEMU does; metadata
 * writes are flushed as QEMU's bdrv_pwrite_sync. Header parsing and layout:
 * header.ts.
 */
import { obj, req } from '../../../qapi/types.ts';
import { BlockError } from '../../../util/errors.ts';
import { BlockdevRef } from '../../options.ts';
import { Mutex } from '../qcow2/mutex.ts';
import { readClipped, writeGrowing } from '../../child-io.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import type { Extent } from '../../request.ts';
import { DYN_HEADER_SIZE, FOOTER_SIZE, UNALLOCATED, VHD_FIXED, VHD_MAX_SECTORS, isFooter, parseDynHeader, parseFooter, probeVpc, type VpcFooter } from './header.ts';

const MAX_READ = 2n ** 63n - 1n;

class DynamicVpc {
  private readonly lock = new Mutex();
  /** Blocks whose bitmap was set to all ones since open (QEMU rewrites it on a block's first write). */
  private readonly bitmapDone = new Set<number>();
  constructor(private readonly file: BlockNode, private readonly footer: VpcFooter, private readonly bat: Uint32Array,
    private readonly batOffset: number, readonly blockSize: number, private readonly bitmapSize: number,
    private freeOffset: number, private readonly size: number) {}

  private entry(block: number): number { return block < this.bat.length ? this.bat[block] : UNALLOCATED; }
  private dataAt(block: number, inBlock: number): number { return 512 * this.bat[block] + this.bitmapSize + inBlock; }

  private async each(offset: number, length: number, fn: (block: number, inBlock: number, n: number, done: number) => Promise<void>): Promise<void> {
    for (let done = 0; done < length;) {
      const block = Math.floor((offset + done) / this.blockSize);
      const inBlock = (offset + done) % this.blockSize;
      const n = Math.min(length - done, this.blockSize - inBlock);
      await fn(block, inBlock, n, done);
      done += n;
    }
  }

  read(offset: number, buf: Buffer): Promise<void> {
    return this.each(offset, buf.length, async (block, inBlock, n, done) => {
      const part = buf.subarray(done, done + n);
      if (this.entry(block) === UNALLOCATED) part.fill(0);
      else await readClipped(this.file, this.dataAt(block, inBlock), part);
    });
  }

  write(offset: number, buf: Buffer): Promise<void> {
    return this.each(offset, buf.length, async (block, inBlock, n, done) => {
      await this.lock.run(async () => {
        if (this.entry(block) === UNALLOCATED) await this.allocate(block);
        else if (!this.bitmapDone.has(block)) await this.syncWrite(512 * this.bat[block], Buffer.alloc(this.bitmapSize, 0xff));
        this.bitmapDone.add(block);
      });
      await writeGrowing(this.file, this.dataAt(block, inBlock), buf.subarray(done, done + n));
    });
  }

  private async syncWrite(at: number, b: Buffer): Promise<void> {
    if (b.length === 0) return;
    await writeGrowing(this.file, at, b);
    await this.file.flush();
  }

  /** QEMU's alloc_block: bitmap at the old end, the footer after the new block, then the BAT entry. */
  private async allocate(block: number): Promise<void> {
    if (block * this.blockSize > this.size) throw new BlockError('EINVAL', 'Invalid argument');
    const at = this.freeOffset;
    await this.syncWrite(at, Buffer.alloc(this.bitmapSize, 0xff));
    const next = at + this.bitmapSize + this.blockSize;
    await this.syncWrite(next, this.footer.raw);
    const e = Buffer.alloc(4);
    e.writeUInt32BE(at / 512);
    await this.syncWrite(this.batOffset + 4 * block, e);
    this.bat[block] = at / 512;
    this.freeOffset = next;
  }

  /** QEMU's vpc_co_block_status: one allocated block, or a run of unallocated ones (zero). */
  blockStatus(offset: number, length: number): Extent[] {
    const end = offset + length;
    const first = Math.floor(offset / this.blockSize);
    const blockEnd = Math.min(end, (first + 1) * this.blockSize);
    if (this.entry(first) !== UNALLOCATED) return [{ offset, length: blockEnd - offset, data: true, zero: false, allocated: true, depth: 1 }];
    let at = blockEnd;
    while (at < end && this.entry(Math.floor(at / this.blockSize)) === UNALLOCATED) at = Math.min(end, at + this.blockSize);
    return [{ offset, length: at - offset, data: false, zero: true, allocated: true, depth: 1 }];
  }
}

/** Opens the dynamic part: header, BAT and where the next block goes (QEMU's checks and texts). */
async function openDynamic(file: BlockNode, footer: VpcFooter): Promise<DynamicVpc> {
  const hdr = Buffer.alloc(DYN_HEADER_SIZE);
  if (footer.dataOffset > MAX_READ - 1024n) throw new BlockError('EINVAL', 'Error reading dynamic VHD header');
  if (footer.dataOffset < BigInt(file.length())) await readClipped(file, Number(footer.dataOffset), hdr);
  const dyn = parseDynHeader(hdr, footer.totalSectors);
  const size = footer.totalSectors * 512;
  const tableBytes = BigInt(dyn.maxTableEntries) * 4n;
  if (dyn.tableOffset > MAX_READ - tableBytes) throw new BlockError('EINVAL', 'Error reading pagetable');
  const fileLen = BigInt(file.length());
  // The first free byte is past the BAT and every block; a BAT reaching past the end of the file is a truncated image.
  const tableEnd = dyn.tableOffset + tableBytes;
  const truncated = () => new BlockError('EINVAL', 'block-vpc: free_data_block_offset points after the end of file. The image has been truncated.');
  if (((tableEnd + 511n) / 512n) * 512n > fileLen) throw truncated();
  const raw = Buffer.alloc(Number(tableBytes));
  await readClipped(file, Number(dyn.tableOffset), raw);
  let free = Number(((tableEnd + 511n) / 512n) * 512n);
  const used = Math.min(dyn.maxTableEntries, Math.ceil(size / dyn.blockSize));
  const bat = new Uint32Array(used);
  for (let i = 0; i < dyn.maxTableEntries; i++) {
    const v = raw.readUInt32BE(i * 4);
    if (i < used) bat[i] = v;
    if (v !== UNALLOCATED) free = Math.max(free, 512 * v + dyn.bitmapSize + dyn.blockSize);
  }
  if (free > file.length()) throw truncated();
  return new DynamicVpc(file, footer, bat, Number(dyn.tableOffset), dyn.blockSize, dyn.bitmapSize, free, size);
}

export const vpcDriver: Driver = {
  name: 'vpc',
  kind: 'format',
  options: obj('BlockdevOptionsGenericFormat', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
  ]),
  probe: probeVpc,
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const sector = Buffer.alloc(FOOTER_SIZE);
    await readClipped(file, 0, sector);
    let fixed = false;
    if (!isFooter(sector)) {
      // A fixed image has its footer only at the end.
      const len = file.length();
      if (len < FOOTER_SIZE) throw new BlockError('EINVAL', 'File too small for a VHD header');
      await file.read(len - FOOTER_SIZE, sector);
      if (!isFooter(sector) || sector.readUInt32BE(60) !== VHD_FIXED) throw new BlockError('EINVAL', 'invalid VPC image');
      fixed = true;
    }
    const footer = parseFooter(sector);
    if (footer.totalSectors > VHD_MAX_SECTORS) {
      throw new BlockError('EOVERFLOW', `Could not open '${file.ops.filename?.() ?? file.nodeName}': File too large`);
    }
    const size = footer.totalSectors * 512;
    // The dynamic parts are read (and checked) whenever the footer is at the start; the footer's type picks the I/O.
    const img = fixed ? undefined : await openDynamic(file, footer);
    const common = {
      length: () => size,
      flush: () => file.flush(),
      limits: { canFua: false },
    };
    if (!img || footer.type === VHD_FIXED) {
      return {
        ...common,
        read: (o, buf) => readClipped(file, o, buf),
        write: (o, buf) => writeGrowing(file, o, buf),
        // QEMU: data at the same offset in the file, whose zeroes show (BDRV_BLOCK_RECURSE).
        async blockStatus(o, l) {
          const flen = file.length();
          if (o >= flen) return [{ offset: o, length: l, data: true, zero: true, allocated: true, depth: 1 }];
          const [f] = await file.blockStatus(o, Math.min(l, flen - o));
          return [{ offset: o, length: f.length, data: true, zero: f.zero, allocated: true, depth: 1 }];
        },
        info: () => ({ 'dirty-flag': false }),
      };
    }
    return {
      ...common,
      read: (o, buf) => img.read(o, buf),
      write: (o, buf) => img.write(o, buf),
      blockStatus: async (o, l) => img.blockStatus(o, l),
      info: () => ({ 'cluster-size': img.blockSize, 'dirty-flag': false }),
    };
  },
};
