/**
 * The FUSE protocol's numbers, as the kernel's include/uapi/linux/fuse.h
 * defines them (protocol 7.x). Only what blockd's export uses or must
 * recognise.
 */

export const FUSE_KERNEL_VERSION = 7;
/** The minor version blockd speaks: 7.31 has every message the export uses (LSEEK 7.24, MAX_PAGES 7.28). */
export const FUSE_KERNEL_MINOR_VERSION = 31;
export const FUSE_ROOT_ID = 1;
/** The device's read buffer must be at least this big, and hold a whole WRITE. */
export const FUSE_MIN_READ_BUFFER = 8192;

export const Opcode = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9, UNLINK: 10, RMDIR: 11,
  RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17, RELEASE: 18, FSYNC: 20, SETXATTR: 21,
  GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24, FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29,
  FSYNCDIR: 30, GETLK: 31, SETLK: 32, SETLKW: 33, ACCESS: 34, CREATE: 35, INTERRUPT: 36, BMAP: 37, DESTROY: 38,
  IOCTL: 39, POLL: 40, NOTIFY_REPLY: 41, BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44, RENAME2: 45, LSEEK: 46,
  COPY_FILE_RANGE: 47, SYNCFS: 50,
} as const;

/** fuse_init_in/out flags. */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  ATOMIC_O_TRUNC: 1 << 3,
  BIG_WRITES: 1 << 5,
  HAS_IOCTL_DIR: 1 << 11,
  AUTO_INVAL_DATA: 1 << 12,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19,
  MAX_PAGES: 1 << 22,
  INIT_EXT: 1 << 30,
} as const;

/** fuse_setattr_in.valid. */
export const Fattr = {
  MODE: 1 << 0, UID: 1 << 1, GID: 1 << 2, SIZE: 1 << 3, ATIME: 1 << 4, MTIME: 1 << 5, FH: 1 << 6,
  ATIME_NOW: 1 << 7, MTIME_NOW: 1 << 8, LOCKOWNER: 1 << 9, CTIME: 1 << 10, KILL_SUIDGID: 1 << 11,
} as const;

/** The setattr bits a file system is asked to act on (libfuse's mask: FH and LOCKOWNER only describe the call). */
export const FATTR_ACTIONS = Fattr.MODE | Fattr.UID | Fattr.GID | Fattr.SIZE | Fattr.ATIME | Fattr.MTIME | Fattr.ATIME_NOW |
  Fattr.MTIME_NOW | Fattr.CTIME | Fattr.KILL_SUIDGID;

/** fallocate(2) modes. */
export const FallocMode = { KEEP_SIZE: 0x01, PUNCH_HOLE: 0x02, ZERO_RANGE: 0x10 } as const;

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

export const S_IFREG = 0o100000;

export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
