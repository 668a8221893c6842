/**
 * blockdev-create for the 'file' protocol: create (or empty) a regular file
 * and size it, with the preallocation asked for. Steps, checks and messages
 * follow qemu-storage-daemon 7.2:
 *
 *   1. the extent size hint must fit 32 bits (checked before the file is touched);
 *   2. open O_RDWR|O_CREAT, mode 0644;
 *   3. take QEMU's lock bytes for write+resize, sharing everything but resize,
 *      and refuse if another user (qsd, qemu, blockd) conflicts;
 *   4. truncate to 0, then grow to `size`: off = ftruncate (plus the first
 *      4 KiB written, as QEMU does to help alignment probing), falloc =
 *      fallocate, full = ftruncate and write zeroes, then fsync; 'metadata'
 *      is refused here (after step 4's truncate, as QEMU does); a failed
 *      preallocation restores the length.
 *
 * `nocow` and `extent-size-hint` are accepted and validated, but blockd's
 * native addon has no FS_IOC_SETFLAGS / FS_IOC_FSSETXATTR yet, so they are
 * not applied (QEMU treats both as best effort too).
 */
import { constants, promises as fsp } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { BlockError, type ErrorCode } from '../../util/errors.ts';
import { enm, obj, opt, req, type EnumType, type ObjectType } from '../../qapi/types.ts';
import { errorText, fallocate, native } from '../../platform/native.ts';
import { ImageLock, PERM_ALL, PERM_RESIZE, PERM_WRITE } from '../drivers/file/locking.ts';
import type { ImageCreator, CreateContext } from './types.ts';

export const PreallocMode: EnumType = enm('PreallocMode', ['off', 'metadata', 'falloc', 'full']);

export const BlockdevCreateOptionsFile: ObjectType = obj('BlockdevCreateOptionsFile', [
  req('filename', 'str', 'Filename for the new image file'),
  req('size', 'size', 'Size of the virtual disk in bytes'),
  opt('preallocation', PreallocMode, 'Preallocation mode for the new image (default: off; allowed values: off, falloc (if supported), full)'),
  opt('nocow', 'bool', 'Turn off copy-on-write (valid only on btrfs; default: off)'),
  opt('extent-size-hint', 'size', 'Extent size hint to add to the image file; 0 for not adding an extent size hint (default: 1 MB)'),
], { doc: 'Driver specific image creation options for file.' });

export interface FileCreateOptions {
  filename: string;
  size: number;
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
  nocow?: boolean;
  'extent-size-hint'?: number;
}

const MiB = 1024 * 1024;
const UINT32_MAX = 0xffffffff;
/** A JS number at or above this is past off_t's range: ftruncate says EINVAL. */
const OFF_T_LIMIT = 2 ** 63;
const ZERO_CHUNK = MiB;
/** QEMU allocates this much at the start of a new file (MAX_BLOCKSIZE, the page size on x86). */
const FIRST_BLOCK = 4096;

export const fileCreator: ImageCreator = {
  driver: 'file',
  options: BlockdevCreateOptionsFile,
  async create(options: Record<string, unknown>, ctx: CreateContext): Promise<void> {
    await createFile(options as unknown as FileCreateOptions, ctx.signal);
  },
};

export async function createFile(o: FileCreateOptions, signal?: AbortSignal): Promise<void> {
  const prealloc = o.preallocation ?? 'off';
  const hint = o['extent-size-hint'] ?? MiB;
  if (hint > UINT32_MAX) throw new BlockError('EINVAL', 'Extent size hint is too large');

  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(o.filename, constants.O_RDWR | constants.O_CREAT, 0o644);
  } catch (e) {
    throw sysError(e, `Could not create '${o.filename}'`);
  }
  // We take write and resize, and share everything except resize: the file must end up at `size`.
  const lock = new ImageLock(fh.fd, true);
  try {
    lock.set(PERM_WRITE | PERM_RESIZE, PERM_ALL & ~PERM_RESIZE);
    await truncate(fh, 0);
    await grow(fh, o.size, prealloc, signal);
  } finally {
    lock.set(0, PERM_ALL);
    try {
      await fh.close();
    } catch (e) {
      // eslint-disable-next-line no-unsafe-finally
      throw sysError(e, 'Could not close the new file');
    }
  }
}

