/**
 * VHD (Virtual PC) footer and dynamic-disk header as QEMU's block/vpc.c
 * reads and writes them: big-endian 512-byte footer (at the end of every
 * image, and at the start of a dynamic one), the 1024-byte dynamic header,
 * QEMU's CHS geometry and size rules. Pure: no I/O.
 */
import { BlockError } from '../../../util/errors.ts';

export const SECTOR = 512;
export const FOOTER_SIZE = 512;
export const DYN_HEADER_SIZE = 1024;
export const VHD_FIXED = 2;
export const VHD_DYNAMIC = 3;
export const VHD_MAX_SECTORS = 0xff000000;
const CHS_MAX_C = 65535;
const CHS_MAX_H = 16;
const CHS_MAX_S = 255;
export const VHD_MAX_GEOMETRY = CHS_MAX_C * CHS_MAX_H * CHS_MAX_S;
const TIMESTAMP_BASE = 946684800;
export const DEFAULT_BLOCK_SIZE = 0x200000;
export const UNALLOCATED = 0xffffffff;

/** QEMU's vpc_checksum: one's complement of the byte sum. */
export function vpcChecksum(b: Buffer): number {
  let sum = 0;
  for (const x of b) sum = (sum + x) >>> 0;
  return ~sum >>> 0;
}

export const probeVpc = (head: Buffer): number => (head.length >= 8 && head.toString('latin1', 0, 8) === 'conectix' ? 100 : 0);
export const isFooter = (b: Buffer): boolean => b.toString('latin1', 0, 8) === 'conectix';

export interface VpcFooter {
  type: number;
  dataOffset: bigint;
  /** Visible size in sectors (QEMU's total_sectors rules). */
  totalSectors: number;
  /** The footer as read, written back whenever the file grows. */
  raw: Buffer;
}

/** Checks and interprets a footer (after "conectix" was found); QEMU's vpc_open rules. */
export function parseFooter(sector: Buffer): VpcFooter {
  const raw = Buffer.from(sector.subarray(0, FOOTER_SIZE));
  const checksum = raw.readUInt32BE(64);
  const zeroed = Buffer.from(raw);
  zeroed.writeUInt32BE(0, 64);
  if (vpcChecksum(zeroed) !== checksum) throw new BlockError('EINVAL', 'Incorrect header checksum');
  let totalSectors = raw.readUInt16BE(56) * raw[58] * raw[59];
  // Virtual PC and QEMU's 'qemu' size by geometry; Hyper-V and others by current_size (and so does everyone at the maximum geometry).
  const app = raw.subarray(28, 32);
  const bySize = ['win ', 'qem2', 'd2v ', 'CTXS'].includes(app.toString('latin1')) || app.equals(Buffer.from('tap\0', 'latin1'));
  if (bySize || totalSectors === VHD_MAX_GEOMETRY) totalSectors = Number(raw.readBigUInt64BE(48) / 512n);
  return { type: raw.readUInt32BE(60), dataOffset: raw.readBigUInt64BE(16), totalSectors, raw };
}

export interface DynHeader { tableOffset: bigint; maxTableEntries: number; blockSize: number }

/** The dynamic-disk header's fields QEMU uses, checked as vpc_open checks them. */
export function parseDynHeader(b: Buffer, totalSectors: number): DynHeader & { bitmapSize: number } {
  if (b.toString('latin1', 0, 8) !== 'cxsparse') throw new BlockError('EINVAL', 'Invalid header magic');
  const blockSize = b.readUInt32BE(32);
  if ((blockSize & (blockSize - 1)) !== 0 || blockSize < SECTOR) throw new BlockError('EINVAL', `Invalid block size ${blockSize}`);
  const bitmapSize = (Math.floor(blockSize / (8 * 512)) + 511) & ~511;
  const maxTableEntries = b.readUInt32BE(28);
  if (Math.floor((totalSectors * 512) / blockSize) > 0xffffffff) throw new BlockError('EINVAL', 'Too many blocks');
  if (maxTableEntries * blockSize < totalSectors * 512) throw new BlockError('EINVAL', 'Page table too small');
  if (maxTableEntries > 0x7fffffff / 4) throw new BlockError('EINVAL', `Max Table Entries too large (${maxTableEntries | 0})`);
  return { tableOffset: b.readBigUInt64BE(16), maxTableEntries, blockSize, bitmapSize };
}

