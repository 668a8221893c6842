/**
 * One open image file (or host device): the I/O operations of the `file` and
 * `host_device` drivers. Requests arrive in range and aligned (BlockNode's
 * job); what is left here is memory alignment for O_DIRECT (bounce buffers),
 * FUA through a second O_DSYNC descriptor, zeroing and discard with
 * fallocate(2), and block status from SEEK_DATA/SEEK_HOLE.
 */
import fs from 'node:fs';
import { BlockError, toBlockError } from '../../../util/errors.ts';
import { COMPLETED, ReqFlag, type Extent } from '../../request.ts';
import type { DriverOps, Perm, ReopenTransaction } from '../../driver.ts';
import { BouncePool, BOUNCE_MAX } from './bounce.ts';
import { closeFd, fdatasync, ftruncate, openFd, preadFull, pwriteFull } from './io.ts';
import { WriteBatcher } from './write-batch.ts';
import { ImageLock, PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE, permBits, sharedBits } from './locking.ts';
import { allocAligned, errorText, fallocate, isAligned, native } from '../../../platform/native.ts';

/** Most extents one blockStatus call gathers (each costs one or two lseeks). */
const MAX_EXTENTS = 64;
const ZERO_FILL_CHUNK = 1024 * 1024;

export interface PosixFileConfig {
  filename: string;
  fd: number;
  /** Open flags of `fd`, reused (plus O_DSYNC) for the FUA descriptor. */
  flags: number;
  writable: boolean;
  device: boolean;
  direct: boolean;
  /** Request (and memory) alignment: 1 unless O_DIRECT. */
  alignment: number;
  size: number;
  /** discard=unmap: discard and MAY_UNMAP zeroing punch holes. */
  unmap: boolean;
  lock: ImageLock;
  /** force-share=on: every permission is shared, whatever the users say. */
  forceShare: boolean;
}

function isNotSupported(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'EINVAL';
}

export type FileOps = DriverOps & Required<Pick<DriverOps, 'setPermissions'>>;

export class PosixFile {
  readonly filename: string;
  private fd: number;
  private flags: number;
  private writable: boolean;
  private readonly device: boolean;
  private readonly direct: boolean;
  private readonly alignment: number;
  private readonly unmap: boolean;
  lock: ImageLock;
  private readonly forceShare: boolean;
  private size: number;
  private dsync?: Promise<number>;
  private readonly pool = new BouncePool();
  private zeroBuf?: Buffer;
  // What the file system turned out not to support; asked once, like QEMU's has_* flags.
  private canPunch = true;
  private canZeroRange = true;
  private canSeek = true;
  /** errno of a failed fdatasync: dirty pages may have been dropped, so later flushes must fail too. */
  private flushError?: NodeJS.ErrnoException;
  private closed = false;
  /** Small writes of one tick leave in one thread-pool job (write-batch.ts). */
  private readonly writes = new WriteBatcher();

  constructor(c: PosixFileConfig) {
    this.filename = c.filename;
    this.fd = c.fd;
    this.flags = c.flags;
    this.writable = c.writable;
    this.device = c.device;
    this.direct = c.direct;
    this.alignment = c.alignment;
    this.size = c.size;
    this.unmap = c.unmap;
    this.lock = c.lock;
    this.forceShare = c.forceShare;
  }

  /** The DriverOps of this file; methods are bound so the generic layer can call them detached. */
  ops(): FileOps {
    const ops: FileOps = {
      length: () => this.size,
      read: (o, b) => this.read(o, b),
      write: (o, b, f) => this.write(o, b, f),
      writeZeroes: (o, l, f) => this.writeZeroes(o, l, f),
      discard: (o, l) => this.discard(o, l),
      flush: () => this.flush(),
      truncate: (s) => this.truncate(s),
      close: () => this.close(),
      limits: { alignment: this.alignment, canFua: true, canZero: this.writable, canTrim: true },
      info: () => this.info(),
      blockStats: () => ({ 'discard-nb-ok': this.discardStats.ok, 'discard-nb-failed': this.discardStats.failed, 'discard-bytes-ok': this.discardStats.bytesOk }),
      filename: () => this.filename,
      setPermissions: (users) => this.setPermissions(users),
      prepareReopen: (_options, readOnly) => this.prepareReopen(readOnly),
    };
    // QEMU's host_device reports everything as data; only regular files have holes to find.
    if (!this.device) ops.blockStatus = (o, l, f) => this.blockStatus(o, l, f);
    return ops;
  }

