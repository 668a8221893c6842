/**
 * One open qcow2 image: the write paths (allocating writes with copy-on-write,
 * extended-L2 subclusters, write-zeroes, discard, L1 growth, truncate, flush,
 * close) on top of Qcow2Base. The driver (index.ts) wires it to the block layer.
 */
import { BlockError } from '../../../util/errors.ts';
import { ReqFlag } from '../../request.ts';
import { Autoclear, Compat, HeaderField, Incompat } from './header.ts';
import { ALL_SUBCLUSTERS, compressedDescriptor, isCopied, makeEntry } from './l2.ts';
import { hex } from './refcount.ts';
import { Qcow2Base, type ClusterEntry, type FreeReason } from './image-base.ts';
import { repairRefcounts } from './check.ts';
import { allocBytes, compressCluster, compressedEntry, compressionRefusal, type ByteAllocator } from './compress-write.ts';

export type { ClusterEntry, ImageSettings, OverlapName, Run } from './image-base.ts';

export class Qcow2Image extends Qcow2Base {
  // ---- writes ----

  private clusterSpan(offset: number, length: number): [number, number] {
    const cs = this.cs;
    return [Math.floor(offset / cs) * cs, Math.ceil((offset + length) / cs) * cs];
  }

  /** A node reopened read-write does its open-time header work before its first change. */
  pendingActivation = false;
  private activating?: Promise<void>;

  async activate(): Promise<void> {
    if (!this.pendingActivation) return;
    this.activating ??= (async () => {
      if (this.dirty) {
        await repairRefcounts(this);
        await this.setIncompat(this.h.incompatible & ~Incompat.DIRTY);
        this.dirty = false;
      }
      await this.clearUnknownAutoclear();
      await this.markBitmapsInUse();
      this.pendingActivation = false;
    })().finally(() => { this.activating = undefined; });
    await this.activating;
  }

  async write(offset: number, buf: Buffer): Promise<void> {
    this.checkWritable();
    if (this.pendingActivation) await this.activate();
    const [a, b] = this.clusterSpan(offset, buf.length);
    const release = this.clusterLock.tryAcquire(a, b) ?? await this.clusterLock.acquire(a, b);
    try {
      let pos = 0;
      while (pos < buf.length) pos += await this.writeStep(offset + pos, buf.subarray(pos));
    } finally {
      release();
    }
  }

  /** Why compressed writes cannot be done here though qsd's qcow2 does them (zstd with an addon built before its compressor). */
  compressRefusal(): string | undefined {
    return compressionRefusal(this.h.compressionType);
  }

  /** Where the next compressed cluster goes (QEMU's free_byte_offset; 0: a new host cluster). */
  private freeByteOffset = 0;

  /**
   * Compressed write (QEMU's qcow2_co_pwritev_compressed_part): whole
   * clusters (the image's last one may be short, padded with zeroes), each
   * into a guest cluster nothing is allocated to (else EIO, as QEMU:
   * compression never overwrites); a cluster that does not compress below
   * its size is written normally.
   */
  async writeCompressed(offset: number, buf: Buffer): Promise<void> {
    this.checkWritable();
    if (this.pendingActivation) await this.activate();
    const cs = this.cs;
    if (this.hasDataFile) throw new BlockError('ENOTSUP', 'Operation not supported');
    if (this.crypto) throw new BlockError('ENOTSUP', 'blockd does not write compressed clusters into an encrypted image');
    const refused = this.compressRefusal();
    if (refused) throw new BlockError('ENOTSUP', refused);
    if (offset % cs !== 0 || (buf.length % cs !== 0 && offset + buf.length !== this.size)) throw new BlockError('EINVAL', 'Invalid argument');
    const allocator: ByteAllocator = {
      clusterSize: cs,
      refcountMax: this.refcounts.max,
      getRefcount: (c) => this.refcounts.get(c),
      allocCluster: () => this.refcounts.alloc(1),
      addRef: (c) => this.refcounts.update(c, 1, 1),
    };
    for (let pos = 0; pos < buf.length; pos += cs) {
      const part = buf.subarray(pos, Math.min(buf.length, pos + cs));
      const at = offset + pos;
      const whole = part.length === cs ? part : Buffer.concat([part, Buffer.alloc(cs - part.length)]);
      const out = await compressCluster(this.h.compressionType, whole, cs);
      if (!out) { await this.write(at, part); continue; }
      const c = at / cs;
      const release = await this.clusterLock.acquire(at, at + cs);
      try {
        const e = await this.entry(c);
        if (e.type === 'compressed' || e.host !== 0) throw new BlockError('EIO', 'Input/output error');
        await this.markDirtyForLazy();
        const host = await this.meta.run(async () => {
          this.file.debugEvent('cluster_alloc_bytes');
          const r = await allocBytes(allocator, this.freeByteOffset, out.length);
          this.freeByteOffset = r.next;
          return r.offset;
        });
        this.checkOverlap(host, out.length, 'write');
        this.file.debugEvent('write_compressed');
        await this.writeTo(this.file, host, out);
        const ent = compressedEntry(host, out.length, this.clusterBits);
        await this.meta.run(async () => {
          // The refcounts of the bytes reach the disk before the entry that uses them.
          if (!this.settings.lazyRefcounts) await this.l2Cache.setDependency(this.refcounts.cache);
          this.l2Cache.needsBarrier = true;
          this.file.debugEvent('l2_update_compressed');
          await this.setEntry(c, ent.hi, ent.lo, 0, 0);
        });
        this.lastCompressed = undefined;
      } finally {
        release();
      }
    }
  }

