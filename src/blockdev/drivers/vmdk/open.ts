/**
 * Opening a VMDK image as QEMU's vmdk_open does: the file is either a
 * sparse extent (KDMV/COWD magic; its embedded descriptor holds the CIDs)
 * or a text descriptor whose extent lines name the extent files, opened
 * as children "extents.N" relative to the descriptor's directory. A sparse
 * header with capacity 0 and a descriptor offset is a descriptor inside a
 * sparse file. The CIDs and parentFileNameHint are read last.
 */
import { BlockError } from '../../../util/errors.ts';
import { readClipped } from '../../child-io.ts';
import type { DriverContext } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import { DESC_SIZE, cString, descriptionValue, parentFileNameHint, parseExtentLines, readCid } from './descriptor.ts';
import { GD_AT_END, SECTOR, VMDK3_MAGIC, VMDK4_MAGIC, HEADER_BYTES, parseFooter, readVmdk4Header, vmdk3Geometry, vmdk4Geometry, type SparseGeometry } from './header.ts';
import { VmdkExtent, fileName } from './extent.ts';

export interface VmdkState {
  file: BlockNode;
  createType?: string;
  extents: VmdkExtent[];
  /** Where the CIDs are read and written: 0x200 in a sparse file, 0 in a descriptor file. */
  descOffset: number;
  cid: number;
  parentCid: number;
  parentHint?: string;
}

