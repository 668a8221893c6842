/**
 * QEMU's qed_check with fix=true (block/qed-check.c), which bdrv_qed_do_open
 * runs on an image opened read-write with QED_F_NEED_CHECK set: L1 and L2
 * entries that point outside the file (or, for tables, past it) are
 * cleared and their tables rewritten; clusters referenced twice are
 * corruptions it cannot fix. Without those (and without I/O errors) the
 * flag is cleared. Leaks are counted but left.
 */
import { F_NEED_CHECK, UNALLOCATED, ZERO_CLUSTER, bytesToClusters, isClusterOffsetValid, isTableOffsetValid } from './header.ts';
import { entryAt, type QedImage } from './image.ts';

export interface QedCheckResult { corruptions: number; corruptionsFixed: number; leaks: number; checkErrors: number }

export async function checkAndRepair(img: QedImage): Promise<QedCheckResult> {
  const { g, h } = img;
  const r: QedCheckResult = { corruptions: 0, corruptionsFixed: 0, leaks: 0, checkErrors: 0 };
  const nclusters = bytesToClusters(g.cs, img.fileSize);
  const used = new Uint8Array(nclusters + 1);
  const markUsed = (offset: number, n: number): boolean => {
    let bad = 0;
    for (let c = bytesToClusters(g.cs, offset), k = 0; k < n; k++, c++) {
      if (c < used.length) { if (used[c]) bad++; used[c] = 1; }
    }
    r.corruptions += bad;
    return bad === 0;
  };
  markUsed(h.l1TableOffset, h.tableSize);
  let invalidL1 = 0;
  let lastError: unknown;
  for (let i = 0; i < g.nelems; i++) {
    const off = entryAt(img.l1, i);
    if (off === UNALLOCATED) continue;
    if (!isTableOffsetValid(g, img.fileSize, off)) {
      img.l1.writeBigUInt64LE(0n, i * 8);
      r.corruptionsFixed++;
      invalidL1++;
      continue;
    }
    if (!markUsed(off, h.tableSize)) continue;
    let table: Buffer;
    try { table = await img.loadL2(off); } catch (e) { r.checkErrors++; lastError = e; continue; }
    let invalid = 0;
    for (let j = 0; j < g.nelems; j++) {
      const c = entryAt(table, j);
      if (c === UNALLOCATED || c === ZERO_CLUSTER) continue;
      if (!isClusterOffsetValid(g, img.fileSize, c)) {
        table.writeBigUInt64LE(0n, j * 8);
        r.corruptionsFixed++;
        invalid++;
        continue;
      }
      markUsed(c, 1);
    }
    if (invalid > 0) {
      try { await img.writeTable(off, table, 0, g.nelems); } catch (e) { r.checkErrors++; lastError = e; }
    }
  }
  if (invalidL1 > 0) {
    try { await img.writeTable(h.l1TableOffset, img.l1, 0, g.nelems); } catch (e) { r.checkErrors++; lastError = e; }
  }
  if (lastError !== undefined) throw lastError;
  for (let c = h.headerSize; c < nclusters; c++) if (!used[c]) r.leaks++;
  if (r.corruptions === 0 && r.checkErrors === 0 && img.dirty) {
    await img.file.flush();
    h.features &= ~F_NEED_CHECK;
    await img.writeHeader();
  }
  return r;
}