  /** Writes a prefix of `buf` at guest `offset`; returns how many bytes it wrote. */
  private async writeStep(offset: number, buf: Buffer): Promise<number> {
    const cs = this.cs;
    const c0 = Math.floor(offset / cs);
    // Cached lookups cost no promise: this is every write's path.
    const e0 = this.cachedEntry(c0) ?? await this.loadEntry(c0);
    const end = offset + buf.length;
    if (this.inPlace(e0, offset, Math.min(end, (c0 + 1) * cs))) {
      // Extend over following clusters that are in place and contiguous on the host.
      let n = 1;
      while ((c0 + n) * cs < end && n < 4096) {
        const e = this.cachedEntry(c0 + n) ?? await this.loadEntry(c0 + n);
        if (e.host !== e0.host + n * cs || !this.inPlace(e, (c0 + n) * cs, Math.min(end, (c0 + n + 1) * cs))) break;
        n++;
      }
      const len = Math.min(end, (c0 + n) * cs) - offset;
      const host = e0.host + (offset - c0 * cs);
      if (!this.hasDataFile && e0.host >= this.usedEnd(this.file)) {
        // Never allocated by anyone who wrote the file: writing would grow it without bound.
        throw this.signalCorruption(`Data cluster offset ${hex(e0.host)} beyond the end of the image file`);
      }
      this.checkOverlap(host, len, 'write');
      await this.writeData(host, buf.subarray(0, len), offset);
      return len;
    }
    if (this.extL2 && e0.type === 'normal' && isCopied(e0.hi)) {
      return this.fillSubclusters(c0, e0, offset, buf);
    }
    // Allocate a run of clusters (within one L2 table) none of which can be written in place.
    let n = 1;
    const tableEnd = (Math.floor(c0 / this.l2Entries) + 1) * this.l2Entries;
    while ((c0 + n) * cs < end && c0 + n < tableEnd && n < 4096) {
      const e = await this.entry(c0 + n);
      if (e.type === 'normal' && isCopied(e.hi)) break;
      n++;
    }
    return this.allocateAndWrite(c0, n, offset, buf);
  }

  /** A cluster whose touched part can be overwritten where it is. */
  private inPlace(e: ClusterEntry, from: number, to: number): boolean {
    if (e.type !== 'normal' || !isCopied(e.hi)) return false;
    if (!this.extL2) return true;
    const base = Math.floor(from / this.cs) * this.cs;
    const s0 = Math.floor((from - base) / this.subcluster);
    const s1 = Math.ceil((to - base) / this.subcluster);
    for (let s = s0; s < s1; s++) if (!((e.alloc >>> s) & 1)) return false;
    return true;
  }

