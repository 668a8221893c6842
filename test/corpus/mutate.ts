/**
 * Seeded mutations of a valid qcow2 image, aimed at its structures: header
 * fields, L1 and L2 entries pointing anywhere (metadata, past the end,
 * unaligned, at each other: loops and shared tables), refcount table and
 * block entries (zero, overflowing, garbage), the snapshot table, the bitmap
 * directory and tables, header extensions, truncation, random bytes.
 */
import { parseHeader } from '../../src/blockdev/drivers/qcow2/header.ts';

export type Rng = () => number;

/** mulberry32: the same seed gives the same image. */
export function prng(seed: number): Rng {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rng, n: number) => Math.floor(r() * n);

const HEADER_FIELDS: [string, number, 4 | 8][] = [['version', 4, 4], ['backing_file_offset', 8, 8], ['backing_file_size', 16, 4], ['cluster_bits', 20, 4],
  ['size', 24, 8], ['crypt_method', 32, 4], ['l1_size', 36, 4], ['l1_table_offset', 40, 8], ['refcount_table_offset', 48, 8],
  ['refcount_table_clusters', 56, 4], ['nb_snapshots', 60, 4], ['snapshots_offset', 64, 8], ['incompatible_features', 72, 8],
  ['compatible_features', 80, 8], ['autoclear_features', 88, 8], ['refcount_order', 96, 4], ['header_length', 100, 4]];

const OFFSET_MASK = 0x00fffffffffffe00n;

interface Layout {
  clusterSize: number;
  l1: number; l1Size: number;
  reftable: number; reftableClusters: number;
  snapshots: number; nbSnapshots: number;
  bitmapDir?: number; bitmapDirSize?: number;
  l2s: number[]; refblocks: number[];
}

function layout(img: Buffer): Layout | undefined {
  try {
    const h = parseHeader(img.subarray(0, Math.min(img.length, 2 ** 21)));
    const entries = (at: number, n: number) => {
      const out: number[] = [];
      for (let i = 0; i < n && at + i * 8 + 8 <= img.length; i++) {
        const off = Number(img.readBigUInt64BE(at + i * 8) & OFFSET_MASK);
        if (off && off < img.length) out.push(off);
      }
      return out;
    };
    return {
      clusterSize: 2 ** h.clusterBits, l1: h.l1TableOffset, l1Size: h.l1Size, reftable: h.refcountTableOffset,
      reftableClusters: h.refcountTableClusters, snapshots: h.snapshotsOffset, nbSnapshots: h.nbSnapshots,
      bitmapDir: h.bitmaps?.directoryOffset, bitmapDirSize: h.bitmaps?.directorySize,
      l2s: entries(h.l1TableOffset, h.l1Size), refblocks: entries(h.refcountTableOffset, (h.refcountTableClusters * 2 ** h.clusterBits) / 8),
    };
  } catch {
    return undefined;
  }
}

/** An offset worth pointing at: metadata, the file's end and beyond, unaligned, huge. */
function target(r: Rng, img: Buffer, l: Layout): bigint {
  const cands = [0, l.l1, l.reftable, l.snapshots, ...l.l2s, ...l.refblocks, img.length, img.length + l.clusterSize, 2 ** 40, 2 ** 55,
    l.clusterSize * int(r, Math.max(1, img.length / l.clusterSize)), l.clusterSize + 512, 1];
  return BigInt(pick(r, cands));
}

function putU64(img: Buffer, at: number, v: bigint): void { if (at >= 0 && at + 8 <= img.length) img.writeBigUInt64BE(v & (2n ** 64n - 1n), at); }

