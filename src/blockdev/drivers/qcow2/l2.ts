/**
 * L1/L2 entry encoding (pure). Entries are 64-bit big-endian; JS numbers hold
 * 53 bits, so they are read as two 32-bit halves. Host offsets are bits 9-55.
 */
export type ClusterType = 'unallocated' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed';
export type SubclusterType = 'unallocated' | 'zero' | 'normal' | 'compressed' | 'invalid';

export const COPIED_HI = 0x80000000;
export const COMPRESSED_HI = 0x40000000;
const ZERO_LO = 1;

export interface L2Entry { hi: number; lo: number }

/** Bits 9-55 of an entry: the (cluster-aligned) host offset of standard entries, L1 and refcount table entries. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * 0x100000000 + ((lo & ~0x1ff) >>> 0);
}

export function isCopied(hi: number): boolean { return (hi & COPIED_HI) !== 0; }

/** Reserved bits of a standard L2 entry (1-8 and 56-61) that must be zero. */
export function l2ReservedBits(hi: number, lo: number): boolean { return (hi & 0x3f000000) !== 0 || (lo & 0x1fe) !== 0; }
/** Reserved bits of an L1 entry (0-8, 56-62). */
export function l1ReservedBits(hi: number, lo: number): boolean { return (hi & 0x7f000000) !== 0 || (lo & 0x1ff) !== 0; }

/** QEMU's qcow2_get_cluster_type. */
export function clusterType(hi: number, lo: number, v3: boolean, extL2: boolean, dataFile: boolean): ClusterType {
  if (hi & COMPRESSED_HI) return 'compressed';
  const off = entryOffset(hi, lo);
  if (!extL2 && v3 && (lo & ZERO_LO)) return off ? 'zero-alloc' : 'zero-plain';
  if (off === 0 && !(dataFile && (hi & COPIED_HI))) return 'unallocated';
  return 'normal';
}

/** Status of subcluster `sc` from the cluster type and the extended-L2 bitmap (alloc bits 0-31, zero bits 32-63). */
export function subclusterType(type: ClusterType, allocBits: number, zeroBits: number, sc: number): SubclusterType {
  const a = (allocBits >>> sc) & 1;
  const z = (zeroBits >>> sc) & 1;
  if (type === 'compressed') return allocBits || zeroBits ? 'invalid' : 'compressed';
  if (a && z) return 'invalid';
  if (type === 'normal') return a ? 'normal' : z ? 'zero' : 'unallocated';
  // Unallocated cluster (offset 0): nothing may be allocated inside it.
  if (a) return 'invalid';
  return z ? 'zero' : 'unallocated';
}

/** Compressed cluster descriptor: host byte offset and the number of bytes to read. */
export function compressedDescriptor(hi: number, lo: number, clusterBits: number): { offset: number; length: number } {
  const v = (BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo >>> 0);
  const x = BigInt(62 - (clusterBits - 8));
  const offset = Number(v & ((1n << x) - 1n));
  const sectors = Number(v >> x);
  // Data runs from the offset to the end of its sector plus the additional sectors.
  const end = (Math.floor(offset / 512) + sectors + 1) * 512;
  return { offset, length: end - offset };
}

export function writeEntry(buf: Buffer, pos: number, hi: number, lo: number): void {
  buf.writeUInt32BE(hi >>> 0, pos);
  buf.writeUInt32BE(lo >>> 0, pos + 4);
}

/** Builds the two halves of an entry for a host offset plus flags. */
export function makeEntry(offset: number, copied: boolean, zero = false): L2Entry {
  const hi = Math.floor(offset / 0x100000000) | (copied ? COPIED_HI : 0);
  const lo = (offset % 0x100000000) | (zero ? ZERO_LO : 0);
  return { hi: hi >>> 0, lo: lo >>> 0 };
}

export const ZERO_ENTRY: L2Entry = { hi: 0, lo: ZERO_LO };
export const ALL_SUBCLUSTERS = 0xffffffff;