  /** Copy-on-write content of guest [offset, offset+len) as the guest sees it now (zeroes past the end). */
  private async readGuest(offset: number, buf: Buffer): Promise<void> {
    const n = Math.max(0, Math.min(buf.length, this.size - offset));
    if (n > 0) await this.read(offset, buf.subarray(0, n));
    buf.fill(0, n);
  }

  private async markDirtyForLazy(): Promise<void> {
    if (!this.settings.lazyRefcounts || this.dirty) return;
    await this.refcounts.cache.flush();
    await this.setIncompat(this.h.incompatible | Incompat.DIRTY);
    this.dirty = true;
  }

  async setIncompat(bits: bigint): Promise<void> {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(bits);
    await this.file.write(HeaderField.INCOMPAT, b);
    await this.file.flush();
    this.h.incompatible = bits;
  }

  private async allocateAndWrite(c0: number, n: number, offset: number, buf: Buffer): Promise<number> {
    const cs = this.cs;
    const runStart = c0 * cs;
    const runEnd = (c0 + n) * cs;
    const end = Math.min(offset + buf.length, runEnd);
    const olds: ClusterEntry[] = [];
    for (let i = 0; i < n; i++) olds.push(await this.entry(c0 + i));
    // With subclusters, an unallocated cluster only needs the touched subclusters written.
    const gHead = this.extL2 && olds[0].type === 'unallocated' ? this.subcluster : cs;
    const gTail = this.extL2 && olds[n - 1].type === 'unallocated' ? this.subcluster : cs;
    const wStart = Math.floor((offset - runStart) / gHead) * gHead + runStart;
    const wEnd = Math.min(runEnd, Math.ceil((end - runStart) / gTail) * gTail + runStart);
    // Copy-on-write regions that are allocated nowhere in the chain need not be read (QEMU's
    // is_zero_cow): most allocating writes into a fresh image or over a sparse base.
    // Encrypted clusters hold no plain zeroes: every byte of a new cluster is written, encrypted.
    const cowZero = !this.crypto && !this.extL2 &&
      (offset === wStart || await this.zeroCow(olds[0], wStart, offset)) && (end === wEnd || await this.zeroCow(olds[n - 1], end, wEnd));
    let data: Buffer | undefined;
    if (!cowZero) {
      data = Buffer.alloc(wEnd - wStart);
      if (offset > wStart) await this.readGuest(wStart, data.subarray(0, offset - wStart));
      buf.copy(data, offset - wStart, 0, end - offset);
      if (wEnd > end) await this.readGuest(end, data.subarray(end - wStart));
    }

    await this.markDirtyForLazy();
    let host: number;
    let fresh = false;
    if (this.hasDataFile) {
      host = runStart;
    } else {
      host = await this.meta.run(async () => {
        const h = await this.refcounts.alloc(n);
        // Clusters past the end of the file have never held anything: they read as zeroes.
        fresh = h >= this.usedEnd(this.data);
        return h;
      });
    }
    try {
      let at = host + (wStart - runStart);
      this.checkOverlap(at, wEnd - wStart, 'write');
      let out: Buffer;
      // QEMU's handle_alloc_space: a copy-on-write region that reads as zeroes is not written;
      // the clusters' space is zeroed fast instead (which also allocates it in the file, as
      // qcow2's metadata-preallocation heuristic expects of a written image).
      const cow = offset > wStart || end < wEnd;
      const zeroed = cowZero && cow && await this.zeroSpace(at, wEnd - wStart);
      if (cowZero && (fresh || zeroed)) {
        // Only the guest's bytes are written: the rest reads as zeroes (never used, or zeroed).
        out = buf.subarray(0, end - offset);
        at = host + (offset - runStart);
      } else {
        if (!data) {
          data = Buffer.alloc(wEnd - wStart);
          buf.copy(data, offset - wStart, 0, end - offset);
        }
        // Written whole, as QEMU does: the copy-on-write regions hold data of the chain
        // (also where it reads as zeroes), and the file's allocation shows it.
        out = data;
      }
      // Into never-used clusters, the file is extended over all of them all the same.
      await this.writeData(at, out, runStart + (at - host), fresh ? host + n * cs : 0, out !== buf && out.buffer === data?.buffer);
    } catch (e) {
      if (!this.hasDataFile) await this.meta.run(() => this.free(host, n, 'other')).catch(() => undefined);
      throw e;
    }
    await this.linkClusters(c0, n, host, olds, wStart, wEnd);
    return end - offset;
  }