  // ---- image locks ----

  /**
   * The lock bytes for what the node's users need and share. A node nobody
   * uses (yet) holds what qsd holds for an exported node: read, write when
   * writable, and resize unshared (qsd holds nothing for it; blockd keeps an
   * image it has open for writing safe from other writers).
   */
  private setPermissions(users: { perm: Perm; shared: Perm } | undefined): void {
    const perm = users ? permBits(users.perm) : PERM_CONSISTENT_READ | (this.writable ? PERM_WRITE : 0);
    const shared = this.forceShare ? PERM_ALL : users ? sharedBits(users.shared) : PERM_ALL & ~PERM_RESIZE;
    this.lock.set(perm, shared);
  }

  // ---- reopen ----

  /**
   * blockdev-reopen between read-only and read-write: a second descriptor is
   * opened with the new mode and takes the image locks the new mode needs
   * (refusing, as QEMU does, when another user holds a conflicting lock);
   * commit swaps it in and closes the old one, abort closes the new one. The
   * caller runs this inside a drained section, so nothing is in flight.
   */
  private async prepareReopen(readOnly: boolean): Promise<ReopenTransaction> {
    const writable = !readOnly;
    if (writable === this.writable) return { commit: () => undefined, abort: () => undefined };
    const flags = (this.flags & ~(fs.constants.O_RDWR | fs.constants.O_RDONLY)) | (writable ? fs.constants.O_RDWR : fs.constants.O_RDONLY);
    let fd: number;
    try {
      fd = await openFd(this.filename, flags);
    } catch (e) {
      throw new BlockError(toBlockError(e).code, `Could not reopen file: ${errorText(e)}`, { cause: e });
    }
    // The old descriptor's lock bytes would conflict with the new one's (an
    // image's own user does not share write): they are handed over, and
    // taken back if the reopen fails.
    const lock = new ImageLock(fd, this.lock.enabled);
    const old = this.lock;
    const { perm, shared } = old.current;
    const restore = () => { try { old.set(perm, shared); } catch { /* only if another process took the bytes meanwhile: the node keeps working without them */ } };
    old.set(0, PERM_ALL);
    try {
      lock.set(writable ? perm | PERM_WRITE : perm & ~PERM_WRITE, shared);
    } catch (e) {
      restore();
      await closeFd(fd).catch(() => undefined);
      throw e;
    }
    return {
      commit: () => {
        const old = this.fd;
        const oldDsync = this.dsync;
        this.fd = fd;
        this.flags = flags;
        this.writable = writable;
        this.lock = lock;
        this.dsync = undefined;
        void closeFd(old).catch(() => undefined);
        void oldDsync?.then((d) => closeFd(d)).catch(() => undefined);
      },
      abort: () => {
        lock.set(0, PERM_ALL);
        restore();
        return closeFd(fd).catch(() => undefined);
      },
    };
  }

  // ---- data path ----

  read(offset: number, buf: Buffer): Promise<void> {
    if (this.direct && !isAligned(buf, this.alignment)) return this.bouncedRead(offset, buf);
    if (!this.direct) {
      // Page-cache hits are served inline (RWF_NOWAIT): no thread-pool round trip, which
      // is most of the latency of a cached 4 KiB read. Anything else goes to the pool.
      const n = native().preadNowait(this.fd, buf, offset);
      if (n === buf.length) return COMPLETED;
      if (n > 0) return preadFull(this.fd, buf.subarray(n), offset + n, this.size);
    }
    return preadFull(this.fd, buf, offset, this.size);
  }

