/**
 * The FUSE export's system calls (native/src/fuse_device.c): /dev/fuse,
 * mount(2) and umount2(2), the device's non-blocking reads driven by a
 * uv_poll, and replies as one writev(2). The protocol itself is in src/fuse.
 */
import { native, type FuseReaderHandle, type NativeError } from './native.ts';

export type { FuseReaderHandle };

/** mount(2) flags the FUSE export uses. */
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
/** umount2(2): detach now, let open files finish (libfuse's unmount as root). */
export const MNT_DETACH = 2;

export const openFuseDevice = (): number => native().fuseOpenDevice();
export const mount = (source: string, target: string, fstype: string, flags: number, data: string): void =>
  native().fuseMount(source, target, fstype, flags, data);
export const umount2 = (target: string, flags: number): void => native().fuseUnmount(target, flags);

export const socketPair = (): [number, number] => native().fuseSocketPair();
export const receiveFd = (sock: number): number => native().fuseReceiveFd(sock);

export interface FuseDeviceReader {
  /** Stop (false) or resume (true) reading: backpressure. */
  setActive(active: boolean): void;
}

/** Reads requests from the device as they arrive; `onEnd` once the device reports the end (ENODEV: unmounted). */
export function readFuseDevice(fd: number, bufferSize: number, onRequests: (reqs: Buffer[]) => void, onEnd: (err: NativeError) => void): FuseDeviceReader {
  const handle = native().fuseReader(fd, bufferSize, (reqs, err) => {
    if (reqs) onRequests(reqs);
    else onEnd(err!);
  });
  return { setActive: (active) => native().fuseReaderActive(handle, active) };
}

/** Writes one reply; 0 or the errno (ENOENT: the kernel no longer waits for it). */
export const writeFuseReply = (fd: number, parts: Buffer[]): number => native().fuseReply(fd, parts);