  /** Whether a copy-on-write region [from, to) of a cluster is allocated nowhere in the chain (QEMU's is_unallocated). */
  private async zeroCow(e: ClusterEntry, from: number, to: number): Promise<boolean> {
    if (!this.backing) return readsAsZero(e);
    if (e.type !== 'unallocated') return false;
    const b = this.backing;
    const inBacking = Math.min(to, b.length()) - from;
    if (inBacking <= 0) return true;
    return (await b.blockStatus(from, inBacking)).every((x) => x.depth === 0);
  }

  /** Zeroes data-file space fast (no writing of zeroes); false where the file cannot. */
  private async zeroSpace(at: number, length: number): Promise<boolean> {
    if (this.crypto) return false;
    this.file.debugEvent('cluster_alloc_space');
    try {
      await this.zeroTo(this.data, at, length, ReqFlag.NO_FALLBACK);
      return true;
    } catch (e) {
      if (e instanceof BlockError && e.code === 'ENOTSUP') return false;
      throw e;
    }
  }

  /** After the data of an allocating write is written: points the L2 entries at it and drops the old clusters. */
  private async linkClusters(c0: number, n: number, host: number, olds: ClusterEntry[], wStart: number, wEnd: number): Promise<void> {
    const cs = this.cs;
    const runStart = c0 * cs;
    await this.meta.run(async () => {
      if (!this.settings.lazyRefcounts && !this.hasDataFile) await this.l2Cache.setDependency(this.refcounts.cache);
      this.l2Cache.needsBarrier = true;
      for (let i = 0; i < n; i++) {
        const cStart = runStart + i * cs;
        let alloc = ALL_SUBCLUSTERS;
        let zero = 0;
        if (this.extL2 && olds[i].type === 'unallocated') {
          const s0 = Math.max(0, Math.floor((wStart - cStart) / this.subcluster));
          const s1 = Math.min(32, Math.ceil((wEnd - cStart) / this.subcluster));
          alloc = rangeMask(s0, s1);
          zero = olds[i].zero & ~alloc;
        }
        const ent = makeEntry(host + i * cs, true);
        await this.setEntry(c0 + i, ent.hi, ent.lo, alloc, zero);
      }
      for (const old of olds) await this.freeEntry(old, 'other');
    });
  }

  /** Extended L2: writes into unallocated or zero subclusters of an allocated cluster. */
  private async fillSubclusters(c: number, e: ClusterEntry, offset: number, buf: Buffer): Promise<number> {
    const cs = this.cs;
    const sc = this.subcluster;
    const cStart = c * cs;
    const end = Math.min(offset + buf.length, cStart + cs);
    const wStart = Math.floor((offset - cStart) / sc) * sc + cStart;
    const wEnd = Math.ceil((end - cStart) / sc) * sc + cStart;
    const data = Buffer.alloc(wEnd - wStart);
    if (offset > wStart) await this.readGuest(wStart, data.subarray(0, offset - wStart));
    buf.copy(data, offset - wStart, 0, end - offset);
    if (wEnd > end) await this.readGuest(end, data.subarray(end - wStart));
    const at = e.host + (wStart - cStart);
    this.checkOverlap(at, data.length, 'write');
    await this.writeData(at, data, wStart, 0, true);
    await this.meta.run(async () => {
      this.l2Cache.needsBarrier = true;
      const mask = rangeMask((wStart - cStart) / sc, (wEnd - cStart) / sc);
      await this.setEntry(c, e.hi, e.lo, e.alloc | mask, e.zero & ~mask);
    });
    return end - offset;
  }

