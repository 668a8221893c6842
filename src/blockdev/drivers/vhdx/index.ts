/**
 * vhdx: Hyper-V VHDX images (QEMU's block/vhdx.c), dynamic and fixed, read
 * and write. Opening follows vhdx_open: the file identifier, the current
 * header, the log (an active sequence of entries is replayed when the node
 * is writable, refused with QEMU's text when it is read-only), the region
 * table, the metadata, the BAT and its check against the file. Differencing
 * images are refused as QEMU 7.2 refuses them (it parses no parent
 * locator). I/O: image.ts; layout: header.ts; the log: log.ts.
 */
import { open } from 'node:fs/promises';
import { obj, req } from '../../../qapi/types.ts';
import { BlockError } from '../../../util/errors.ts';
import { BlockdevRef } from '../../options.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import {
  BAT_OFFSET_MASK, BAT_STATE_MASK, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_BLOCK, HEADER_SIZE, METADATA_TABLE_MAX, MiB,
  PARAMS_HAS_PARENT, PAYLOAD_FULLY_PRESENT, REGION_TABLE_OFFSET, Regions, ZERO_GUID, parseGeometry, parseMetadataTable, parseRegionTable,
  DEFAULT_LOG_SIZE, defaultBlockSize, pickHeader, probeVhdx, vhdxLayout, type VhdxGeometry,
} from './header.ts';
import { replayLog, searchLog, type LogFile } from './log.ts';
import { HeaderPair, VhdxImage, logFile } from './image.ts';

const BARE = new Set(['Cannot allocate memory', 'Invalid argument', 'Operation not supported', 'Input/output error', 'File too large', 'Bad address']);
const invalid = () => new BlockError('EINVAL', 'Invalid argument');

/** QEMU's vhdx_check_bat_entries (as vhdx_open runs it): present blocks inside the file, payload blocks clear of the regions. */
function checkBat(bat: BigUint64Array, g: VhdxGeometry, fileSize: number, regions: Regions): void {
  let payblocks = g.chunkRatio;
  for (let i = 0; i < bat.length; i++) {
    if (Number(bat[i] & BAT_STATE_MASK) !== PAYLOAD_FULLY_PRESENT) continue;
    const offset = bat[i] & BAT_OFFSET_MASK;
    const start = i * g.blockSize;
    const blockLength = start >= g.virtualSize ? g.blockSize : Math.min(g.blockSize, g.virtualSize - start);
    if (offset > 2n ** 63n - 1n - BigInt(g.blockSize)) throw invalid();
    if (offset >= BigInt(fileSize) || offset + BigInt(blockLength) > BigInt(fileSize)) throw invalid();
    if (payblocks-- !== 0) {
      if (regions.overlaps(offset, BigInt(g.blockSize))) throw invalid();
    } else payblocks = g.chunkRatio;
  }
}

const bigToIo = (o: bigint, length: number): number => {
  if (o + BigInt(length) > 2n ** 63n - 2n ** 32n) throw new BlockError('EIO', 'Input/output error');
  return Number(o);
};

/** QEMU's vhdx_parse_log: an active sequence is replayed (writable) or refused (read-only); the next sequence number. */
async function openLog(io: LogFile, hp: HeaderPair, readOnly: boolean, filename: string, file: BlockNode): Promise<bigint> {
  const h = hp.active;
  if (h.logOffset < BigInt(MiB) || h.logOffset % BigInt(MiB) !== 0n) throw invalid();
  if (h.logVersion !== 0) throw invalid();
  if (h.logGuid.equals(ZERO_GUID) || h.logLength === 0) return 0n;
  if (h.logLength % MiB !== 0) throw invalid();
  const logs = await searchLog(io, bigToIo(h.logOffset, 0), h.logLength, h.logGuid);
  if (!logs) return 0n;
  if (readOnly) throw new BlockError('EPERM', `VHDX image file '${filename}' opened read-only, but contains a log that needs to be replayed`);
  await hp.userVisibleWrite();
  await replayLog(io, logs, hp.active.logGuid);
  await file.flush();
  await hp.update(false, ZERO_GUID);
  return logs.sequence + 1n;
}