/** The VHD specification's CHS geometry of a number of sectors (QEMU's calculate_geometry). */
function geometry(totalSectors: number): [number, number, number] {
  const t = Math.min(totalSectors, VHD_MAX_GEOMETRY);
  let spc: number; let heads: number; let cth: number;
  if (t >= 65535 * 16 * 63) {
    spc = 255; heads = 16; cth = Math.floor(t / spc);
  } else {
    spc = 17; cth = Math.floor(t / spc);
    heads = Math.max(4, Math.ceil(cth / 1024));
    if (cth >= heads * 1024 || heads > 16) { spc = 31; heads = 16; cth = Math.floor(t / spc); }
    if (cth >= heads * 1024) { spc = 63; heads = 16; cth = Math.floor(t / spc); }
  }
  return [Math.floor(cth / heads), heads, spc];
}

/** QEMU's calculate_rounded_image_size: the geometry and sectors an image of `size` bytes gets. */
export function roundedSize(size: number, forceSize: boolean): { chs: [number, number, number]; totalSectors: number } {
  let chs: [number, number, number] = [0, 0, 0];
  if (forceSize) chs = [CHS_MAX_C, CHS_MAX_H, CHS_MAX_S];
  else {
    const want = Math.min(VHD_MAX_GEOMETRY, Math.floor(size / SECTOR));
    for (let i = 0; want > chs[0] * chs[1] * chs[2]; i++) chs = geometry(want + i);
  }
  if (chs[0] * chs[1] * chs[2] === VHD_MAX_GEOMETRY) {
    const totalSectors = Math.floor(size / SECTOR);
    if (totalSectors > VHD_MAX_SECTORS) throw new BlockError('EOVERFLOW', 'Disk size is too large, max size is 2040 GiB');
    return { chs, totalSectors };
  }
  return { chs, totalSectors: chs[0] * chs[1] * chs[2] };
}

/** A new footer (QEMU's vpc_co_create): creator 'qemu' (or 'qem2' with force-size), Virtual PC 2007's version, a random UUID. */
export function newFooter(size: number, type: number, chs: [number, number, number], forceSize: boolean): Buffer {
  const f = Buffer.alloc(FOOTER_SIZE);
  f.write('conectix', 0, 'latin1');
  f.writeUInt32BE(0x02, 8);
  f.writeUInt32BE(0x00010000, 12);
  f.writeBigUInt64BE(type === VHD_DYNAMIC ? BigInt(FOOTER_SIZE) : 0xffffffffffffffffn, 16);
  f.writeUInt32BE((Math.floor(Date.now() / 1000) - TIMESTAMP_BASE) >>> 0, 24);
  f.write(forceSize ? 'qem2' : 'qemu', 28, 'latin1');
  f.writeUInt16BE(5, 32);
  f.writeUInt16BE(3, 34);
  f.write('Wi2k', 36, 'latin1');
  f.writeBigUInt64BE(BigInt(size), 40);
  f.writeBigUInt64BE(BigInt(size), 48);
  f.writeUInt16BE(chs[0], 56);
  f[58] = chs[1];
  f[59] = chs[2];
  f.writeUInt32BE(type, 60);
  for (let i = 68; i < 84; i++) f[i] = Math.floor(Math.random() * 256);
  f[74] = (f[74] & 0x0f) | 0x40;
  f[76] = (f[76] & 0x3f) | 0x80;
  f.writeUInt32BE(vpcChecksum(f), 64);
  return f;
}

/** A dynamic image's first bytes (footer copy, dynamic header, all-unallocated BAT) and where its footer goes. */
export function dynamicLayout(footer: Buffer, totalSectors: number): { head: Buffer; footerAt: number } {
  const entries = Math.ceil(totalSectors / (DEFAULT_BLOCK_SIZE / 512));
  const batBytes = Math.ceil((entries * 4) / 512) * 512;
  const head = Buffer.alloc(3 * 512 + batBytes, 0xff);
  footer.copy(head, 0);
  const dyn = Buffer.alloc(DYN_HEADER_SIZE);
  dyn.write('cxsparse', 0, 'latin1');
  dyn.writeBigUInt64BE(0xffffffffffffffffn, 8);
  dyn.writeBigUInt64BE(3n * 512n, 16);
  dyn.writeUInt32BE(0x00010000, 24);
  dyn.writeUInt32BE(entries, 28);
  dyn.writeUInt32BE(DEFAULT_BLOCK_SIZE, 32);
  dyn.writeUInt32BE(vpcChecksum(dyn), 36);
  dyn.copy(head, 512);
  return { head, footerAt: 1536 + batBytes };
}