  /** Sets the L2 entry of guest cluster `c`, allocating the L2 table if needed. Meta lock held. */
  private async setEntry(c: number, hi: number, lo: number, alloc: number, zero: number): Promise<void> {
    const l1i = Math.floor(c / this.l2Entries);
    const l2i = c % this.l2Entries;
    let table = this.l2TableOffset(l1i);
    if (table === 0 || !isCopied(this.l1Entry(l1i).hi)) table = await this.allocL2(l1i, table);
    const slice = this.settings.l2SliceSize;
    const byteIdx = l2i * this.l2EntryBytes;
    const e = await this.l2Cache.get(table + Math.floor(byteIdx / slice) * slice);
    try {
      const p = byteIdx % slice;
      e.buf.writeUInt32BE(hi >>> 0, p);
      e.buf.writeUInt32BE(lo >>> 0, p + 4);
      if (this.extL2) {
        e.buf.writeUInt32BE(zero >>> 0, p + 8);
        e.buf.writeUInt32BE(alloc >>> 0, p + 12);
      }
      this.l2Cache.markDirty(e);
    } finally {
      this.l2Cache.release(e);
    }
  }

  /** Allocates an L2 table for L1 index `l1i` (copying a shared one), then points the L1 entry at it. */
  private async allocL2(l1i: number, old: number): Promise<number> {
    if (l1i >= this.l1Size) await this.growL1(l1i + 1);
    const cs = this.cs;
    const off = await this.refcounts.alloc(1);
    const table = Buffer.alloc(cs);
    if (old) {
      // Copy-on-write of a shared table: its cached changes first.
      await this.l2Cache.flush();
      this.file.debugEvent('l2_alloc_cow_read');
      await this.readMeta(old, table);
    }
    this.l2Set.add(off);
    this.l2Cache.forget(off, cs);
    // The new table and its refcount reach the disk before the L1 entry points to it.
    await this.refcounts.cache.flush();
    this.file.debugEvent('l2_alloc_write');
    await this.writeMeta(off, table);
    await this.barrier();
    const ent = makeEntry(off, true);
    const b = Buffer.alloc(8);
    b.writeUInt32BE(ent.hi, 0);
    b.writeUInt32BE(ent.lo, 4);
    this.file.debugEvent('l1_update');
    await this.writeMeta(this.l1Offset + l1i * 8, b);
    b.copy(this.l1, l1i * 8);
    await this.barrier();
    if (old) {
      this.l2Set.delete(old);
      await this.free(old, 1, 'other');
    }
    return off;
  }

  /** Grows the active L1 table to at least `min` entries (moving it to newly allocated clusters). */
  async growL1(min: number): Promise<void> {
    const cs = this.cs;
    if (min * 8 > 32 * 1024 * 1024) throw new BlockError('EINVAL', 'Active L1 table too large');
    let size = Math.max(min, Math.ceil(this.l1Size * 1.5));
    size = Math.min(Math.ceil((size * 8) / cs) * cs / 8, 4 * 1024 * 1024);
    const clusters = Math.ceil((size * 8) / cs);
    this.file.debugEvent('l1_grow_alloc_table');
    const off = await this.refcounts.alloc(clusters);
    const table = Buffer.alloc(clusters * cs);
    this.l1.copy(table);
    await this.refcounts.cache.flush();
    this.file.debugEvent('l1_grow_write_table');
    await this.writeMeta(off, table);
    await this.barrier();
    const hdr = Buffer.alloc(12);
    hdr.writeUInt32BE(size, 0);
    hdr.writeBigUInt64BE(BigInt(off), 4);
    this.file.debugEvent('l1_grow_activate_table');
    await this.writeMeta(HeaderField.L1_SIZE, hdr);
    await this.barrier();
    const oldOff = this.l1Offset;
    const oldClusters = Math.ceil((this.l1Size * 8) / cs);
    this.l1 = table.subarray(0, size * 8);
    this.l1Size = size;
    this.l1Offset = off;
    this.h.l1Size = size;
    this.h.l1TableOffset = off;
    if (oldClusters) await this.free(oldOff, oldClusters, 'other');
  }

  /** Drops the reference an old L2 entry held (meta lock held). */
  private async freeEntry(e: ClusterEntry, reason: FreeReason): Promise<void> {
    if (this.hasDataFile) return;
    if (e.type === 'normal' || e.type === 'zero-alloc') {
      if (e.host) await this.free(e.host, 1, reason);
    } else if (e.type === 'compressed') {
      const d = compressedDescriptor(e.hi, e.lo, this.clusterBits);
      const first = Math.floor(d.offset / this.cs);
      const last = Math.floor((d.offset + d.length - 1) / this.cs);
      await this.free(first * this.cs, last - first + 1, reason);
    }
  }

