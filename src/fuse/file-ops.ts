/**
 * The exported node as one regular file: qsd 7.2's FUSE operations
 * (block/export/fuse.c) with its checks, errnos and limits, on BlockNode
 * requests, so dirty bitmaps, throttling, write thresholds and jobs see
 * every write as they see an NBD client's.
 */
import type { BlockNode } from '../blockdev/node.ts';
import { allocatedFileSize } from '../blockdev/allocated-size.ts';
import { ReqFlag } from '../blockdev/request.ts';
import { Fattr, FallocMode, SEEK_DATA, SEEK_HOLE, S_IFREG } from './protocol/constants.ts';
import type { FuseAttr } from './protocol/replies.ts';
import type { FuseFile } from './session.ts';
import { fuseErr } from './errors.ts';
import { ExportOp, type ExportIoStats, type ExportOpIndex } from '../export/io-stats.ts';

/** QEMU's FUSE_MAX_BOUNCE_BYTES: MIN(BDRV_REQUEST_MAX_BYTES, 64 MiB); also the mount's max_read. */
export const FUSE_MAX_BOUNCE_BYTES = 64 * 1024 * 1024;
/** QEMU's BDRV_REQUEST_MAX_BYTES (INT_MAX rounded down to the alignment QEMU uses). */
const REQUEST_MAX_BYTES = 0x7fffffff & ~511;

const S_IRWXG = 0o070;
const S_IRWXO = 0o007;
const ANY_WRITE = 0o222;

export interface FileExportState {
  /** The exported node (follows the export's edge). */
  node(): BlockNode;
  readonly writable: boolean;
  readonly growable: boolean;
  /** Whether the mount has allow_other. */
  readonly allowOther: boolean;
  readonly writethrough: boolean;
  /** The export's request counters (the metrics endpoint's per-export families). */
  readonly ioStats: ExportIoStats;
  /** Runs a resize of the node with the resize permission (taken for the call when the export does not hold it). */
  resizing<T>(fn: () => Promise<T>): Promise<T>;
}

export class BlockFile implements FuseFile {
  /** st_mode, st_uid, st_gid: set at creation, changed by chmod/chown (qsd keeps them in memory). */
  private mode: number;
  private uid: number;
  private gid: number;

  constructor(private readonly exp: FileExportState, owner: { uid: number; gid: number }) {
    this.mode = S_IFREG | 0o400 | (exp.writable ? 0o200 : 0);
    this.uid = owner.uid;
    this.gid = owner.gid;
  }

  private get node(): BlockNode { return this.exp.node(); }

  /** Runs one request of the export's clients, counted in its ioStats (refusals before `run` are not requests that ran). */
  private async counted<T>(op: ExportOpIndex, length: number, run: () => Promise<T>): Promise<T> {
    const st = this.exp.ioStats;
    const t0 = st.started();
    try {
      const r = await run();
      st.ended(op, length, t0, false);
      return r;
    } catch (e) {
      st.ended(op, length, t0, true);
      throw e;
    }
  }

  getattr(): FuseAttr {
    const node = this.node;
    const length = node.length();
    const allocated = allocatedFileSize(node);
    return {
      ino: 1,
      size: length,
      blocks: Math.ceil((allocated !== undefined && allocated > 0 ? allocated : length) / 512),
      time: Math.floor(Date.now() / 1000),
      mode: this.mode,
      nlink: 1,
      uid: this.uid,
      gid: this.gid,
      blksize: node.limits.alignment,
    };
  }

  async setattr(valid: number, attr: { size: number; mode: number; uid: number; gid: number }): Promise<FuseAttr> {
    let supported = Fattr.SIZE | Fattr.MODE;
    if (this.exp.allowOther) supported |= Fattr.UID | Fattr.GID;
    if (valid & ~supported) throw fuseErr('ENOTSUP');
    if (valid & Fattr.MODE) {
      // Without allow_other nobody but the owner can reach the file: refuse permissions for others.
      if (!this.exp.allowOther && (attr.mode & (S_IRWXG | S_IRWXO)) !== 0) throw fuseErr('EPERM');
      if (!this.exp.writable && (attr.mode & ANY_WRITE) !== 0) throw fuseErr('EROFS');
    }
    if (valid & Fattr.SIZE) {
      if (!this.exp.writable) throw fuseErr('EACCES');
      await this.truncate(attr.size);
    }
    if (valid & Fattr.MODE) this.mode = (attr.mode & 0o7777) | S_IFREG;
    if (valid & Fattr.UID) this.uid = attr.uid;
    if (valid & Fattr.GID) this.gid = attr.gid;
    return this.getattr();
  }

