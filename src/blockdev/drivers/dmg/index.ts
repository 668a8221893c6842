/**
 * dmg: Apple's disk images (UDIF), read-only, as QEMU 7.2's block/dmg.c:
 * the koly trailer at the end points at the blkx tables (in a resource
 * fork, or else an XML property list), whose entries map runs of sectors
 * to chunks of the data fork: zeroes, raw, ignored (zeroes) or zlib. As in
 * Debian's qsd, which has neither the dmg-bz2 nor the dmg-lzfse module,
 * bzip2 and lzfse chunks (and unknown ones) are left out of the table with
 * a warning, so reading their sectors is an I/O error. The node is
 * read-only ("Image is read-only" unless auto-read-only). One chunk is
 * decoded at a time into one buffer, requests one after another, as QEMU
 * does (its current chunk and buffer decide what odd tables read).
 * Parsing: header.ts.
 */
import { inflate } from 'node:zlib';
import { obj, req } from '../../../qapi/types.ts';
import { BlockError } from '../../../util/errors.ts';
import { BlockdevRef } from '../../options.ts';
import { readClipped } from '../../child-io.ts';
import type { Driver, DriverContext, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import {
  DmgErrno, MAX_LENGTH, UDIG, UDRW, UDZE, UDZO, addMishBlock, diskSize, emptyTable, findKoly, inChunk, parseKoly,
  parseResourceHeader, plistData, PLIST_MAX, probeDmg, searchChunk, searchLength, searchStart, type ChunkTable,
} from './header.ts';

/** QEMU's BDRV_REQUEST_MAX_BYTES: a longer read fails with EIO. */
const REQUEST_MAX = 0x7ffffe00;
const eio = () => new BlockError('EIO', 'Input/output error');

/** warn_report_once: each warning once per process. */
const warned = new Set<string>();

/** bdrv_pread of the file: EIO past BDRV_MAX_LENGTH, zeroes past the file's end. */
async function pread(file: BlockNode, offset: bigint, buf: Buffer): Promise<void> {
  if (offset > MAX_LENGTH || BigInt(buf.length) > MAX_LENGTH - offset || buf.length > REQUEST_MAX) throw eio();
  if (offset > BigInt(file.length())) buf.fill(0);
  else await readClipped(file, Number(offset), buf);
}

async function readUint32(file: BlockNode, offset: number): Promise<number> {
  const b = Buffer.alloc(4);
  await pread(file, BigInt(offset), b);
  return b.readUInt32BE(0);
}

/** dmg_read_resource_fork: each resource of the fork's data is a 32-bit length and (perhaps) a mish block. */
async function readResourceFork(file: BlockNode, t: ChunkTable, dataFork: bigint, begin: number, length: bigint): Promise<void> {
  const head = Buffer.alloc(12);
  await pread(file, BigInt(begin), head);
  const r = parseResourceHeader(head, length);
  const end = begin + r.end;
  for (let offset = begin + r.begin; offset < end;) {
    const count = await readUint32(file, offset);
    if (count === 0 || count > end - offset) throw new DmgErrno();
    offset += 4;
    if (count > REQUEST_MAX) throw eio();
    const b = Buffer.alloc(count);
    await pread(file, BigInt(offset), b);
    addMishBlock(t, b, dataFork);
    offset += count;
  }
}

/** dmg_read_plist_xml: the mish blocks are the base64 <data> elements. */
async function readPlist(file: BlockNode, t: ChunkTable, dataFork: bigint, begin: number, length: bigint): Promise<void> {
  if (length === 0n || length > BigInt(PLIST_MAX)) throw new DmgErrno();
  const b = Buffer.alloc(Number(length));
  await pread(file, BigInt(begin), b).catch(() => { throw new DmgErrno(); });
  for (const m of plistData(b)) addMishBlock(t, m, dataFork);
}

async function openTable(file: BlockNode): Promise<{ table: ChunkTable; size: number }> {
  const flen = file.length();
  const search = Buffer.alloc(searchLength(flen));
  if (flen >= 512) {
    await file.read(searchStart(flen), search).catch((e: Error) => {
      throw new BlockError('EIO', `Failed while reading UDIF trailer: ${e.message}`);
    });
  }
  const kolyAt = findKoly(flen, search);
  const kb = Buffer.alloc(512);
  await readClipped(file, kolyAt, kb);
  const k = parseKoly(kb, kolyAt);
  const table = emptyTable();
  // Both offsets are below the koly's, so they are file offsets.
  if (k.rsrcLength !== 0n) await readResourceFork(file, table, k.dataForkOffset, Number(k.rsrcOffset), k.rsrcLength);
  else if (k.xmlLength !== 0n) await readPlist(file, table, k.dataForkOffset, Number(k.xmlOffset), k.xmlLength);
  else throw new DmgErrno();
  return { table, size: diskSize(k.sectors) };
}

/** inflate (zlib format) of one chunk, which must give exactly `size` bytes. */
function inflateChunk(input: Buffer, size: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    inflate(input, { maxOutputLength: Math.max(size, 1) }, (err, out) => {
      if (err || out.length !== size) reject(eio());
      else resolve(out);
    });
  });
}

