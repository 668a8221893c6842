/**
 * The VMDK disk over its extents (QEMU's vmdk_co_preadv, vmdk_pwritev,
 * vmdk_co_pwrite_zeroes, vmdk_co_block_status), all under one lock as in
 * QEMU. Unallocated grains read from the backing file (once its CID is
 * found to match parentCID) or as zeroes; the first write after open gives
 * the descriptor a new random CID (the reported CID stays the one read at
 * open, as in QEMU). Write-zeroes uses zeroed grains where the extent has
 * them and the range covers whole grains, else plain zero writes, split at
 * grain boundaries as QEMU's block layer splits it.
 */
import { randomInt } from 'node:crypto';
import { BlockError } from '../../../util/errors.ts';
import { Mutex } from '../qcow2/mutex.ts';
import { readClipped } from '../../child-io.ts';
import type { DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import { ReqFlag, type Extent } from '../../request.ts';
import { DESC_SIZE, readCid, cString, rewriteCid } from './descriptor.ts';
import { GTE_ZEROED, type CowSource, type VmdkExtent } from './extent.ts';
import { SECTOR } from './header.ts';
import type { VmdkState } from './open.ts';

/** The open images, by the ops their nodes were given, so an overlay can read its vmdk backing file's CID. */
const STATES = new WeakMap<DriverOps, VmdkDisk>();

export class VmdkDisk implements CowSource {
  private readonly lock = new Mutex();
  private cidUpdated = false;
  private cidChecked = false;
  readonly size: number;

  constructor(readonly s: VmdkState, private readonly backingNode: () => BlockNode | undefined) {
    const last = s.extents[s.extents.length - 1];
    this.size = last ? last.end * SECTOR : 0;
  }

  register(ops: DriverOps): DriverOps { STATES.set(ops, this); return ops; }

  private find(offset: number, from = 0): VmdkExtent {
    const sector = Math.floor(offset / SECTOR);
    for (let i = from; i < this.s.extents.length; i++) if (sector < this.s.extents[i].end) return this.s.extents[i];
    throw new BlockError('EIO', 'Input/output error');
  }

  /** This image's CID as its descriptor says now (QEMU's vmdk_read_cid). */
  async currentCid(): Promise<number | undefined> {
    const raw = Buffer.alloc(DESC_SIZE);
    try {
      await readClipped(this.s.file, this.s.descOffset, raw);
    } catch {
      return undefined;
    }
    raw[DESC_SIZE - 1] = 0;
    return readCid(cString(raw), false);
  }

  /** QEMU's vmdk_is_cid_valid: a vmdk backing file whose CID is our parentCID (remembered once true). */
  private async cidValid(): Promise<boolean> {
    const b = this.backingNode();
    if (this.cidChecked || !b) return true;
    const parent = STATES.get(b.ops);
    if (!parent || b.driver.name !== 'vmdk') return false;
    if ((await parent.currentCid()) !== this.s.parentCid) return false;
    this.cidChecked = true;
    return true;
  }

  async backing(): Promise<{ node: BlockNode; valid: boolean } | undefined> {
    const node = this.backingNode();
    return node ? { node, valid: await this.cidValid() } : undefined;
  }

  read(offset: number, buf: Buffer): Promise<void> {
    return this.lock.run(async () => {
      let e: VmdkExtent | undefined;
      for (let done = 0; done < buf.length;) {
        const pos = offset + done;
        e = this.find(pos, e ? this.s.extents.indexOf(e) : 0);
        const r = await e.lookup(pos);
        const inCluster = e.inCluster(pos);
        const n = Math.min(buf.length - done, e.clusterBytes - inCluster);
        const part = buf.subarray(done, done + n);
        if (r.kind === 'ok') {
          await e.read(r.clusterOffset, inCluster, part);
        } else if (this.backingNode() && r.kind !== 'zeroed') {
          if (!await this.cidValid()) throw new BlockError('EINVAL', 'Invalid argument');
          const b = this.backingNode()!;
          const inB = Math.max(0, Math.min(n, b.length() - pos));
          if (inB > 0) await b.read(pos, part.subarray(0, inB));
          part.fill(0, inB);
        } else {
          part.fill(0);
        }
        done += n;
      }
    });
  }

  write(offset: number, buf: Buffer): Promise<void> {
    return this.lock.run(() => this.pwritev(offset, buf.length, buf, false, false));
  }

  /**
   * QEMU's bdrv_co_do_pwrite_zeroes over vmdk: pieces split at the grain
   * size (the first up to a boundary, the last from one), each tried with
   * zeroed grains (a dry run first) and written as zeroes where that fails.
   */
  async writeZeroes(offset: number, length: number, flags: number): Promise<void> {
    const align = Math.max(SECTOR, ...this.s.extents.filter((e) => !e.flat).map((e) => e.clusterBytes));
    let head = offset % align;
    const tail = (offset + length) % align;
    for (let pos = offset, left = length; left > 0;) {
      let num = left;
      if (head) {
        num = Math.min(left, align - head);
        head = (head + num) % align;
      } else if (tail && num > align) {
        num -= tail;
      }
      const done = await this.lock.run(async () => {
        try {
          await this.pwritev(pos, num, undefined, true, true);
          await this.pwritev(pos, num, undefined, true, false);
          return true;
        } catch (e) {
          if ((e as BlockError).code !== 'ENOTSUP') throw e;
          return false;
        }
      });
      if (!done && flags & ReqFlag.NO_FALLBACK) throw new BlockError('ENOTSUP', 'Operation not supported');
      if (!done) await this.write(pos, Buffer.alloc(num));
      pos += num;
      left -= num;
    }
  }

  /** QEMU's vmdk_pwritev (`data` undefined: zeroes through zeroed grains, or ENOTSUP). */
  private async pwritev(offset: number, bytes: number, data: Buffer | undefined, zeroed: boolean, dryRun: boolean): Promise<void> {
    let e: VmdkExtent | undefined;
    for (let done = 0; done < bytes;) {
      const pos = offset + done;
      e = this.find(pos, e ? this.s.extents.indexOf(e) : 0);
      const inCluster = e.inCluster(pos);
      let n = Math.min(bytes - done, e.clusterBytes - inCluster);
      const found = await e.lookup(pos);
      let clusterOffset = found.kind === 'ok' ? found.clusterOffset : 0;
      let fresh = false;
      if (e.compressed) {
        if (found.kind === 'ok') throw new BlockError('EIO', 'Could not write to allocated cluster for streamOptimized');
      }
      if (!zeroed && found.kind !== 'ok' && found.kind !== 'error') {
        // An unallocated grain table cannot take a grain (QEMU only creates images with every table present).
        if (!found.meta) throw new BlockError('EIO', 'Input/output error');
        const compressed = e.compressed;
        const at = await e.allocate(pos, found, compressed ? 0 : inCluster, compressed ? 0 : inCluster + n, this);
        if (at === undefined) throw new BlockError('EINVAL', 'Invalid argument');
        clusterOffset = at;
        fresh = true;
      }
      if (found.kind === 'error') throw new BlockError('EINVAL', 'Invalid argument');
      if (zeroed) {
        if (!(e.g?.hasZeroGrain && inCluster === 0 && n >= e.clusterBytes)) throw new BlockError('ENOTSUP', 'Operation not supported');
        n = e.clusterBytes;
        if (!dryRun && found.kind !== 'zeroed') {
          if (!found.meta) throw new BlockError('EIO', 'Input/output error');
          await e.l2Update(found.meta, GTE_ZEROED);
        }
      } else {
        await e.write(clusterOffset, inCluster, data!.subarray(done, done + n), pos);
        if (fresh) await e.l2Update(found.meta!, clusterOffset / SECTOR);
      }
      done += n;
      if (!this.cidUpdated) {
        await this.writeCid(randomInt(0, 2 ** 32 - 1));
        this.cidUpdated = true;
      }
    }
  }

  /** QEMU's vmdk_write_cid: the descriptor area (or the whole descriptor file) rewritten and flushed. */
  private async writeCid(cid: number): Promise<void> {
    let size = DESC_SIZE;
    if (this.s.descOffset === 0) {
      size = this.s.file.length();
      if (size > 16 * 1024 * 1024) throw new BlockError('EOVERFLOW', 'VMDK description file too big');
    }
    const raw = Buffer.alloc(size);
    await readClipped(this.s.file, this.s.descOffset, raw);
    const out = rewriteCid(raw, cid);
    if (!out) throw new BlockError('EINVAL', 'Invalid argument');
    if (this.s.descOffset + out.length > this.s.file.length()) await this.s.file.truncate(this.s.descOffset + out.length);
    await this.s.file.write(this.s.descOffset, out);
    await this.s.file.flush();
  }

  /** QEMU's vmdk_co_block_status, with the generic layer's handling of unallocated ranges and flat extents' files. */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const e = this.find(offset);
    const r = await this.lock.run(() => e.lookup(offset));
    const inCluster = e.inCluster(offset);
    const n = Math.min(length, e.clusterBytes - inCluster);
    if (r.kind === 'error') throw new BlockError('EIO', 'Input/output error');
    if (r.kind === 'zeroed') return [{ offset, length: n, data: false, zero: true, allocated: true, depth: 1 }];
    if (r.kind === 'unalloc') {
      const b = this.backingNode();
      if (b && offset < b.length()) {
        const [x] = await b.blockStatus(offset, Math.min(n, b.length() - offset));
        return [{ offset, length: x.length, data: x.data, zero: x.zero, allocated: false, depth: x.depth ? x.depth + 1 : 0 }];
      }
      return [{ offset, length: n, data: false, zero: true, allocated: false, depth: 0 }];
    }
    const data: Extent = { offset, length: n, data: true, zero: false, allocated: true, depth: 1 };
    if (!e.flat) return [data];
    // BDRV_BLOCK_RECURSE: the flat extent's file says where it holds zeroes (past its end: all zero).
    const at = (r as { clusterOffset: number }).clusterOffset + inCluster;
    const flen = e.file.length();
    if (at >= flen) return [{ ...data, zero: true }];
    const [f] = await e.file.blockStatus(at, Math.min(n, flen - at));
    return [{ ...data, length: f.length, zero: f.zero }];
  }

  async flush(): Promise<void> {
    const files = new Set([this.s.file, ...this.s.extents.map((e) => e.file)]);
    for (const f of files) await f.flush();
  }
}
