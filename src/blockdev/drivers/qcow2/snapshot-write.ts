/**
 * Internal snapshots of an open qcow2 image: creating one (copy the active
 * L1 table, add a reference to every L2 table and data cluster it reaches,
 * append an entry to the snapshot table) and deleting one (drop the entry,
 * drop the references its L1 table holds, free that table, recompute the
 * COPIED flags of the active tables). Facts from docs/interop/qcow2.txt
 * (snapshot table entry, refcount and COPIED rules) and observation of
 * qemu-img / qemu-storage-daemon 7.2.
 *
 * The caller drains the node first (no request is in flight). Everything
 * here runs under the image's metadata mutex, and ends with the caches
 * written and the file flushed, so the image on disk is consistent (and
 * `qemu-img check` clean) when an operation returns.
 *
 * Ordering, so that a crash leaves at worst leaked clusters: on create the
 * L1 copy and the added references reach the disk before the snapshot
 * table that points at them; on delete the table without the entry reaches
 * the disk before any reference is dropped, and dropped references before
 * any COPIED flag is set again.
 */
import { BlockError } from '../../../util/errors.ts';
import { SnapshotError, errnoText, type InternalSnapshots, type SnapshotRequest } from '../../internal-snapshots.ts';
import { Limit } from './header.ts';
import { COPIED_HI, clusterType, compressedDescriptor, entryOffset } from './l2.ts';
import { hex } from './refcount.ts';
import type { Qcow2Image } from './image.ts';
import type { Qcow2Snapshot } from './snapshots.ts';

/** QEMU's snapshot names are at most 255 bytes (longer ones are cut). */
const MAX_NAME_BYTES = 255;
const EXTRA_BYTES = 24;
const MAX_TABLE_BYTES = 64 * 1024 * 1024;

const errnoError = (code: 'EOVERFLOW' | 'ENOTSUP' | 'EPERM' | 'EIO', text: string) => new SnapshotError(code, text);

/** Runs a step; a failure becomes "<context>: <strerror>". */
async function step<T>(context: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw new SnapshotError(e instanceof BlockError ? e.code : 'EIO', `${context}: ${errnoText(e)}`, { cause: e });
  }
}

/** QEMU's refusal of snapshots on images with an external data file (listing them fails the same way). */
export function checkSnapshotsSupported(img: Qcow2Image): void {
  if (img.hasDataFile) throw errnoError('ENOTSUP', 'Operation not supported');
}

/** bdrv_snapshot_find_by_id_and_name: both must match when both are given. */
export function findSnapshot(img: Qcow2Image, id?: string, name?: string): Qcow2Snapshot | undefined {
  return img.snapshots.find((s) => (id === undefined || s.id === id) && (name === undefined || s.name === name) && (id !== undefined || name !== undefined));
}

/** The next id: one more than the largest numeric id (non-numeric ones count as 0). */
function nextId(snapshots: Qcow2Snapshot[]): string {
  let max = 0;
  for (const s of snapshots) {
    const m = /^\s*[+]?(\d+)/.exec(s.id);
    const v = m ? Number(m[1]) : 0;
    if (v > max) max = v;
  }
  return String(max + 1);
}

function cutName(name: string): string {
  const b = Buffer.from(name);
  return b.length <= MAX_NAME_BYTES ? name : b.subarray(0, MAX_NAME_BYTES).toString();
}

function writable(img: Qcow2Image): void {
  if (img.readOnly) throw errnoError('EPERM', 'Operation not permitted');
  if (img.corrupt) throw errnoError('EIO', 'Input/output error');
}

/** Makes everything cached stable in the image file. Metadata mutex held. */
async function flushAll(img: Qcow2Image): Promise<void> {
  await img.l2Cache.flush();
  await img.refcounts.cache.flush();
  await img.file.flush();
}

/** Creates a disk-only internal snapshot of the image's current state; returns its entry. */
export async function createSnapshot(img: Qcow2Image, req: SnapshotRequest): Promise<Qcow2Snapshot> {
  if (img.snapshots.length >= Limit.MAX_SNAPSHOTS) throw errnoError('EOVERFLOW', 'File too large');
  checkSnapshotsSupported(img);
  writable(img);
  await img.activate();
  return img.meta.run(async () => {
    // The L1 copy and the reference walk read tables through the caches; the copy itself is taken from memory.
    const cs = img.cs;
    const bytes = img.l1Size * 8;
    const clusters = Math.ceil(bytes / cs);
    const l1Offset = clusters ? await img.refcounts.alloc(clusters) : 0;
    if (clusters) {
      await img.refcounts.cache.flush();
      await img.writeMeta(l1Offset, Buffer.from(img.l1.subarray(0, bytes)));
    }
    await updateReferences(img, img.l1, img.l1Size, 1, true);
    const extra = Buffer.alloc(EXTRA_BYTES);
    extra.writeBigInt64BE(BigInt(req.icount), 16);
    extra.writeBigUInt64BE(BigInt(img.size), 8);
    const snap: Qcow2Snapshot = {
      l1TableOffset: l1Offset, l1Size: img.l1Size, id: nextId(img.snapshots), name: cutName(req.name),
      dateSec: req.dateSec, dateNsec: req.dateNsec, vmClockNsec: req.vmClockNsec, vmStateSize: 0,
      diskSize: img.size, icount: req.icount, extraData: extra,
    };
    await writeSnapshotTable(img, [...img.snapshots, snap]);
    return snap;
  });
}