  /** Decrements refcounts; anything that may still point at the clusters is written first. */
  async free(offset: number, n: number, reason: FreeReason): Promise<void> {
    this.file.debugEvent('cluster_free');
    await this.refcounts.cache.setDependency(this.l2Cache);
    this.freeReason = reason;
    await this.refcounts.update(offset / this.cs, n, -1);
  }

  protected override async onFreed(offset: number, length: number): Promise<void> {
    if (this.settings.passDiscard[this.freeReason]) {
      // The discard must not overtake the metadata update that stopped using the cluster.
      await this.l2Cache.flush();
      if (offset + length <= this.file.length()) await this.file.discard(offset, length).catch(() => undefined);
    }
  }

  // ---- write-zeroes and discard ----

  async writeZeroes(offset: number, length: number, flags: number): Promise<void> {
    this.checkWritable();
    await this.activate();
    const cs = this.cs;
    if (!this.v3) return this.zeroFallback(offset, length, flags);
    let start = Math.ceil(offset / cs) * cs;
    let end = Math.floor((offset + length) / cs) * cs;
    if (offset + length === this.size) end = Math.ceil(this.size / cs) * cs;
    if (end < start) { start = offset; end = offset; }
    if (start > offset) await this.zeroPartial(offset, Math.min(start, offset + length) - offset, flags);
    if (end > start) await this.zeroClusters(start / cs, (end - start) / cs, (flags & ReqFlag.MAY_UNMAP) !== 0, 'request');
    const tail = Math.max(end, start);
    if (offset + length > tail) await this.zeroPartial(tail, offset + length - tail, flags);
  }

  /**
   * Zeroes part of one cluster the way QEMU does: when the rest of the cluster
   * already reads as zeroes and the cluster holds no data of its own
   * (unallocated or a zero cluster), the whole cluster becomes a zero cluster;
   * otherwise the zeroes are written as data (a fast zero is refused).
   */
  private async zeroPartial(offset: number, length: number, flags: number): Promise<void> {
    if (this.extL2) {
      // Subclusters: nothing to do when the range already reads as zeroes.
      const st = await this.blockStatus(offset, length, 0);
      if (st.every((e) => e.zero)) return;
      return this.zeroFallback(offset, length, flags);
    }
    const cs = this.cs;
    const c = Math.floor(offset / cs);
    const release = await this.clusterLock.acquire(c * cs, (c + 1) * cs);
    let zeroed = false;
    try {
      const restZero = await this.readsAsZero(c * cs, offset) && await this.readsAsZero(offset + length, Math.min((c + 1) * cs, this.size));
      const type = restZero ? (await this.entry(c)).type : 'normal';
      if (type === 'unallocated' || type === 'zero-plain' || type === 'zero-alloc') {
        await this.zeroClustersLocked(c, 1, (flags & ReqFlag.MAY_UNMAP) !== 0, 'request');
        zeroed = true;
      }
    } finally {
      release();
    }
    if (!zeroed) await this.zeroFallback(offset, length, flags);
  }

  private async readsAsZero(from: number, to: number): Promise<boolean> {
    if (to <= from) return true;
    return (await this.blockStatus(from, to - from, 0)).every((e) => e.zero);
  }

  private async zeroFallback(offset: number, length: number, flags: number): Promise<void> {
    if (flags & ReqFlag.NO_FALLBACK) throw new BlockError('ENOTSUP', 'qcow2: cannot write zeroes without writing data');
    const chunk = Math.min(length, 1024 * 1024);
    const z = Buffer.alloc(chunk);
    for (let done = 0; done < length; done += chunk) {
      await this.write(offset + done, z.subarray(0, Math.min(chunk, length - done)));
    }
  }

  /** Turns whole clusters into zero clusters (v3), unmapping them when allowed. */
  private async zeroClusters(c0: number, n: number, mayUnmap: boolean, reason: FreeReason): Promise<void> {
    const cs = this.cs;
    const release = await this.clusterLock.acquire(c0 * cs, (c0 + n) * cs);
    try {
      await this.zeroClustersLocked(c0, n, mayUnmap, reason);
    } finally {
      release();
    }
  }