  write(offset: number, buf: Buffer, flags: number): Promise<void> {
    this.checkWritable();
    const fua = (flags & ReqFlag.FUA) !== 0;
    if (this.direct && (!isAligned(buf, this.alignment) || offset + buf.length > this.size)) {
      return this.bouncedWrite(offset, buf, fua);
    }
    if (fua) return this.dsyncFd().then((fd) => pwriteFull(fd, buf, offset));
    // O_DIRECT writes wait for the device: one job doing them one after another would
    // serialise what the pool's threads keep in flight together, so they go alone.
    if (this.direct) return pwriteFull(this.fd, buf, offset);
    return this.writes.write(this.fd, buf, offset);
  }

  private async bouncedRead(offset: number, buf: Buffer): Promise<void> {
    const bounce = this.pool.take(Math.min(buf.length, BOUNCE_MAX));
    try {
      for (let done = 0; done < buf.length;) {
        const n = Math.min(bounce.length, buf.length - done);
        await preadFull(this.fd, bounce.subarray(0, n), offset + done, this.size);
        bounce.copy(buf, done, 0, n);
        done += n;
      }
    } finally {
      this.pool.give(bounce);
    }
  }

  private async bouncedWrite(offset: number, buf: Buffer, fua: boolean): Promise<void> {
    const fd = fua ? await this.dsyncFd() : this.fd;
    const bounce = this.pool.take(Math.min(buf.length, BOUNCE_MAX));
    try {
      for (let done = 0; done < buf.length;) {
        const n = Math.min(bounce.length, buf.length - done);
        buf.copy(bounce, 0, done, done + n);
        await pwriteFull(fd, bounce.subarray(0, n), offset + done);
        done += n;
      }
    } finally {
      this.pool.give(bounce);
    }
    // O_DIRECT writes whole blocks: a file whose size is not a multiple of the
    // alignment grows past its end, so cut it back to the size we expose.
    if (offset + buf.length > this.size && !this.device) await ftruncate(this.fd, this.size);
  }

  /** The O_DSYNC twin of our descriptor, opened on the first FUA write. It holds no locks (those live on `fd`). */
  private dsyncFd(): Promise<number> {
    // Reopening through /proc follows the file even if it was renamed since.
    const flags = this.flags | fs.constants.O_DSYNC;
    this.dsync ??= openFd(`/proc/self/fd/${this.fd}`, flags)
      .catch(() => openFd(this.filename, flags))
      .catch((e) => {
        this.dsync = undefined;
        throw e;
      });
    return this.dsync;
  }

  // ---- zeroing, discard ----

  async writeZeroes(offset: number, length: number, flags: number): Promise<void> {
    this.checkWritable();
    const n = native();
    let done = false;
    if (flags & ReqFlag.MAY_UNMAP && this.unmap) done = await this.punch(offset, length);
    if (!done && this.canZeroRange) {
      try {
        await fallocate(this.fd, n.FALLOC_FL_ZERO_RANGE, offset, length);
        done = true;
      } catch (e) {
        if (!isNotSupported(e)) throw e;
        this.canZeroRange = false;
      }
    }
    // QEMU's next try on regular files: punch a hole, then allocate it again.
    if (!done && !this.device && (await this.punch(offset, length))) {
      await fallocate(this.fd, 0, offset, length).catch(() => undefined);
      done = true;
    }
    if (!done) {
      if (flags & ReqFlag.NO_FALLBACK) throw new BlockError('ENOTSUP', `Could not write zeroes to '${this.filename}' efficiently`);
      await this.writeZeroBuffers(offset, length, flags);
      return;
    }
    if (flags & ReqFlag.FUA) await this.flush();
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable();
    // Discard is advisory: with discard=ignore, or where holes cannot be punched, it does nothing.
    if (!this.unmap) return;
    // QEMU's raw_account_discard: a discard the file system cannot do (ENOTSUP) counts as failed.
    let ok = false;
    try {
      ok = await this.punch(offset, length);
    } finally {
      if (ok) { this.discardStats.ok++; this.discardStats.bytesOk += length; } else this.discardStats.failed++;
    }
  }

  /** BlockStatsSpecificFile (query-blockstats' driver-specific member). */
  readonly discardStats = { ok: 0, failed: 0, bytesOk: 0 };