class DmgImage {
  /** The chunk whose data the buffer holds (QEMU's current_chunk; -1: none). */
  private current = -1;
  private buffer: Buffer | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly file: BlockNode, private readonly t: ChunkTable) {}

  private get uncompressed(): Buffer {
    this.buffer ??= Buffer.alloc(512 * this.t.maxSectors);
    return this.buffer;
  }

  /** dmg_read_chunk: makes the chunk holding `sector` current, decoding it into the buffer. */
  private async load(sector: bigint): Promise<void> {
    if (inChunk(this.t, this.current, sector)) return;
    const c = searchChunk(this.t, sector);
    if (c < 0) throw eio();
    this.current = -1;
    const type = this.t.types[c];
    if (type === UDZO) {
      const input = Buffer.alloc(Number(this.t.lengths[c]));
      await pread(this.file, this.t.offsets[c], input);
      const size = 512 * Number(this.t.counts[c]);
      (await inflateChunk(input, size)).copy(this.uncompressed, 0);
    } else if (type === UDRW) {
      await pread(this.file, this.t.offsets[c], this.uncompressed.subarray(0, Number(this.t.lengths[c])));
    }
    this.current = c;
  }

  /** dmg_co_preadv, one request at a time. */
  read(offset: number, buf: Buffer): Promise<void> {
    const run = this.queue.then(() => this.readLocked(offset, buf));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async readLocked(offset: number, buf: Buffer): Promise<void> {
    const first = offset / 512;
    const n = buf.length / 512;
    for (let i = 0; i < n;) {
      const sector = BigInt(first + i);
      await this.load(sector);
      const c = this.current;
      const inRun = Math.min(n - i, Number((this.t.sectors[c] + this.t.counts[c]) - sector));
      const out = buf.subarray(i * 512, (i + inRun) * 512);
      const type = this.t.types[c];
      if (type === UDZE || type === UDIG) {
        out.fill(0);
      } else {
        const from = Number(sector - this.t.sectors[c]) * 512;
        // QEMU would copy from past its buffer here (a raw chunk with more sectors than bytes): an error in blockd.
        if (from + out.length > this.uncompressed.length) throw eio();
        this.uncompressed.copy(out, 0, from, from + out.length);
      }
      i += inRun;
    }
  }
}

export const dmgDriver: Driver = {
  name: 'dmg',
  kind: 'format',
  options: obj('BlockdevOptionsGenericFormat', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
  ]),
  probe: probeDmg,
  async open(options, ctx: DriverContext): Promise<DriverOps> {
    // bdrv_apply_auto_read_only, before the file is opened.
    const writable = !ctx.readOnly;
    if (writable && ctx.options['auto-read-only'] !== true) throw new BlockError('EPERM', 'Image is read-only');
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    let opened;
    try {
      opened = await openTable(file);
    } catch (e) {
      if (e instanceof DmgErrno) {
        if (e.report) ctx.log.error(e.report);
        throw new BlockError('EINVAL', `Could not open '${file.ops.filename?.() ?? file.nodeName}': Invalid argument`);
      }
      if (e instanceof BlockError && e.message === 'Input/output error') {
        throw new BlockError('EIO', `Could not open '${file.ops.filename?.() ?? file.nodeName}': Input/output error`);
      }
      throw e;
    }
    for (const w of opened.table.warnings) {
      if (!warned.has(w)) { warned.add(w); ctx.log.warn(w); }
    }
    const img = new DmgImage(file, opened.table);
    return {
      openedReadOnly: writable,
      length: () => opened.size,
      read: (o, buf) => img.read(o, buf),
      write: async () => { throw new BlockError('EPERM', 'Image is read-only'); },
      flush: async () => undefined,
      // QEMU's dmg_refresh_limits: no sub-sector I/O.
      limits: { alignment: 512, canFua: false },
    };
  },
};
