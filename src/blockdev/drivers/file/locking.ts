/**
 * Image locking compatible with QEMU's file-posix: shared OFD locks on
 * single bytes of the image file. For each permission bit i (QEMU 7.2:
 * consistent read, write, write unchanged, resize) a user holds
 *
 *   byte 100 + i  while it uses the permission, and
 *   byte 200 + i  while it does not let others use it.
 *
 * Before taking a permission a user checks that nobody else holds byte
 * 200 + i, and for each permission it does not share, that nobody holds
 * byte 100 + i. All locks are shared (F_RDLCK); the checks ask F_OFD_GETLK
 * whether an exclusive lock would conflict, i.e. whether another open file
 * description holds the byte. So blockd, qemu, qemu-img, qemu-io and
 * qemu-storage-daemon all see each other's use of an image.
 */
import { BlockError } from '../../../util/errors.ts';
import type { Perm } from '../../driver.ts';
import { errorText, ofdLock, ofdTest } from '../../../platform/native.ts';

export const PERM_CONSISTENT_READ = 0x1;
export const PERM_WRITE = 0x2;
export const PERM_WRITE_UNCHANGED = 0x4;
export const PERM_RESIZE = 0x8;
export const PERM_ALL = 0xf;

export const LOCK_PERM_BASE = 100;
export const LOCK_SHARED_BASE = 200;

/** QEMU's bdrv_perm_names(), used in its lock error messages. */
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'];
const PERM_COUNT = PERM_NAMES.length;

/** QEMU's permission bits for blockd's edge permissions. Nobody is refused "write unchanged". */
export function permBits(perm: Perm): number {
  return (perm.read ? PERM_CONSISTENT_READ : 0) | (perm.write ? PERM_WRITE : 0) | (perm.resize ? PERM_RESIZE : 0);
}

export function sharedBits(shared: Perm): number {
  return permBits(shared) | PERM_WRITE_UNCHANGED;
}

/**
 * The lock bytes one open file description holds for its current permissions.
 * `set()` moves to new permissions the way QEMU's prepare/commit/abort does:
 * take the union of old and new bytes, check for conflicts, then drop what is
 * no longer needed (or, on conflict, go back to the old bytes).
 */
export class ImageLock {
  private lockedPerm = 0;
  private lockedUnshared = 0;
  private perm = 0;
  private shared = PERM_ALL;

  constructor(private readonly fd: number, readonly enabled: boolean) {}

  get current(): { perm: number; shared: number } {
    return { perm: this.perm, shared: this.shared };
  }

  set(perm: number, shared: number): void {
    perm &= PERM_ALL;
    shared &= PERM_ALL;
    if (this.enabled) {
      const widening = (this.perm | perm) !== this.perm || (this.shared & shared) !== this.shared;
      if (widening) {
        try {
          this.apply(this.perm | perm, ~this.shared | ~shared, false);
          this.check(perm, shared);
        } catch (e) {
          this.applyQuietly(this.perm, ~this.shared);
          throw e;
        }
      }
      this.applyQuietly(perm, ~shared);
    }
    this.perm = perm;
    this.shared = shared;
  }

  /** Locks the bytes for `permLock` and `unsharedLock`; with `unlock`, releases the other bytes we hold. */
  private apply(permLock: number, unsharedLock: number, unlock: boolean): void {
    for (let i = 0; i < PERM_COUNT; i++) {
      const bit = 1 << i;
      this.lockedPerm = this.toggle(LOCK_PERM_BASE + i, bit, permLock, this.lockedPerm, unlock);
    }
    for (let i = 0; i < PERM_COUNT; i++) {
      const bit = 1 << i;
      this.lockedUnshared = this.toggle(LOCK_SHARED_BASE + i, bit, unsharedLock, this.lockedUnshared, unlock);
    }
  }

  private toggle(byte: number, bit: number, want: number, held: number, unlock: boolean): number {
    if (want & bit && !(held & bit)) {
      try {
        ofdLock(this.fd, 'r', byte, 1);
      } catch (e) {
        throw lockError(e, `Failed to lock byte ${byte}`);
      }
      return held | bit;
    }
    if (unlock && held & bit && !(want & bit)) {
      try {
        ofdLock(this.fd, 'u', byte, 1);
      } catch (e) {
        throw lockError(e, `Failed to unlock byte ${byte}`);
      }
      return held & ~bit;
    }
    return held;
  }

  /** Releasing locks cannot conflict; a failure here would be the kernel's, and the old state stays usable. */
  private applyQuietly(permLock: number, unsharedLock: number): void {
    try {
      this.apply(permLock, unsharedLock, true);
    } catch {
      /* QEMU only warns here too */
    }
  }

  private check(perm: number, shared: number): void {
    for (let i = 0; i < PERM_COUNT; i++) {
      if (perm & (1 << i) && this.taken(LOCK_SHARED_BASE + i)) {
        throw new BlockError('EBUSY', `Failed to get "${PERM_NAMES[i]}" lock`);
      }
    }
    for (let i = 0; i < PERM_COUNT; i++) {
      if (!(shared & (1 << i)) && this.taken(LOCK_PERM_BASE + i)) {
        throw new BlockError('EBUSY', `Failed to get shared "${PERM_NAMES[i]}" lock`);
      }
    }
  }

  private taken(byte: number): boolean {
    try {
      return ofdTest(this.fd, 'w', byte, 1);
    } catch (e) {
      throw lockError(e, `Failed to test byte ${byte}`);
    }
  }
}

/** QEMU leaves out the errno text when the cause is just another user's lock. */
function lockError(e: unknown, what: string): BlockError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'EAGAIN' || code === 'EACCES') return new BlockError('EBUSY', what, { cause: e });
  return new BlockError('EIO', `${what}: ${errorText(e)}`, { cause: e });
}
