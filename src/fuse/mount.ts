/**
 * Mounting a FUSE file system on the export's mountpoint, as libfuse does
 * for qsd: as root, open /dev/fuse and mount(2) type "fuse" with fd=,
 * rootmode= (a regular file), user_id=, group_id=, max_read=,
 * default_permissions[,allow_other], nosuid and nodev; as another user, run
 * fusermount3 (setuid root), which mounts and hands the device back over a
 * socket (_FUSE_COMMFD, SCM_RIGHTS). Unmounting closes the device first
 * (in-flight and later calls on open files fail with ENOTCONN), then
 * detaches the mount (umount2 MNT_DETACH, or fusermount3 -u -z), as
 * libfuse's fuse_kern_unmount.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, statSync, type Stats } from 'node:fs';
import path from 'node:path';
import { MNT_DETACH, MS_NODEV, MS_NOSUID, mount, openFuseDevice, receiveFd, socketPair, umount2 } from '../platform/fuse-device.ts';
import { fuseMountOn } from './mountinfo.ts';

/** The mount's source, as /proc/mounts shows it. */
export const MOUNT_SOURCE = 'blockd';

export interface MountOptions {
  allowOther: boolean;
  maxRead: number;
  uid: number;
  gid: number;
}

/** Whether this process mounts itself (root) or through fusermount3. */
const privileged = (): boolean => (process.geteuid?.() ?? 0) === 0;

/** Opens the device and mounts it on `mountpoint`; returns the device fd. Throws the mount's error, holding nothing. */
export function mountFuse(mountpoint: string, o: MountOptions): number {
  return privileged() ? mountDirect(mountpoint, o) : mountWithFusermount(mountpoint, o);
}

function mountDirect(mountpoint: string, o: MountOptions): number {
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

function mountWithFusermount(mountpoint: string, o: MountOptions): number {
  const [mine, theirs] = socketPair();
  try {
    const opts = `fsname=${MOUNT_SOURCE},max_read=${o.maxRead},default_permissions${o.allowOther ? ',allow_other' : ''}`;
    // The child's end becomes its fd 3; fusermount3 sends the device over it and exits.
    const r = spawnSync('fusermount3', ['-o', opts, '--', mountpoint], {
      stdio: ['ignore', 'ignore', 'pipe', theirs], env: { ...process.env, _FUSE_COMMFD: '3' }, encoding: 'utf8', timeout: 30_000,
    });
    if (r.error) throw r.error;
    if (r.status !== 0) throw new Error((r.stderr || `fusermount3 exited with ${r.status}`).trim());
    return receiveFd(mine);
  } finally {
    closeSync(mine);
    closeSync(theirs);
  }
}

/** Closes the device (aborting the connection), then detaches the mount. Errors: already gone, ignored. */
export function unmountFuse(mountpoint: string, fd: number): void {
  try {
    closeSync(fd);
  } catch { /* closed already */ }
  detach(mountpoint);
}

function detach(mountpoint: string): void {
  if (privileged()) {
    try {
      umount2(mountpoint, MNT_DETACH);
    } catch { /* unmounted by someone else */ }
  } else {
    spawnSync('fusermount3', ['-u', '-z', '--', mountpoint], { stdio: 'ignore', timeout: 30_000 });
  }
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
    detach(abs);
    return { stat: statSync(mountpoint), cleaned: true };
  }
}