  /** zeroClusters with the clusters' range lock held. */
  private async zeroClustersLocked(c0: number, n: number, mayUnmap: boolean, reason: FreeReason): Promise<void> {
    await this.markDirtyForLazy();
    await this.zeroRawDataFile(c0, n);
    await this.meta.run(async () => {
      const freed: ClusterEntry[] = [];
      for (let c = c0; c < c0 + n; c++) {
        const old = await this.entry(c);
        const allocated = old.type !== 'unallocated' && old.type !== 'zero-plain';
        const unmap = allocated && (mayUnmap || old.type === 'compressed' || (old.type === 'normal' && !isCopied(old.hi)) || this.hasDataFile && mayUnmap);
        if (this.extL2) {
          if (old.type === 'unallocated' && old.zero === ALL_SUBCLUSTERS) continue;
          if (unmap || !allocated) await this.setEntry(c, 0, 0, 0, ALL_SUBCLUSTERS);
          else await this.setEntry(c, old.hi, old.lo, 0, ALL_SUBCLUSTERS);
        } else {
          if (old.type === 'zero-plain') continue;
          if (unmap || !allocated) await this.setEntry(c, 0, 1, 0, 0);
          else await this.setEntry(c, old.hi, (old.lo | 1) >>> 0, 0, 0);
        }
        if (unmap) freed.push(old);
      }
      for (const old of freed) await this.freeEntry(old, reason);
    });
  }

  /** A raw external data file must stay a consistent image by itself: zero it there too. */
  private async zeroRawDataFile(c0: number, n: number): Promise<void> {
    if (!this.hasDataFile || !(this.h.autoclear & Autoclear.DATA_FILE_RAW)) return;
    const start = c0 * this.cs;
    const end = Math.min((c0 + n) * this.cs, this.data.length());
    if (end > start) await this.data.writeZeroes(start, end - start);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable();
    // As in QEMU, a node without discard=unmap ignores discard requests; so does a v2
    // image over a backing file (without zero clusters, a discard would expose the backing data).
    if (!this.settings.unmap || (!this.v3 && this.backing)) return;
    await this.activate();
    const cs = this.cs;
    const start = Math.ceil(offset / cs) * cs;
    let end = Math.floor((offset + length) / cs) * cs;
    if (offset + length === this.size) end = Math.ceil(this.size / cs) * cs;
    if (end <= start) return;
    await this.discardClusters(start / cs, (end - start) / cs, false, 'request');
  }

  /** QEMU's discard: v3 keeps the range reading as zeroes when that matters; `full` makes it unallocated. */
  async discardClusters(c0: number, n: number, full: boolean, reason: FreeReason): Promise<void> {
    const cs = this.cs;
    const release = await this.clusterLock.acquire(c0 * cs, (c0 + n) * cs);
    try {
      await this.markDirtyForLazy();
      await this.zeroRawDataFile(c0, n);
      await this.meta.run(async () => {
        const freed: ClusterEntry[] = [];
        for (let c = c0; c < c0 + n; c++) {
          // Without an L2 table everything reads as unallocated: only a backing file needs zero clusters over it.
          if ((full || !this.backing) && this.l2TableOffset(Math.floor(c / this.l2Entries)) === 0) continue;
          const old = await this.entry(c);
          const allocated = old.type === 'normal' || old.type === 'compressed' || old.type === 'zero-alloc';
          let hi = 0, lo = 0, alloc = 0, zero = 0;
          if (!full) {
            // Left as it is when it reads as zeroes anyway (as QEMU: a zero cluster stays one).
            if (!this.backing && !allocated) continue;
            if (this.extL2) zero = ALL_SUBCLUSTERS;
            else if (this.v3) lo = 1;
          }
          if (old.hi === hi && old.lo === lo && old.alloc === alloc && old.zero === zero) continue;
          await this.setEntry(c, hi, lo, alloc, zero);
          if (allocated) freed.push(old);
        }
        for (const old of freed) await this.freeEntry(old, reason);
      });
    } finally {
      release();
    }
  }

