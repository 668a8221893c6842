/**
 * Typed access to blockd's native addon (native/src/blockd_native.c): the
 * Linux calls node:fs lacks. Loaded lazily so that modules importing this
 * one still load when the addon has not been built; the first use then
 * fails with a message saying how to build it.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface NativeAddon {
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /**
   * The offset of the next data at or after `offset`, or -1 if there is none
   * (ENXIO). On the calling thread, as QEMU's file-posix does its lseeks.
   */
  seekData(fd: number, offset: number): number;
  /** The offset of the next hole at or after `offset` (EOF counts as one), or -1 past EOF (ENXIO). On the calling thread. */
  seekHole(fd: number, offset: number): number;
  /** F_OFD_SETLK: 'r' shared, 'w' exclusive, 'u' unlock. Never blocks; throws EAGAIN/EACCES on conflict. */
  ofdLock(fd: number, type: 'r' | 'w' | 'u', start: number, len: number): void;
  /** F_OFD_GETLK: whether another open file description holds a lock conflicting with `type`. */
  ofdTest(fd: number, type: 'r' | 'w', start: number, len: number): boolean;
  blockDeviceSize(fd: number): number;
  blockDeviceSectorSize(fd: number): number;
  cdromDriveStatus(fd: number): number;
  blockDeviceReadOnly(fd: number): boolean;
  /** A zero-filled Buffer whose memory starts on an `alignment` boundary (for O_DIRECT). */
  allocAligned(size: number, alignment: number): Buffer;
  /** Whether the memory of `buf` starts on an `alignment` boundary. */
  isAligned(buf: Buffer, alignment: number): boolean;
  /** glibc's strerror() text for an errno value (node:fs's negative values are accepted). */
  strerror(errno: number): string;
  /** preadv2(RWF_NOWAIT): bytes read (maybe short), or -1 if it would block. Synchronous: never waits for a disk. */
  preadNowait(fd: number, buf: Buffer, position: number): number;
  /** pwritev2(RWF_NOWAIT): bytes written (maybe short), or -1 if it would block. */
  pwriteNowait(fd: number, buf: Buffer, position: number): number;
  /**
   * pwrite(2) of each buffer at its position, in order, in one thread-pool
   * job: per write the bytes written (all, or short) or -errno.
   */
  pwriteBatch(fd: number, bufs: Buffer[], positions: number[]): Promise<number[]>;
  /** send(MSG_DONTWAIT): bytes sent (maybe short), or -1 if nothing could be sent or the socket failed. */
  sendNowait(fd: number, buf: Buffer): number;
  /** fcntl(F_DUPFD_CLOEXEC): a new descriptor for the same open file (a socket handed to another event loop). */
  dupFd(fd: number): number;
  /**
   * Adaptive polling of this thread's event loop (the main one, an iothread's) before it sleeps
   * (native/src/loop_poll.c): a window of maxNs, opened and closed by how
   * long the loop's waits take. maxNs 0: off.
   */
  loopPollSet(maxNs: number): void;
  /** The current window (maxNs when open, 0 when closed), the limit, and how often the loop polled and how often an event came in the window. */
  loopPollStats(): { pollNs: number; maxNs: number; polls: number; hits: number };
  /** One sd_notify(3) datagram to `socketPath` (a leading NUL means the abstract namespace). */
  sdNotify(socketPath: string, state: string): void;
  /**
   * One zstd frame of `src` at `level`, in the thread pool (the system's
   * libzstd.so.1, opened at first use; rejects with its reason if missing).
   * Absent from addons built before it (then zstd compression is refused).
   */
  zstdCompress?(src: Buffer, level: number): Promise<Buffer>;
  /** /dev/fuse, opened O_RDWR|O_CLOEXEC|O_NONBLOCK. */
  fuseOpenDevice(): number;
  /** mount(2); throws its errno. */
  fuseMount(source: string, target: string, fstype: string, flags: number, data: string): void;
  /** umount2(2); throws its errno. */
  fuseUnmount(target: string, flags: number): void;
  /** Polls the device on the event loop; every request waiting is read and passed on; (null, error) once at the end. */
  fuseReader(fd: number, bufferSize: number, onRequests: (requests: Buffer[] | null, error?: NativeError) => void): FuseReaderHandle;
  /** Stops or resumes polling (backpressure); the fd stays open. */
  fuseReaderActive(reader: FuseReaderHandle, active: boolean): void;
  /** An AF_UNIX stream socket pair (close-on-exec), for fusermount3's _FUSE_COMMFD. */
  fuseSocketPair(): [number, number];
  /** The fd sent over `sock` with SCM_RIGHTS (fusermount3's /dev/fuse), made non-blocking. */
  fuseReceiveFd(sock: number): number;
  /** One writev(2) of a reply: 0, or the errno (ENOENT: the request was interrupted). */
  fuseReply(fd: number, parts: Buffer[]): number;
  readonly FALLOC_FL_KEEP_SIZE: number;
  readonly FALLOC_FL_PUNCH_HOLE: number;
  readonly FALLOC_FL_ZERO_RANGE: number;
}

