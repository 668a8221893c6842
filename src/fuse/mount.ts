/**
 * Mounting a FUSE file system on the export's mountpoint, as libfuse does
 * for qsd when it runs as root: open /dev/fuse, mount(2) type "fuse" with
 * fd=, rootmode= (a regular file), user_id=, group_id=, max_read=,
 * default_permissions[,allow_other], nosuid and nodev. Unmounting closes
 * the device first (in-flight and later calls on open files fail with
 * ENOTCONN) and then detaches the mount (umount2 MNT_DETACH), as libfuse's
 * fuse_kern_unmount.
 *
 * blockd mounts with mount(2) and so needs CAP_SYS_ADMIN; it does not run
 * fusermount3 (see README: differs from qsd).
 */
import { closeSync, statSync, type Stats } from 'node:fs';
import path from 'node:path';
import { MNT_DETACH, MS_NODEV, MS_NOSUID, mount, openFuseDevice, umount2 } from '../platform/fuse-device.ts';
import { fuseMountOn } from './mountinfo.ts';

/** The mount's source, as /proc/mounts shows it. */
export const MOUNT_SOURCE = 'blockd';

export interface MountOptions {
  allowOther: boolean;
  maxRead: number;
  uid: number;
  gid: number;
}

/** Opens the device and mounts it on `mountpoint`; returns the device fd. Throws mount(2)'s error, holding nothing. */
export function mountFuse(mountpoint: string, o: MountOptions): number {
  const fd = openFuseDevice();
  const data = `fd=${fd},rootmode=100000,user_id=${o.uid},group_id=${o.gid},max_read=${o.maxRead},default_permissions${o.allowOther ? ',allow_other' : ''}`;
  try {
    mount(MOUNT_SOURCE, mountpoint, 'fuse', MS_NOSUID | MS_NODEV, data);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  return fd;
}

/** Closes the device (aborting the connection), then detaches the mount. Errors: already gone, ignored. */
export function unmountFuse(mountpoint: string, fd: number): void {
  try {
    closeSync(fd);
  } catch { /* closed already */ }
  try {
    umount2(mountpoint, MNT_DETACH);
  } catch { /* unmounted by someone else */ }
}

/**
 * stat(2) of the mountpoint, after removing a stale FUSE mount there: a
 * FUSE file system whose daemon died (SIGKILL) answers every call with
 * ENOTCONN until it is unmounted. Returns what stat says then; `cleaned`
 * tells whether a stale mount was removed.
 */
export function statMountpoint(mountpoint: string): { stat: Stats; cleaned: boolean } {
  try {
    return { stat: statSync(mountpoint), cleaned: false };
  } catch (e) {
    const abs = path.resolve(mountpoint);
    if ((e as NodeJS.ErrnoException).code !== 'ENOTCONN' || !fuseMountOn(abs)) throw e;
    umount2(abs, MNT_DETACH);
    return { stat: statSync(mountpoint), cleaned: true };
  }
}