/** One mutation applied in place (or a new, truncated buffer); returns it and what it did. */
function mutateOnce(r: Rng, img: Buffer): { img: Buffer; what: string } {
  const l = layout(img);
  const kind = l ? pick(r, ['header', 'l1', 'l1', 'l2', 'l2', 'l2', 'reftable', 'refblock', 'refblock', 'snapshot', 'bitmap', 'truncate', 'bytes', 'extension']) : pick(r, ['bytes', 'truncate', 'header']);
  switch (kind) {
    case 'header': {
      const [name, at, w] = pick(r, HEADER_FIELDS);
      const v = pick(r, [0n, 1n, 2n, 3n, 4n, 8n, 9n, 16n, 22n, 64n, 2n ** 31n, 2n ** 32n - 1n, 2n ** 63n, 2n ** 64n - 1n, BigInt(int(r, 2 ** 32))]);
      if (w === 8) putU64(img, at, v); else img.writeUInt32BE(Number(v & 0xffffffffn), at);
      return { img, what: `header ${name}=${v}` };
    }
    case 'l1': {
      const i = int(r, Math.max(1, l!.l1Size));
      const v = r() < 0.3 ? BigInt(int(r, 2 ** 32)) * 2n ** 32n + BigInt(int(r, 2 ** 32)) : target(r, img, l!) | (r() < 0.5 ? 1n << 63n : 0n);
      putU64(img, l!.l1 + i * 8, v);
      return { img, what: `L1[${i}]=0x${v.toString(16)}` };
    }
    case 'l2': {
      if (!l!.l2s.length) return { img, what: 'no L2 table' };
      const t = pick(r, l!.l2s);
      const i = int(r, l!.clusterSize / 8);
      const v = pick(r, [
        target(r, img, l!) | (1n << 63n), target(r, img, l!), 1n, 1n << 62n | BigInt(int(r, 2 ** 30)), BigInt(int(r, 2 ** 32)) << 9n,
        (1n << 63n) | 0x1fen, 2n ** 64n - 1n,
      ]);
      putU64(img, t + i * 8, v);
      return { img, what: `L2@0x${t.toString(16)}[${i}]=0x${v.toString(16)}` };
    }
    case 'reftable': {
      const i = int(r, Math.max(1, l!.refblocks.length + 1));
      const v = target(r, img, l!);
      putU64(img, l!.reftable + i * 8, v);
      return { img, what: `reftable[${i}]=0x${v.toString(16)}` };
    }
    case 'refblock': {
      if (!l!.refblocks.length) return { img, what: 'no refcount block' };
      const b = pick(r, l!.refblocks);
      const at = b + int(r, l!.clusterSize);
      const v = pick(r, [0, 0xff, 0x01, int(r, 256)]);
      const n = 1 + int(r, 8);
      img.fill(v, at, Math.min(img.length, at + n));
      return { img, what: `refblock@0x${b.toString(16)}+${at - b} ${n}x${v}` };
    }
    case 'snapshot': {
      if (!l!.nbSnapshots) return { img, what: 'no snapshot table' };
      const at = l!.snapshots + int(r, 120);
      if (at < img.length) img[at] = int(r, 256);
      return { img, what: `snapshot table byte ${at - l!.snapshots}` };
    }
    case 'bitmap': {
      if (l!.bitmapDir === undefined || l!.bitmapDir >= img.length) return { img, what: 'no bitmap directory' };
      const at = l!.bitmapDir + int(r, Math.max(1, l!.bitmapDirSize ?? 24));
      if (at < img.length) img[at] = int(r, 256);
      return { img, what: `bitmap directory byte ${at - l!.bitmapDir}` };
    }
    case 'extension': {
      const at = 104 + int(r, 400);
      if (at < img.length) img[at] = int(r, 256);
      return { img, what: `header extension byte ${at}` };
    }
    case 'truncate': {
      const n = int(r, img.length);
      return { img: Buffer.from(img.subarray(0, n)), what: `truncated to ${n}` };
    }
    default: {
      const n = 1 + int(r, 16);
      for (let k = 0; k < n; k++) img[int(r, img.length)] = int(r, 256);
      return { img, what: `${n} random bytes` };
    }
  }
}

/** 1-3 mutations of `base`; the list of what was done. */
export function mutate(base: Buffer, seed: number): { img: Buffer; what: string[] } {
  const r = prng(seed);
  let img: Buffer = Buffer.from(base);
  const what: string[] = [];
  const n = 1 + int(r, 3);
  for (let i = 0; i < n; i++) {
    const m = mutateOnce(r, img);
    img = m.img;
    what.push(m.what);
  }
  return { img, what };
}