/** An open librbd image in the addon (an opaque handle). */
export interface RbdHandle { readonly __rbdImage: unique symbol }

/** librbd in the addon (native/src/rbd.c): present only in builds made where librbd's headers are. */
export interface RbdAddon {
  /** Connects and opens an image in the thread pool. Errors carry `errno`, `stage` (what failed) and `reason` (strerror). */
  rbdOpen(o: Record<string, unknown>): Promise<{ handle: RbdHandle; size: number; objectSize: number }>;
  /** Creates an image (connect, rbd_create with `order`, 0 for librbd's default) in the thread pool. */
  rbdCreate(o: Record<string, unknown>, order: number): Promise<void>;
  /** An aio request: 0 read into, 1 write from a Buffer; 2 flush; 3 discard, 4 write-zeroes of a length. */
  rbdAio(h: RbdHandle, op: number, offset: number, arg?: Buffer | number): Promise<number>;
  /** In the thread pool: 1 close, 2 resize (resolves the new size), 4 block status (resolves [0 data | 1 zero, bytes]). */
  rbdHandleOp(h: RbdHandle, op: number, a?: number, b?: number): Promise<unknown>;
}

/** The addon's FUSE device reader (an opaque handle). */
export interface FuseReaderHandle { readonly __fuseReader: unique symbol }

/** An error thrown by the addon: message is strerror()'s text. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

const here = path.dirname(fileURLToPath(import.meta.url));
export const ADDON_PATH = path.resolve(here, '../../native/build/Release/blockd_native.node');

let addon: NativeAddon | undefined;

/** The addon, loaded on first use. */
export function native(): NativeAddon {
  return (addon ??= loadAddon(ADDON_PATH));
}

/** Loads the addon from `file`; a missing or broken build says how to fix it. */
export function loadAddon(file: string): NativeAddon {
  const require = createRequire(import.meta.url);
  try {
    return require(file) as NativeAddon;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'MODULE_NOT_FOUND') {
      throw new Error(`blockd's native addon is missing (${file}); run \`npm install\` in the blockd directory to build it`, { cause: e });
    }
    throw new Error(`Could not load blockd's native addon (${file}): ${err.message}; run \`npm install\` to rebuild it`, { cause: e });
  }
}

export function isNativeError(e: unknown): e is NativeError {
  return e instanceof Error && typeof (e as NativeError).code === 'string' && typeof (e as NativeError).errno === 'number';
}

// ---- typed wrappers ----

export const fallocate = (fd: number, mode: number, offset: number, length: number): Promise<void> =>
  native().fallocate(fd, mode, offset, length);
export const ofdLock = (fd: number, type: 'r' | 'w' | 'u', start: number, len: number): void =>
  native().ofdLock(fd, type, start, len);
export const ofdTest = (fd: number, type: 'r' | 'w', start: number, len: number): boolean =>
  native().ofdTest(fd, type, start, len);
export const blockDeviceSize = (fd: number): number => native().blockDeviceSize(fd);
export const blockDeviceSectorSize = (fd: number): number => native().blockDeviceSectorSize(fd);
/** CDROM_DRIVE_STATUS (CDSL_CURRENT): CDS_* (CDS_DISC_OK = 4), or -errno when the device is no CD-ROM drive. */
/** BLKROGET: the block device is set read-only. */
export const blockDeviceReadOnly = (fd: number): boolean => native().blockDeviceReadOnly(fd);
export const cdromDriveStatus = (fd: number): number => native().cdromDriveStatus(fd);
export const allocAligned = (size: number, alignment: number): Buffer => native().allocAligned(size, alignment);
export const isAligned = (buf: Buffer, alignment: number): boolean => native().isAligned(buf, alignment);

/**
 * The strerror() text QEMU would print for an error from node:fs or the
 * addon ("No such file or directory"); the error's own message otherwise.
 */
export function errorText(e: unknown): string {
  const errno = (e as NodeJS.ErrnoException | undefined)?.errno;
  if (typeof errno === 'number' && errno !== 0) return native().strerror(errno);
  return e instanceof Error ? e.message : String(e);
}