async function openImage(file: BlockNode, readOnly: boolean, filename: string): Promise<VhdxImage> {
  const io: LogFile = logFile(file);
  if ((await io.read(0, 8)).toString('latin1') !== 'vhdxfile') throw invalid();
  const { headers, current } = pickHeader(await io.read(HEADER1_OFFSET, HEADER_SIZE), await io.read(HEADER2_OFFSET, HEADER_SIZE));
  const hp = new HeaderPair(io, headers, current);
  const regions = new Regions();
  regions.add(hp.active.logOffset, BigInt(hp.active.logLength));
  const sequence = await openLog(io, hp, readOnly, filename, file);

  const { bat: batRt, metadata } = parseRegionTable(await io.read(REGION_TABLE_OFFSET, HEADER_BLOCK), regions);
  const items = parseMetadataTable(await io.read(bigToIo(metadata.offset, METADATA_TABLE_MAX), METADATA_TABLE_MAX));
  const item = (rel: number, n: number) => io.read(bigToIo(metadata.offset + BigInt(rel), n), n);
  const params = await item(items.fileParams, 8);
  if (params.readUInt32LE(4) & PARAMS_HAS_PARENT) throw invalid();
  const virtualSize = (await item(items.virtualSize, 8)).readBigUInt64LE(0);
  const logical = (await item(items.logicalSector, 4)).readUInt32LE(0);
  await item(items.physSector, 4);
  const g = parseGeometry(params, virtualSize, logical);

  if (g.batEntries > Math.floor(batRt.length / 8)) throw invalid();
  // QEMU maps up to 4 GiB of BAT lazily; blockd holds it in memory, so a BAT past 512 MiB (64 Mi entries) is refused.
  if (g.batEntries > 2 ** 26) throw new BlockError('ENOMEM', 'Cannot allocate memory');
  const raw = await io.read(bigToIo(batRt.offset, batRt.length), g.batEntries * 8);
  const bat = new BigUint64Array(g.batEntries);
  for (let i = 0; i < g.batEntries; i++) bat[i] = raw.readBigUInt64LE(8 * i);
  checkBat(bat, g, file.length(), regions);
  if (virtualSize > BigInt(Number.MAX_SAFE_INTEGER) - BigInt(g.blockSize)) throw new BlockError('EOVERFLOW', 'File too large');
  return new VhdxImage(file, hp, g, bat, Number(batRt.offset), sequence);
}

export const vhdxDriver: Driver = {
  name: 'vhdx',
  kind: 'format',
  options: obj('BlockdevOptionsGenericFormat', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
  ]),
  probe: probeVhdx,
  async createImage(filename, o) {
    // drive-mirror/drive-backup targets: qemu-img's way (vhdx_co_create_opts), the size rounded up to whole sectors,
    // QEMU's defaults; vhdx takes no backing file.
    if (o.backingFile !== undefined) throw new BlockError('EINVAL', "Backing file not supported for file format 'vhdx'");
    const size = Math.ceil(o.size / 512) * 512;
    const { writes, fileLength } = vhdxLayout({ size, logSize: DEFAULT_LOG_SIZE, blockSize: defaultBlockSize(size), fixed: false, zeroBlocks: true });
    const fh = await open(filename, 'w');
    try {
      await fh.truncate(fileLength);
      for (const [at, b] of writes) await fh.write(b, 0, b.length, at);
    } finally {
      await fh.close();
    }
  },
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    const filename = file.ops.filename?.() ?? file.nodeName;
    let img: VhdxImage;
    try {
      img = await openImage(file, ctx.readOnly, filename);
    } catch (e) {
      if (e instanceof BlockError && BARE.has(e.message)) throw new BlockError(e.code, `Could not open '${filename}': ${e.message}`);
      throw e;
    }
    return {
      length: () => img.g.virtualSize,
      read: (o, buf) => img.read(o, buf),
      write: (o, buf) => img.write(o, buf),
      flush: () => file.flush(),
      blockStatus: async (o, l) => img.blockStatus(o, l),
      // QEMU's vhdx_co_readv/writev: 512-byte requests.
      limits: { alignment: 512, canFua: false },
      info: () => ({ 'cluster-size': img.blockSize, 'dirty-flag': false }),
    };
  },
};