  // ---- flush, truncate, close ----

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.meta.run(async () => {
      await this.l2Cache.flush();
      await this.refcounts.cache.flush();
    });
  }

  async truncate(size: number): Promise<void> {
    this.checkWritable();
    await this.activate();
    if (size % 512 !== 0) throw new BlockError('EINVAL', 'The new size must be a multiple of 512');
    const cs = this.cs;
    if (size < this.size) {
      if (this.snapshots.length) throw new BlockError('ENOTSUP', "Can't shrink an image with internal snapshots");
      if (this.h.bitmaps) throw new BlockError('ENOTSUP', "Can't resize an image which has bitmaps");
      const first = Math.ceil(size / cs);
      const last = Math.ceil(this.size / cs);
      if (last > first) await this.discardClusters(first, last - first, true, 'other');
    } else if (size > this.size) {
      const need = Math.ceil(size / (cs * this.l2Entries));
      if (need > 4 * 1024 * 1024) throw new BlockError('EINVAL', 'Image is too big');
      if (need > this.l1Size) await this.meta.run(() => this.growL1(need));
    }
    await this.flush();
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(size));
    await this.file.write(HeaderField.SIZE, b);
    await this.file.flush();
    this.size = size;
    this.h.size = size;
  }

  async close(): Promise<void> {
    if (this.cleanTimer) clearInterval(this.cleanTimer);
    await this.deactivate();
  }

  /**
   * Leaves read-write use (close, or reopen read-only): everything written,
   * bitmaps put back if untouched, the excess file space trimmed, the dirty
   * bit cleared.
   */
  async deactivate(): Promise<void> {
    if (this.readOnly || this.corrupt || this.pendingActivation) return;
    await this.flush();
    if (this.bitmapRestore && !this.modified) await this.writeMeta(this.bitmapRestore.offset, this.bitmapRestore.buf);
    await this.trimFiles();
    await this.file.flush();
    if (this.dirty) {
      await this.setIncompat(this.h.incompatible & ~Incompat.DIRTY);
      this.dirty = false;
    }
  }

  /** Clears autoclear bits blockd does not maintain before the first write (qcow2 spec). */
  /**
   * Persistent bitmaps stay in the image, but blockd does not update them:
   * while it may write, every bitmap is flagged in-use (inconsistent), as
   * QEMU flags them while it has them loaded. If nothing was written by
   * close(), the original flags are put back.
   */
  async markBitmapsInUse(): Promise<void> {
    const b = this.h.bitmaps;
    if (!b || !(this.h.autoclear & Autoclear.BITMAPS) || b.directorySize > 64 * 1024 * 1024) return;
    const dir = Buffer.alloc(b.directorySize);
    await this.readMeta(b.directoryOffset, dir);
    const orig = Buffer.from(dir);
    let pos = 0;
    for (let i = 0; i < b.nbBitmaps && pos + 24 <= dir.length; i++) {
      dir.writeUInt32BE((dir.readUInt32BE(pos + 12) | 1) >>> 0, pos + 12);
      pos = Math.ceil((pos + 24 + dir.readUInt32BE(pos + 20) + dir.readUInt16BE(pos + 18)) / 8) * 8;
    }
    if (dir.equals(orig)) return;
    await this.writeMeta(b.directoryOffset, dir);
    await this.barrier();
    this.bitmapRestore = { offset: b.directoryOffset, buf: orig };
  }

  async clearUnknownAutoclear(): Promise<void> {
    const keep = this.h.autoclear & (Autoclear.DATA_FILE_RAW | Autoclear.BITMAPS);
    if (keep === this.h.autoclear) return;
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(keep);
    await this.file.write(HeaderField.AUTOCLEAR, b);
    await this.file.flush();
    this.h.autoclear = keep;
  }

  lazyRefcountsInHeader(): boolean { return (this.h.compatible & Compat.LAZY_REFCOUNTS) !== 0n; }
}

/** Without a backing file, clusters of these kinds read as zeroes. */
function readsAsZero(e: ClusterEntry): boolean {
  return e.type === 'unallocated' || e.type === 'zero-plain' || e.type === 'zero-alloc';
}

const ZERO_PAGE = Buffer.alloc(4096);

/** Bits s0..s1-1 set. */
function rangeMask(s0: number, s1: number): number {
  let m = 0;
  for (let s = s0; s < s1; s++) m |= 1 << s;
  return m >>> 0;
}