  /** Punches a hole; false if the file system cannot. */
  private async punch(offset: number, length: number): Promise<boolean> {
    if (!this.canPunch) return false;
    const n = native();
    try {
      await fallocate(this.fd, n.FALLOC_FL_PUNCH_HOLE | n.FALLOC_FL_KEEP_SIZE, offset, length);
      return true;
    } catch (e) {
      if (!isNotSupported(e)) throw e;
      this.canPunch = false;
      return false;
    }
  }

  private async writeZeroBuffers(offset: number, length: number, flags: number): Promise<void> {
    // Aligned and never written to, so O_DIRECT can use it as it is.
    this.zeroBuf ??= allocAligned(ZERO_FILL_CHUNK, 4096);
    for (let done = 0; done < length;) {
      const n = Math.min(ZERO_FILL_CHUNK, length - done);
      await this.write(offset + done, this.zeroBuf.subarray(0, n), flags & ReqFlag.FUA);
      done += n;
    }
  }

  // ---- flush, truncate, status ----

  async flush(): Promise<void> {
    if (this.flushError) {
      throw new BlockError('EIO', `Flush of '${this.filename}' failed earlier (${errorText(this.flushError)}); the page cache may have lost data`);
    }
    try {
      await fdatasync(this.fd);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      // A failed fdatasync may have dropped dirty pages: never report success again.
      if (!isNotSupported(err)) this.flushError = err;
      throw err;
    }
  }

  async truncate(size: number): Promise<void> {
    this.checkWritable();
    if (this.device) {
      // QEMU (exact=false): a device cannot change size; shrinking just uses less of it.
      if (size > this.size) throw new BlockError('EINVAL', 'Cannot grow device files');
      return;
    }
    try {
      await ftruncate(this.fd, size);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const code = err.code === 'EFBIG' || err.code === 'EINVAL' ? 'EINVAL' : err.code === 'ENOSPC' ? 'ENOSPC' : 'EIO';
      throw new BlockError(code, `Could not resize file: ${errorText(e)}`, { cause: e });
    }
    this.size = size;
  }

  /**
   * Extents from SEEK_DATA/SEEK_HOLE. As QEMU's file-posix reports them:
   * data is data; a hole reads as zeroes and is not data; both are allocated
   * at this (protocol) level, so NBD's base:allocation shows holes as
   * HOLE|ZERO and data as 0.
   */
  async blockStatus(offset: number, length: number, flags: number): Promise<Extent[]> {
    const end = offset + length;
    const max = flags & ReqFlag.REQ_ONE ? 1 : MAX_EXTENTS;
    const out: Extent[] = [];
    if (!this.canSeek) return [extent(offset, length, true)];
    // On this thread, as QEMU's file-posix: an extent lookup costs less than a thread-pool round trip.
    const n = native();
    let pos = offset;
    try {
      while (pos < end && out.length < max) {
        const data = n.seekData(this.fd, pos);
        if (data < 0 || data >= end) {
          // In a hole that runs to the end of the request (or the trailing hole of the file).
          out.push(extent(pos, end - pos, false));
          break;
        }
        if (data > pos) {
          out.push(extent(pos, data - pos, false));
          pos = data;
          continue;
        }
        let hole = n.seekHole(this.fd, pos);
        if (hole < 0 || hole > end) hole = end;
        if (hole <= pos) hole = end; // the file shrank under us: call the rest data
        out.push(extent(pos, hole - pos, true));
        pos = hole;
      }
    } catch (e) {
      if (!isNotSupported(e) && (e as NodeJS.ErrnoException).code !== 'ENXIO') throw e;
      this.canSeek = false;
      if (out.length === 0) return [extent(offset, length, true)];
    }
    return out;
  }

  info(): Record<string, unknown> {
    try {
      return { 'actual-size': fs.fstatSync(this.fd).blocks * 512 };
    } catch {
      return {};
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const dsync = this.dsync;
    this.dsync = undefined;
    if (dsync) await dsync.then(closeFd, () => undefined);
    // Closing the descriptor drops its OFD locks.
    await closeFd(this.fd);
  }

  private checkWritable(): void {
    if (!this.writable) throw new BlockError('EPERM', `'${this.filename}' is opened read-only`);
  }
}

function extent(offset: number, length: number, data: boolean): Extent {
  return { offset, length, data, zero: !data, allocated: true, depth: 1 };
}