async function truncate(fh: fsp.FileHandle, size: number): Promise<void> {
  if (size >= OFF_T_LIMIT) throw sysError('EINVAL', 'Could not resize file');
  if (!Number.isSafeInteger(size)) throw sysError('EFBIG', 'Could not resize file');
  try {
    await fh.truncate(size);
  } catch (e) {
    throw sysError(e, 'Could not resize file');
  }
}

/** Grows the (empty) file to `size` with the preallocation mode; on failure the old length is restored. */
async function grow(fh: fsp.FileHandle, size: number, mode: string, signal?: AbortSignal): Promise<void> {
  const current = (await fh.stat()).size;
  if (mode === 'off') {
    await truncate(fh, size);
    // Like QEMU, write the first block so later alignment probing finds allocated data; failures do not matter.
    if (current === 0 && size > 0) await fh.write(Buffer.alloc(Math.min(size, FIRST_BLOCK)), 0, Math.min(size, FIRST_BLOCK), 0).catch(() => undefined);
    return;
  }
  if (mode !== 'falloc' && mode !== 'full') throw new BlockError('EINVAL', `Unsupported preallocation mode: ${mode}`);
  if (current > size) throw new BlockError('ENOTSUP', 'Cannot use preallocation for shrinking files');
  try {
    if (mode === 'falloc') {
      if (size >= OFF_T_LIMIT) throw sysError('EINVAL', 'Could not preallocate new data');
      if (!Number.isSafeInteger(size)) throw sysError('EFBIG', 'Could not preallocate new data');
      if (size > current) {
        try {
          await fallocate(fh.fd, 0, current, size - current);
        } catch (e) {
          throw sysError(e, 'Could not preallocate new data');
        }
        // As QEMU after posix_fallocate from nothing: the first block written, for alignment probing.
        if (current === 0) await fh.write(Buffer.alloc(Math.min(size, FIRST_BLOCK)), 0, Math.min(size, FIRST_BLOCK), 0).catch(() => undefined);
      }
    } else {
      if (size !== current) await truncate(fh, size);
      const zeroes = Buffer.alloc(Math.min(ZERO_CHUNK, Math.max(1, size - current)));
      for (let pos = current; pos < size;) {
        signal?.throwIfAborted();
        const n = Math.min(zeroes.length, size - pos);
        try {
          const { bytesWritten } = await fh.write(zeroes, 0, n, pos);
          pos += bytesWritten;
        } catch (e) {
          throw sysError(e, 'Could not write zeros for preallocation');
        }
      }
      try {
        await fh.sync();
      } catch (e) {
        throw sysError(e, 'Could not flush file to disk');
      }
    }
  } catch (e) {
    await fh.truncate(current).catch(() => undefined);
    throw e;
  }
}

const CODES: Record<string, ErrorCode> = {
  ENOSPC: 'ENOSPC', EDQUOT: 'ENOSPC', EPERM: 'EPERM', EACCES: 'EPERM', EROFS: 'EPERM', EINVAL: 'EINVAL',
  EOPNOTSUPP: 'ENOTSUP', ENOTSUP: 'ENOTSUP', EFBIG: 'EOVERFLOW', ENOENT: 'ENOENT', EBUSY: 'EBUSY', EAGAIN: 'EBUSY',
};

/** "<context>: <strerror>", as QEMU's error_setg_errno prints it; `e` is a thrown error or an errno name. */
function sysError(e: unknown, context: string): BlockError {
  const code = typeof e === 'string' ? e : (e as NodeJS.ErrnoException | undefined)?.code ?? '';
  const text = typeof e === 'string' ? native().strerror(osConstants.errno[e as keyof typeof osConstants.errno]) : errorText(e);
  return new BlockError(CODES[code] ?? 'EIO', `${context}: ${text}`, { cause: e });
}
