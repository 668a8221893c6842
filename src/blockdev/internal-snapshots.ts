/**
 * Internal snapshots as an optional, typed capability of a node's operations
 * (DriverOps.internalSnapshots): what blockdev-snapshot-internal-sync and
 * blockdev-snapshot-delete-internal-sync need from a format that keeps
 * snapshots inside its image. qcow2 offers it (drivers/qcow2/snapshot-write.ts);
 * the QMP commands find it on the node, never on a driver's name.
 */
import { BlockError } from '../util/errors.ts';

/** An internal snapshot (QEMU's QEMUSnapshotInfo, disk only). */
export interface SnapshotEntry {
  id: string;
  name: string;
  vmStateSize: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  /** -1 or absent: no instruction count. */
  icount?: number;
}

/** What the caller decides about a new snapshot. */
export interface SnapshotRequest {
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  /** -1: no instruction count (QEMU without record/replay). */
  icount: number;
}

/** The capability. The caller drains the node around create and remove. */
export interface InternalSnapshots {
  /** The image is open read-only (nothing can be taken or deleted). */
  readonly readOnly: boolean;
  /** Throws an errno-coded BlockError where the image cannot list snapshots (qcow2 with an external data file). */
  check(): void;
  /** bdrv_snapshot_find_by_id_and_name: both must match when both are given. */
  find(id: string | undefined, name: string | undefined): SnapshotEntry | undefined;
  create(req: SnapshotRequest): Promise<SnapshotEntry>;
  /** Deletes and returns the snapshot; a SnapshotError is worded as QEMU words the step that failed. */
  remove(id: string | undefined, name: string | undefined): Promise<SnapshotEntry>;
}

/** An error worded as QEMU words it for the step that failed. */
export class SnapshotError extends BlockError {}

/** glibc's texts for the errno values these operations end with. */
const STRERROR: Partial<Record<BlockError['code'], string>> = {
  EIO: 'Input/output error', EINVAL: 'Invalid argument', ENOSPC: 'No space left on device', EPERM: 'Operation not permitted',
  ENOTSUP: 'Operation not supported', EOVERFLOW: 'File too large', ENOMEM: 'Cannot allocate memory', ENOENT: 'No such file or directory',
  EBUSY: 'Device or resource busy', ESHUTDOWN: 'Cannot send after transport endpoint shutdown',
};

/** The errno text QEMU would print for an error (EIO for anything unexpected). */
export function errnoText(e: unknown): string {
  const code = e instanceof BlockError ? e.code : 'EIO';
  return STRERROR[code] ?? STRERROR.EIO!;
}

/** QAPI's SnapshotInfo of an entry (query-named-block-nodes, blockdev-snapshot-delete-internal-sync). */
export function snapshotInfo(s: SnapshotEntry): Record<string, unknown> {
  const r: Record<string, unknown> = {
    id: s.id, name: s.name, 'vm-state-size': s.vmStateSize,
    'date-sec': s.dateSec, 'date-nsec': s.dateNsec,
    'vm-clock-sec': Math.floor(s.vmClockNsec / 1e9), 'vm-clock-nsec': s.vmClockNsec % 1e9,
  };
  if (s.icount !== undefined && s.icount !== -1) r.icount = s.icount;
  return r;
}