  async read(offset: number, size: number): Promise<Buffer> {
    if (size > FUSE_MAX_BOUNCE_BYTES) throw fuseErr('EINVAL');
    const length = this.node.length();
    // Readers expect a short read at EOF.
    const n = Math.max(0, Math.min(size, length - offset));
    const buf = Buffer.allocUnsafe(n);
    if (n > 0) await this.counted(ExportOp.READ, n, () => this.node.read(offset, buf));
    return buf;
  }

  async write(offset: number, data: Buffer): Promise<number> {
    if (data.length > REQUEST_MAX_BYTES) throw fuseErr('EINVAL');
    if (!this.exp.writable) throw fuseErr('EACCES');
    const length = this.node.length();
    let n = data.length;
    if (offset + n > length) {
      if (this.exp.growable) await this.truncate(offset + n);
      // Writers expect a short write at EOF.
      else n = Math.max(0, length - offset);
    }
    if (n > 0) await this.counted(ExportOp.WRITE, n, () => this.node.write(offset, data.subarray(0, n), this.exp.writethrough ? ReqFlag.FUA : 0));
    return n;
  }

  fsync(): Promise<void> { return this.counted(ExportOp.FLUSH, 0, () => this.node.flush()); }

  /** qsd flushes when a file descriptor is closed. */
  flush(): Promise<void> { return this.counted(ExportOp.FLUSH, 0, () => this.node.flush()); }

  async fallocate(offset: number, length: number, mode: number): Promise<void> {
    if (!this.exp.writable) throw fuseErr('EACCES');
    const size = this.node.length();
    if (mode & FallocMode.KEEP_SIZE) length = Math.max(0, Math.min(length, size - offset));
    if (mode === 0) {
      // Plain allocation only at the end: a truncate that preallocates the new
      // range (QEMU: PREALLOC_MODE_FALLOC; here a write-zeroes that must not
      // fall back to writing buffers, as the preallocate filter allocates).
      if (offset < size) throw fuseErr('EOPNOTSUPP');
      await this.truncate(offset + length);
      if (length > 0) {
        try {
          await this.node.writeZeroes(offset, length, ReqFlag.NO_FALLBACK);
        } catch {
          // The node cannot allocate quickly: the file is longer and reads as zeroes all the same.
        }
      }
    } else if (mode & FallocMode.PUNCH_HOLE) {
      if (!(mode & FallocMode.KEEP_SIZE)) throw fuseErr('EINVAL');
      await this.counted(ExportOp.TRIM, length, () => this.chunks(offset, length, (o, l) => this.node.discard(o, l)));
    } else if (mode & FallocMode.ZERO_RANGE) {
      if (!(mode & FallocMode.KEEP_SIZE) && offset + length > size) await this.truncate(offset + length);
      await this.counted(ExportOp.WRITE_ZEROES, length, () => this.chunks(offset, length, (o, l) => this.node.writeZeroes(o, l, 0)));
    } else {
      throw fuseErr('EOPNOTSUPP');
    }
  }

  async lseek(offset: number, whence: number): Promise<number> {
    if (whence !== SEEK_HOLE && whence !== SEEK_DATA) throw fuseErr('EINVAL');
    const node = this.node;
    const length = node.length();
    while (offset < length) {
      const extents = await node.blockStatus(offset, length - offset);
      for (const e of extents) {
        if (e.data === (whence === SEEK_DATA)) return Math.max(offset, e.offset);
      }
      const last = extents[extents.length - 1];
      const next = last ? last.offset + last.length : offset;
      if (next <= offset) throw fuseErr('ENXIO');
      offset = next;
    }
    // At or past EOF: a hole runs from the end of the data to the end of the file; no data follows.
    if (offset > length || whence === SEEK_DATA) throw fuseErr('ENXIO');
    return offset;
  }

  private truncate(size: number): Promise<void> {
    return this.exp.resizing(() => this.node.truncate(size));
  }

  private async chunks(offset: number, length: number, fn: (o: number, l: number) => Promise<void>): Promise<void> {
    while (length > 0) {
      const l = Math.min(length, REQUEST_MAX_BYTES);
      await fn(offset, l);
      offset += l;
      length -= l;
    }
  }
}