const DESC_TYPES = new Set(['monolithicFlat', 'vmfs', 'vmfsSparse', 'seSparse', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat']);
const MAX_DESC = (1 << 20) - 1;
/** Nested descriptors (a sparse file holding a descriptor naming sparse files...): QEMU recurses without bound. */
const MAX_NESTING = 8;

class Opener {
  readonly s: VmdkState;
  constructor(private readonly ctx: DriverContext, file: BlockNode) {
    this.s = { file, extents: [], descOffset: 0, cid: 0, parentCid: 0 };
  }

  /** QEMU's vmdk_read_desc: up to 1 MiB - 1 bytes from `offset` (the file must have at least 4). */
  async readDesc(file: BlockNode, offset: bigint): Promise<Buffer> {
    const size = file.length();
    if (size < 4) throw new BlockError('EINVAL', 'File is too small, not a valid image');
    const buf = Buffer.alloc(Math.min(size, MAX_DESC));
    if (offset < 0n || offset + BigInt(buf.length) > (1n << 63n) - (1n << 30n)) throw new BlockError('EIO', 'Could not read from file: Input/output error');
    if (offset < BigInt(file.length())) await readClipped(file, Number(offset), buf);
    return buf;
  }

  /** QEMU's vmdk_open_sparse. */
  async openSparse(file: BlockNode, buf: Buffer, depth: number): Promise<void> {
    const magic = buf.readUInt32BE(0);
    if (magic === VMDK3_MAGIC) return this.addSparse(file, vmdk3Geometry(buf.subarray(0, 512)));
    if (magic !== VMDK4_MAGIC) throw new BlockError('EINVAL', 'Image not in VMDK format');
    const head = Buffer.alloc(HEADER_BYTES);
    buf.copy(head);
    let h = readVmdk4Header(head);
    if (h.capacity === 0n && h.descOffset !== 0n) {
      if (depth >= MAX_NESTING) throw new BlockError('EINVAL', 'VMDK descriptors nested too deeply');
      const desc = await this.readDesc(file, BigInt.asUintN(64, h.descOffset << 9n));
      return this.openDescriptor(cString(desc), depth + 1);
    }
    this.s.createType ??= 'monolithicSparse';
    if (h.gdOffset === GD_AT_END) {
      const footer = Buffer.alloc(1536);
      // QEMU takes the offset from the image's own file, whichever extent this is.
      const at = this.s.file.length() - 1536;
      if (at < 0) throw new BlockError('EINVAL', 'Failed to read footer: Input/output error');
      await readClipped(file, at, footer);
      h = parseFooter(footer);
    }
    const g = vmdk4Geometry(h, !this.ctx.readOnly, Math.ceil(file.length() / SECTOR));
    await this.addSparse(file, g);
    if (g.compressed) this.s.createType = 'streamOptimized';
  }

  private async addSparse(file: BlockNode, g: SparseGeometry): Promise<void> {
    if (g.clusterSectors === 0n) throw new BlockError('EINVAL', 'Invalid granularity, image may be corrupt');
    const e = new VmdkExtent(file, '', false, this.sectors(g.sectors), g);
    this.place(e);
    await e.loadTables();
  }

  private sectors(n: bigint): number {
    const total = BigInt(this.s.extents.reduce((a, e) => a + e.sectors, 0)) + n;
    if (n < 0n || total * 512n > BigInt(Number.MAX_SAFE_INTEGER)) throw new BlockError('EOVERFLOW', 'Image size too large for blockd');
    return Number(n);
  }

  private place(e: VmdkExtent): void {
    const prev = this.s.extents[this.s.extents.length - 1];
    e.start = prev ? prev.end : 0;
    this.s.extents.push(e);
  }

  /** QEMU's vmdk_open_desc_file and vmdk_parse_extents. */
  async openDescriptor(desc: string, depth: number): Promise<void> {
    const ct = descriptionValue(desc, 'createType');
    if (ct === undefined) throw new BlockError('EINVAL', 'invalid VMDK image descriptor');
    if (!DESC_TYPES.has(ct)) throw new BlockError('ENOTSUP', `Unsupported image type '${ct}'`);
    this.s.createType = ct;
    this.s.descOffset = 0;
    let dir: string | undefined;
    for (const line of parseExtentLines(desc)) {
      let path = line.fname;
      if (!path.startsWith('/')) {
        if (dir === undefined) {
          const base = fileName(this.s.file);
          if (!base || base.startsWith('json:')) {
            throw new BlockError('EINVAL', `Cannot use relative paths with VMDK descriptor file '${base}': Cannot generate a base directory for ${this.s.file.driver.name} nodes`);
          }
          dir = base.slice(0, base.lastIndexOf('/') + 1);
        }
        path = dir + path;
      }
      if (line.type === 'SESPARSE') throw new BlockError('ENOTSUP', 'blockd does not open seSparse extents: convert the image with qemu-img');
      const child = await this.ctx.openChild(`extents.${this.s.extents.length}`, this.ctx.protocolOptions(path));
      if (line.type === 'FLAT' || line.type === 'VMFS') {
        const e = new VmdkExtent(child, line.type, true, this.sectors(line.sectors));
        const start = line.flatOffset << 9n;
        if (start > BigInt(Number.MAX_SAFE_INTEGER)) throw new BlockError('EOVERFLOW', 'Flat extent offset too large for blockd');
        e.flatStart = Number(start);
        this.place(e);
      } else {
        const buf = await this.readDesc(child, 0n);
        await this.openSparse(child, buf, depth);
        this.s.extents[this.s.extents.length - 1].type = line.type;
      }
    }
  }

  /** vmdk_parent_open and vmdk_read_cid: from DESC_SIZE bytes at the descriptor's offset. */
  async readCids(): Promise<void> {
    const failed = () => new BlockError('EINVAL', `Could not open '${fileName(this.s.file)}': Invalid argument`);
    const raw = Buffer.alloc(DESC_SIZE);
    await readClipped(this.s.file, this.s.descOffset, raw);
    try {
      this.s.parentHint = parentFileNameHint(cString(raw));
    } catch {
      throw failed();
    }
    raw[DESC_SIZE - 1] = 0;
    const desc = cString(raw);
    const cid = readCid(desc, false);
    const parent = readCid(desc, true);
    if (cid === undefined || parent === undefined) throw failed();
    this.s.cid = cid;
    this.s.parentCid = parent;
  }
}

/** Opens the image on `file` (the node's file child). */
export async function openVmdk(ctx: DriverContext, file: BlockNode): Promise<VmdkState> {
  const o = new Opener(ctx, file);
  const buf = await o.readDesc(file, 0n);
  const magic = buf.readUInt32BE(0);
  if (magic === VMDK3_MAGIC || magic === VMDK4_MAGIC) {
    await o.openSparse(file, buf, 0);
    o.s.descOffset = 0x200;
  } else {
    await o.openDescriptor(cString(buf), 0);
  }
  await o.readCids();
  return o.s;
}
