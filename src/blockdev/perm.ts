/**
 * The one rule for what a node needs and shares on a child (QEMU's
 * bdrv_child_perm): the driver's own childPerm() hook when it has one, else
 * the default for its kind. BlockGraph uses it when a driver opens a child;
 * blockdev-reopen uses it again when a node changes between read-only and
 * read-write, so both always agree.
 */
import type { ChildPermission, Driver, DriverKind } from './driver.ts';

/** What a node of `driver` needs and shares on its child `role` while it is `readOnly` (or not). */
export function childPermission(driver: Driver, role: string, readOnly: boolean): ChildPermission {
  return driver.childPerm?.(role, readOnly) ?? defaultChildPerm(driver.kind, role, readOnly);
}

/**
 * The default: a node writes its children when it is writable, except a
 * backing child (which only a filter writes through). A format owns its
 * file's metadata: read-only or not, nobody else may write or resize it
 * (QEMU's bdrv_default_perms_for_storage), and it resizes the file itself; a
 * backing node may change under it. Filters and protocols share everything.
 */
export function defaultChildPerm(kind: DriverKind, role: string, readOnly: boolean): ChildPermission {
  const writes = !readOnly && (role !== 'backing' || kind === 'filter');
  const owns = kind === 'format';
  const storage = owns && role !== 'backing';
  return {
    perm: { read: true, write: writes, resize: writes && owns },
    shared: { read: true, write: !storage, resize: !storage },
    ...(owns && role === 'backing' ? { cow: true } : {}),
  };
}