/**
 * Deletes the first snapshot matching id and/or name; returns its entry.
 * Failures are worded as QEMU words them ("Failed to remove snapshot from
 * snapshot list: ...").
 */
export async function deleteSnapshot(img: Qcow2Image, id?: string, name?: string): Promise<Qcow2Snapshot> {
  checkSnapshotsSupported(img);
  const snap = findSnapshot(img, id, name);
  if (!snap) throw new SnapshotError('ENOENT', "Can't find the snapshot");
  const cs = img.cs;
  if (snap.l1Size > Limit.MAX_L1_BYTES / 8 || snap.l1TableOffset % cs !== 0) {
    throw new SnapshotError('EINVAL', 'Snapshot L1 table offset invalid');
  }
  await step('Failed to remove snapshot from snapshot list', async () => {
    writable(img);
    await img.activate();
  });
  return img.meta.run(async () => {
    await step('Failed to remove snapshot from snapshot list',
      () => writeSnapshotTable(img, img.snapshots.filter((s) => s !== snap)));
    // From here on a failure only leaks clusters.
    await step('Failed to free the cluster and L1 table', async () => {
      const l1 = Buffer.alloc(snap.l1Size * 8);
      await img.readMeta(snap.l1TableOffset, l1);
      await updateReferences(img, l1, snap.l1Size, -1, false);
      const clusters = Math.ceil((snap.l1Size * 8) / cs);
      if (clusters) await img.free(snap.l1TableOffset, clusters, 'snapshot');
    });
    // Clusters only the snapshot shared with the active image are the image's own again.
    await step('Failed to update snapshot status in disk', async () => {
      await img.refcounts.cache.flush();
      await updateReferences(img, img.l1, img.l1Size, 0, true);
      await flushAll(img);
    });
    return snap;
  });
}

/**
 * QEMU's qcow2_update_snapshot_refcount: adds `addend` (+1, -1 or 0) to the
 * refcount of every L2 table of an L1 table and of every cluster those
 * tables reference; on the active tables, sets COPIED exactly where the
 * refcount is then 1. A snapshot's own tables are not rewritten (on delete
 * they are freed).
 */
async function updateReferences(img: Qcow2Image, l1: Buffer, l1Size: number, addend: number, active: boolean): Promise<void> {
  const cs = img.cs;
  const rc = img.refcounts;
  const slice = img.settings.l2SliceSize;
  const perSlice = slice / img.l2EntryBytes;
  let l1Changed = false;
  for (let i = 0; i < l1Size; i++) {
    const hi = l1.readUInt32BE(i * 8);
    const lo = l1.readUInt32BE(i * 8 + 4);
    const l2 = entryOffset(hi, lo);
    if (!l2) continue;
    if (l2 % cs !== 0) throw img.signalCorruption(`L2 table offset ${hex(l2)} unaligned (L1 index: ${hex(i)})`);
    for (let s = 0; s < cs; s += slice) {
      const e = await img.l2Cache.get(l2 + s);
      try {
        for (let j = 0; j < perSlice; j++) {
          const p = j * img.l2EntryBytes;
          const ehi = e.buf.readUInt32BE(p);
          const elo = e.buf.readUInt32BE(p + 4);
          const type = clusterType(ehi, elo, img.v3, img.extL2, img.hasDataFile);
          let count = 0;
          if (type === 'compressed') {
            if (addend !== 0) {
              const d = compressedDescriptor(ehi, elo, img.clusterBits);
              const first = Math.floor(d.offset / cs);
              const n = Math.floor((d.offset + d.length - 1) / cs) - first + 1;
              if (addend > 0) await rc.update(first, n, 1);
              else await img.free(first * cs, n, 'snapshot');
            }
            count = 2; // never written in place
          } else if (type === 'normal' || type === 'zero-alloc') {
            const host = entryOffset(ehi, elo);
            if (host % cs !== 0) {
              throw img.signalCorruption(`Cluster allocation offset ${hex(host)} unaligned (L2 offset: ${hex(l2)}, L2 index: ${hex(s / img.l2EntryBytes + j)})`);
            }
            if (addend > 0) await rc.update(host / cs, 1, 1);
            else if (addend < 0) await img.free(host, 1, 'snapshot');
            count = await rc.get(host / cs);
          }
          if (!active) continue;
          const nhi = (count === 1 ? ehi | COPIED_HI : ehi & ~COPIED_HI) >>> 0;
          if (nhi !== ehi) {
            // A flag may reach the disk only after the refcounts that justify it.
            await img.l2Cache.setDependency(rc.cache);
            e.buf.writeUInt32BE(nhi, p);
            img.l2Cache.markDirty(e);
          }
        }
      } finally {
        img.l2Cache.release(e);
      }
    }
    if (addend > 0) await rc.update(l2 / cs, 1, 1);
    else if (addend < 0) await img.free(l2, 1, 'snapshot');
    const count = await rc.get(l2 / cs);
    if (count === 0) img.l2Cache.forget(l2, cs);
    if (!active) continue;
    const nhi = (count === 1 ? hi | COPIED_HI : hi & ~COPIED_HI) >>> 0;
    if (nhi !== hi) {
      l1.writeUInt32BE(nhi, i * 8);
      l1Changed = true;
    }
  }
  if (active && l1Changed) {
    await rc.cache.flush();
    await img.writeMeta(img.l1Offset, Buffer.from(img.l1.subarray(0, img.l1Size * 8)));
    await img.barrier();
  }
}

