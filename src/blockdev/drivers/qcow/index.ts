/**
 * qcow: QEMU's original image format (version 1; QEMU's block/qcow.c),
 * read-only in blockd: a two-level table (L1, L2 of 64-bit big-endian
 * entries) maps clusters; an entry with the top bit set is a compressed
 * cluster (raw deflate); unallocated clusters read from the backing file,
 * or as zeroes. AES-encrypted images (which QEMU no longer opens in its
 * system emulators) are refused. Header checks: header.ts.
 */
import { inflateRaw } from 'node:zlib';
import { enm, obj, opt, req } from '../../../qapi/types.ts';
import { BlockError } from '../../../util/errors.ts';
import { BlockdevRef, BlockdevRefOrNull } from '../../options.ts';
import { readClipped } from '../../child-io.ts';
import { resolveBacking } from '../qcow2/index.ts';
import type { Driver, DriverContext, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import type { Extent } from '../../request.ts';
import { HEADER_SIZE, parseQcowHeader, probeQcow, type QcowHeader } from './header.ts';

const COMPRESSED = 1n << 63n;

function inflateCluster(input: Buffer, size: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    inflateRaw(input, { maxOutputLength: size, finishFlush: 2 /* Z_SYNC_FLUSH */ }, (err, out) => {
      if (err || out.length !== size) reject(new BlockError('EIO', 'Could not decompress a compressed cluster'));
      else resolve(out);
    });
  });
}

class QcowImage {
  private readonly l2Cache = new Map<bigint, Promise<Buffer>>();
  private readonly cs: number;
  constructor(private readonly file: BlockNode, private readonly h: QcowHeader, private readonly l1: BigUint64Array,
    private readonly backing: () => BlockNode | undefined) {
    this.cs = 1 << h.clusterBits;
  }

  get clusterSize(): number { return this.cs; }

  /** The L2 entry of the cluster holding `offset` (0: unallocated). */
  private async entry(offset: number): Promise<bigint> {
    const l1i = Math.floor(offset / 2 ** (this.h.clusterBits + this.h.l2Bits));
    const l2off = this.l1[l1i];
    if (!l2off) return 0n;
    let t = this.l2Cache.get(l2off);
    if (!t) {
      const buf = Buffer.alloc(8 << this.h.l2Bits);
      // An L2 table past the end of the file reads as zeroes (unallocated), as in QEMU; past 2^53 it cannot be read.
      t = l2off > BigInt(Number.MAX_SAFE_INTEGER) ? Promise.reject(new BlockError('EIO', 'L2 table offset out of range')) : readClipped(this.file, Number(l2off), buf).then(() => buf);
      if (this.l2Cache.size >= 16) this.l2Cache.delete(this.l2Cache.keys().next().value!);
      this.l2Cache.set(l2off, t);
      t.catch(() => this.l2Cache.delete(l2off));
    }
    const l2i = Math.floor(offset / this.cs) % (1 << this.h.l2Bits);
    return (await t).readBigUInt64BE(l2i * 8);
  }

  async read(offset: number, buf: Buffer): Promise<void> {
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const inCluster = pos % this.cs;
      const n = Math.min(buf.length - done, this.cs - inCluster);
      const part = buf.subarray(done, done + n);
      const e = await this.entry(pos);
      if (e === 0n) {
        const b = this.backing();
        const inB = b ? Math.max(0, Math.min(n, b.length() - pos)) : 0;
        if (inB > 0) await b!.read(pos, part.subarray(0, inB));
        part.fill(0, inB);
      } else if (e & COMPRESSED) {
        const mask = (1n << BigInt(63 - this.h.clusterBits)) - 1n;
        const csize = Number((e >> BigInt(63 - this.h.clusterBits)) & BigInt(this.cs - 1));
        const input = Buffer.alloc(csize);
        await readClipped(this.file, Number(e & mask), input);
        (await inflateCluster(input, this.cs)).copy(part, 0, inCluster, inCluster + n);
      } else {
        if (e & 511n || e > BigInt(Number.MAX_SAFE_INTEGER)) throw new BlockError('EIO', 'Input/output error');
        await readClipped(this.file, Number(e) + inCluster, part);
      }
      done += n;
    }
  }

  /** QEMU's qcow_co_block_status: per cluster; unallocated ones go to the backing file (or are zero). */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const n = Math.min(length, this.cs - (offset % this.cs));
    const e = await this.entry(offset);
    if (e !== 0n) return [{ offset, length: n, data: true, zero: false, allocated: true, depth: 1 }];
    const b = this.backing();
    if (b && offset < b.length()) {
      const [x] = await b.blockStatus(offset, Math.min(n, b.length() - offset));
      return [{ offset, length: x.length, data: x.data, zero: x.zero, allocated: false, depth: x.depth ? x.depth + 1 : 0 }];
    }
    return [{ offset, length: n, data: false, zero: true, allocated: false, depth: 0 }];
  }
}

