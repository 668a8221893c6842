/**
 * The Parallels Format Extension (QEMU's block/parallels-ext.c,
 * docs/interop/parallels.txt): one cluster at ext_off, a magic and an MD5
 * of the rest, then features until the end-of-features one. QEMU reads it
 * only for read-only opens and knows one feature, the dirty bitmap: each
 * becomes a read-only, recording, non-persistent dirty bitmap of the node
 * named by its UUID. The checks and texts are QEMU's, in its order.
 *
 * A bitmap's data: an L1 table of 64-bit entries, each covering
 * cluster_size * 8 granules (0: all clear, 1: all set, else the sector of
 * a cluster holding the bits, least significant bit first).
 */
import { createHash } from 'node:crypto';
import { BlockError } from '../../../util/errors.ts';
import { readClipped } from '../../child-io.ts';
import type { BlockNode } from '../../node.ts';
import { DirtyBitmap } from '../../bitmaps/dirty-bitmap.ts';
import type { ParallelsHeader } from './header.ts';

export const EXT_MAGIC = 0xab234cef23dcea87n;
export const DIRTY_BITMAP_MAGIC = 0x20385fae252cb34an;
const EXT_HEADER = 24;
const FEATURE_HEADER = 24;
const BITMAP_FEATURE = 32;

const bad = (msg: string) => new BlockError('EINVAL', msg);

/** QEMU's qemu_uuid_unparse of the 16 bytes as stored. */
function uuidString(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Reads `n` bytes at `at` of the cluster (QEMU reads past its end too; blockd sees zeroes there). */
function slice(c: Buffer, at: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  if (at < c.length) c.copy(b, 0, at, Math.min(c.length, at + n));
  return b;
}

async function loadBitmap(file: BlockNode, h: ParallelsHeader, clusterSize: number, data: Buffer, taken: Set<string>): Promise<DirtyBitmap> {
  if (data.length < BITMAP_FEATURE) {
    throw bad(`Too small Bitmap Feature area in Parallels Format Extension: ${data.length} bytes, expected at least ${BITMAP_FEATURE} bytes`);
  }
  const size = data.readBigUInt64LE(0);
  const granularity = (data.readUInt32LE(24) << 9) >>> 0;
  const l1Size = data.readUInt32LE(28);
  if (size !== h.totalSectors) throw bad(`Bitmap size (in sectors) ${size} differs from disk size in sectors ${h.totalSectors}`);
  if (l1Size * 8 > data.length - BITMAP_FEATURE) throw bad('Bitmaps feature corrupted: l1 table exceeds extension data_size');
  const name = uuidString(data.subarray(8, 24));
  // QEMU asserts a power-of-two granularity of at least a sector (qsd aborts); blockd refuses the image.
  if (granularity < 512 || (granularity & (granularity - 1)) !== 0) throw bad(`Invalid granularity ${granularity} of bitmap '${name}'`);
  if (taken.has(name)) throw bad(`Bitmap already exists: ${name}`);
  const bmSize = Number(h.totalSectors) * 512;
  const bm = new DirtyBitmap(name, granularity, bmSize);
  const bits = Math.ceil(bmSize / granularity);
  const tabSize = Math.ceil((Math.ceil(bits / 64) * 8) / clusterSize);
  if (tabSize !== l1Size) {
    throw bad(`Bitmap table size ${l1Size} does not correspond to bitmap size and cluster size. Expected ${tabSize}`);
  }
  const limit = clusterSize * 8 * granularity;
  const buf = Buffer.alloc(clusterSize);
  for (let i = 0, offset = 0; i < tabSize; i++, offset += limit) {
    const count = Math.min(bmSize - offset, limit);
    const entry = data.readBigUInt64LE(BITMAP_FEATURE + i * 8);
    if (entry === 0n) continue;
    if (entry === 1n) { bm.mark(offset, count); continue; }
    const at = entry * 512n;
    if (at > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('Failed to read bitmap data cluster: Invalid argument');
    await readClipped(file, Number(at), buf);
    const n = Math.ceil(count / granularity);
    for (let j = 0; j < n; j++) {
      if (buf[j >> 3] & (1 << (j & 7))) bm.mark(offset + j * granularity, granularity);
    }
  }
  bm.readOnlySource = () => true;
  return bm;
}

/** QEMU's parallels_read_format_extension: the bitmaps it defines, or QEMU's error. */
export async function readFormatExtension(file: BlockNode, h: ParallelsHeader, extOff: number): Promise<DirtyBitmap[]> {
  const clusterSize = h.tracks * 512;
  const c = Buffer.alloc(clusterSize);
  await readClipped(file, extOff, c);
  const magic = c.readBigUInt64LE(0);
  if (magic !== EXT_MAGIC) throw bad(`Wrong parallels Format Extension magic: 0x${magic.toString(16)}, expected: 0x${EXT_MAGIC.toString(16)}`);
  const md5 = createHash('md5').update(c.subarray(EXT_HEADER)).digest();
  if (!md5.equals(c.subarray(8, 24))) throw bad('Wrong checksum in Format Extension header. Format extension is corrupted.');
  let pos = EXT_HEADER;
  // As in QEMU, what remains shrinks by the feature headers only, not by their data.
  let remaining = clusterSize - EXT_HEADER;
  const bitmaps: DirtyBitmap[] = [];
  const taken = new Set<string>();
  for (;;) {
    if (remaining < FEATURE_HEADER) {
      throw bad(`Can not read feature header, as remaining bytes (${remaining}) in Format Extension is less than Feature header size (${FEATURE_HEADER})`);
    }
    const fh = slice(c, pos, FEATURE_HEADER);
    pos += FEATURE_HEADER;
    remaining -= FEATURE_HEADER;
    const fmagic = fh.readBigUInt64LE(0);
    const flags = fh.readBigUInt64LE(8);
    const dataSize = fh.readUInt32LE(16);
    if (flags) throw bad('Flags for extension feature are unsupported');
    if (dataSize > remaining) throw bad('Feature data_size exceedes Format Extension cluster');
    if (fmagic === 0n) return bitmaps;
    if (fmagic !== DIRTY_BITMAP_MAGIC) throw bad(`Unknown feature: 0x${fmagic.toString(16)}`);
    const bm = await loadBitmap(file, h, clusterSize, slice(c, pos, dataSize), taken);
    taken.add(bm.name);
    // A node lists its bitmaps newest first.
    bitmaps.unshift(bm);
    pos = Math.ceil((pos + dataSize) / 8) * 8;
  }
}