/** One table entry as QEMU writes it (the extra data always at least 24 bytes). */
function encodeEntry(img: Qcow2Image, s: Qcow2Snapshot): Buffer {
  const id = Buffer.from(s.id);
  const name = Buffer.from(s.name);
  const extra = Buffer.alloc(Math.max(EXTRA_BYTES, s.extraData.length));
  s.extraData.copy(extra);
  extra.writeBigUInt64BE(BigInt(s.vmStateSize), 0);
  extra.writeBigUInt64BE(BigInt(s.diskSize ?? img.size), 8);
  extra.writeBigInt64BE(BigInt(s.icount ?? -1), 16);
  const out = Buffer.alloc(40 + extra.length + id.length + name.length);
  out.writeBigUInt64BE(BigInt(s.l1TableOffset), 0);
  out.writeUInt32BE(s.l1Size, 8);
  out.writeUInt16BE(id.length, 12);
  out.writeUInt16BE(name.length, 14);
  out.writeUInt32BE(s.dateSec >>> 0, 16);
  out.writeUInt32BE(s.dateNsec >>> 0, 20);
  out.writeBigUInt64BE(BigInt(s.vmClockNsec), 24);
  out.writeUInt32BE(s.vmStateSize <= 0xffffffff ? s.vmStateSize : 0, 32);
  out.writeUInt32BE(extra.length, 36);
  extra.copy(out, 40);
  id.copy(out, 40 + extra.length);
  name.copy(out, 40 + extra.length + id.length);
  return out;
}

/**
 * Writes a new snapshot table to newly allocated clusters, points the
 * header at it, then frees the old one (QEMU's qcow2_write_snapshots).
 * Metadata mutex held.
 */
async function writeSnapshotTable(img: Qcow2Image, list: Qcow2Snapshot[]): Promise<void> {
  const cs = img.cs;
  const parts: Buffer[] = [];
  let size = 0;
  for (const s of list) {
    const pad = Math.ceil(size / 8) * 8 - size;
    if (pad) { parts.push(Buffer.alloc(pad)); size += pad; }
    const e = encodeEntry(img, s);
    parts.push(e);
    size += e.length;
    if (size > MAX_TABLE_BYTES) throw errnoError('EOVERFLOW', 'File too large');
  }
  const table = Buffer.concat(parts, size);
  const clusters = Math.ceil(size / cs);
  const offset = clusters ? await img.refcounts.alloc(clusters) : 0;
  // The table and its refcounts are stable before the header points at it.
  await flushAll(img);
  if (size) await img.writeMeta(offset, table);
  await img.barrier();
  const hdr = Buffer.alloc(12);
  hdr.writeUInt32BE(list.length, 0);
  hdr.writeBigUInt64BE(BigInt(offset), 4);
  await img.writeMeta(60, hdr);
  await img.barrier();
  const oldOffset = img.h.snapshotsOffset;
  const oldClusters = img.snapshotTableSize ? Math.ceil(img.snapshotTableSize / cs) : 0;
  img.snapshots = list;
  img.snapshotTableSize = Math.ceil(size / 8) * 8;
  img.h.nbSnapshots = list.length;
  img.h.snapshotsOffset = offset;
  if (oldClusters) await img.free(oldOffset, oldClusters, 'snapshot');
  await flushAll(img);
}

/** The internal-snapshots capability of a qcow2 node's operations. */
export function qcow2InternalSnapshots(img: Qcow2Image): InternalSnapshots {
  return {
    get readOnly() { return img.readOnly; },
    check: () => checkSnapshotsSupported(img),
    find: (id, name) => findSnapshot(img, id, name),
    create: (req) => createSnapshot(img, req),
    remove: (id, name) => deleteSnapshot(img, id, name),
  };
}