async function openBacking(options: Record<string, unknown>, h: QcowHeader, file: BlockNode, ctx: DriverContext): Promise<{ node?: BlockNode; name?: string }> {
  let name: string | undefined;
  if (h.backingFileOffset !== 0n) {
    if (h.backingFileSize > 1023) throw new BlockError('EINVAL', 'Backing file name too long');
    const b = Buffer.alloc(h.backingFileSize);
    if (h.backingFileOffset < BigInt(Number.MAX_SAFE_INTEGER)) await readClipped(file, Number(h.backingFileOffset), b);
    const nul = b.indexOf(0);
    name = b.toString('utf8', 0, nul < 0 ? b.length : nul);
  }
  const opt = options.backing;
  if (opt === null) return { name };
  if (opt !== undefined) return { node: await ctx.openChild('backing', opt as string | Record<string, unknown>), name };
  if (!name) return { name };
  const filename = resolveBacking(name, file);
  let fmt: string;
  try {
    fmt = await ctx.probeFormat(filename);
  } catch (e) {
    throw new BlockError('ENOENT', `Could not open backing file: ${(e as Error).message}`);
  }
  return { node: await ctx.openChild('backing', { driver: fmt, file: { driver: 'file', filename }, 'read-only': true }, { probed: true }), name };
}

export const qcowDriver: Driver = {
  name: 'qcow',
  kind: 'format',
  options: obj('BlockdevOptionsQcow', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
    opt('backing', BlockdevRefOrNull, 'reference to or definition of the backing file block device, null disables the backing file entirely'),
    opt('encrypt', obj('BlockdevQcowEncryption', [
      req('format', enm('BlockdevQcowEncryptionFormat', ['aes']), 'encryption format'),
      opt('key-secret', 'str', 'ID of a QCryptoSecret object providing the decryption key'),
    ]), 'Image decryption options (blockd refuses encrypted qcow images, so these only ever produce an error).'),
  ]),
  probe: probeQcow,
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const head = Buffer.alloc(HEADER_SIZE);
    await readClipped(file, 0, head);
    const h = parseQcowHeader(head);
    if (h.cryptMethod === 1) throw new BlockError('ENOTSUP', 'blockd does not open AES-encrypted qcow images: convert them with qemu-img');
    if (h.cryptMethod !== 0) throw new BlockError('EINVAL', 'invalid encryption method in qcow header');
    if (options.encrypt !== undefined) throw new BlockError('EINVAL', `No encryption in image header, but options specified format '${String((options.encrypt as { format?: string }).format)}'`);
    const writable = !ctx.readOnly;
    if (writable && ctx.options['auto-read-only'] !== true) throw new BlockError('ENOTSUP', 'blockd opens qcow (v1) images read-only: give read-only=on');
    const raw = Buffer.alloc(h.l1Size * 8);
    if (h.l1TableOffset < BigInt(Number.MAX_SAFE_INTEGER)) await readClipped(file, Number(h.l1TableOffset), raw);
    const l1 = new BigUint64Array(h.l1Size);
    for (let i = 0; i < h.l1Size; i++) l1[i] = raw.readBigUInt64BE(i * 8);
    const backing = await openBacking(options, h, file, ctx);
    const img = new QcowImage(file, h, l1, () => backing.node);
    return {
      openedReadOnly: writable,
      length: () => h.size,
      read: (o, buf) => img.read(o, buf),
      write: async () => { throw new BlockError('EPERM', 'blockd opens qcow (v1) images read-only'); },
      blockStatus: (o, l) => img.blockStatus(o, l),
      flush: async () => undefined,
      // QEMU's qcow_refresh_limits: 512-byte requests.
      limits: { alignment: 512, canFua: false },
      info: () => ({ 'cluster-size': img.clusterSize, 'dirty-flag': false, ...(backing.name !== undefined ? { 'backing-filename': backing.name } : {}) }),
    };
  },
};
