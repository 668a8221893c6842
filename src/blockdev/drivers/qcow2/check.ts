/**
 * Refcount repair for images left dirty (lazy refcounts after a crash): walk
 * every structure that references clusters, compute the refcounts they imply
 * and rewrite the entries that differ. Refcount blocks themselves are always
 * written eagerly by blockd, so only their contents need fixing; an image
 * whose refcount structure is missing blocks is refused.
 */
import { BlockError } from '../../../util/errors.ts';
import { compressedDescriptor, entryOffset, clusterType } from './l2.ts';
import { getRefcountEntry, setRefcountEntry } from './refcount.ts';
import type { Qcow2Image } from './image.ts';

const MAX_CLUSTERS = 1 << 28;

export async function computeRefcounts(img: Qcow2Image): Promise<Uint32Array> {
  const cs = img.cs;
  const fileClusters = Math.ceil(img.file.length() / cs);
  let counts = new Uint32Array(Math.max(fileClusters, 1) + 16);
  const add = (offset: number, length: number) => {
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / cs);
    // Everything referenced must lie in the file (plus slack for a table straddling its end):
    // a hostile reference must not make the repair allocate unbounded memory.
    if (last >= MAX_CLUSTERS || last > fileClusters + 64) {
      throw new BlockError('EIO', `qcow2: cannot repair refcounts: reference to offset ${offset} beyond the end of the image file`);
    }
    if (last >= counts.length) {
      const n = new Uint32Array(Math.max(last + 1, counts.length * 2));
      n.set(counts);
      counts = n;
    }
    for (let c = first; c <= last; c++) counts[c]++;
  };
  add(0, cs);
  const rc = img.refcounts;
  add(rc.tableOffset, rc.tableClusters * cs);
  for (const off of rc.table) if (off && Number.isFinite(off)) add(off, cs);
  if (img.h.nbSnapshots && img.snapshotTableSize) add(img.h.snapshotsOffset, img.snapshotTableSize);
  if (img.h.crypto) add(img.h.crypto.offset, img.h.crypto.length);
  const l1s: { offset: number; size: number; active: boolean }[] = [{ offset: img.l1Offset, size: img.l1Size, active: true }];
  for (const s of img.snapshots) l1s.push({ offset: s.l1TableOffset, size: s.l1Size, active: false });
  const table = Buffer.alloc(cs);
  for (const l1 of l1s) {
    if (l1.size === 0) continue;
    add(l1.offset, l1.size * 8);
    const buf = l1.active ? img.l1 : Buffer.alloc(l1.size * 8);
    if (!l1.active) await img.readMeta(l1.offset, buf);
    for (let i = 0; i < l1.size; i++) {
      const l2 = entryOffset(buf.readUInt32BE(i * 8), buf.readUInt32BE(i * 8 + 4));
      if (!l2) continue;
      add(l2, cs);
      await img.readMeta(l2, table);
      for (let j = 0; j < img.l2Entries; j++) {
        const p = j * img.l2EntryBytes;
        const hi = table.readUInt32BE(p);
        const lo = table.readUInt32BE(p + 4);
        const t = clusterType(hi, lo, img.v3, img.extL2, img.hasDataFile);
        if (t === 'compressed') {
          const d = compressedDescriptor(hi, lo, img.clusterBits);
          add(d.offset, d.length);
        } else if ((t === 'normal' || t === 'zero-alloc') && !img.hasDataFile) {
          add(entryOffset(hi, lo), cs);
        }
      }
    }
  }
  if (img.h.bitmaps) await addBitmaps(img, add);
  return counts;
}

async function addBitmaps(img: Qcow2Image, add: (o: number, l: number) => void): Promise<void> {
  const b = img.h.bitmaps!;
  if (b.directorySize > 64 * 1024 * 1024) throw new BlockError('EIO', 'qcow2: bitmap directory too large');
  add(b.directoryOffset, b.directorySize);
  const dir = Buffer.alloc(b.directorySize);
  await img.readMeta(b.directoryOffset, dir);
  let pos = 0;
  for (let i = 0; i < b.nbBitmaps && pos + 24 <= dir.length; i++) {
    const tableOffset = Number(dir.readBigUInt64BE(pos));
    const tableSize = dir.readUInt32BE(pos + 8);
    const nameSize = dir.readUInt16BE(pos + 18);
    const extra = dir.readUInt32BE(pos + 20);
    pos += Math.ceil((24 + extra + nameSize) / 8) * 8;
    if (tableSize > 0x8000000 / 8) throw new BlockError('EIO', 'qcow2: bitmap table too large');
    add(tableOffset, tableSize * 8);
    const t = Buffer.alloc(tableSize * 8);
    await img.readMeta(tableOffset, t);
    for (let j = 0; j < tableSize; j++) {
      const off = entryOffset(t.readUInt32BE(j * 8), t.readUInt32BE(j * 8 + 4));
      if (off) add(off, img.cs);
    }
  }
}

/** Rewrites refcount entries that disagree with the metadata. Returns how many were fixed. */
export async function repairRefcounts(img: Qcow2Image): Promise<number> {
  const counts = await computeRefcounts(img);
  const rc = img.refcounts;
  let fixed = 0;
  const cs = img.cs;
  const blocks = Math.max(rc.table.length, Math.ceil(counts.length / rc.perBlock));
  for (let i = 0; i < blocks; i++) {
    const off = rc.table[i] ?? 0;
    const first = i * rc.perBlock;
    if (!off) {
      for (let c = first; c < Math.min(counts.length, first + rc.perBlock); c++) {
        if (counts[c]) throw new BlockError('EIO', `qcow2: cannot repair refcounts: cluster ${c * cs} has no refcount block`);
      }
      continue;
    }
    const e = await rc.cache.get(off);
    try {
      for (let k = 0; k < rc.perBlock; k++) {
        const want = first + k < counts.length ? counts[first + k] : 0;
        if (getRefcountEntry(e.buf, k, rc.bits) !== want) {
          setRefcountEntry(e.buf, k, rc.bits, Math.min(want, rc.max));
          rc.cache.markDirty(e);
          fixed++;
        }
      }
    } finally {
      rc.cache.release(e);
    }
  }
  await rc.cache.flush();
  rc.freeHint = 0;
  return fixed;
}
