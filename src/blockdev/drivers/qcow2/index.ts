/**
 * qcow2: the format driver. Opens the image (header, snapshot table, L1 and
 * refcount tables), its backing file (named in the header unless the options
 * say otherwise) and external data file, and exposes the block-layer
 * operations of Qcow2Image.
 */
import path from 'node:path';
import { open } from 'node:fs/promises';
import { createFile } from '../../create/file.ts';
import { qcow2Layout } from './create-layout.ts';
import { setBackingFileName } from './backing-name.ts';
import { BlockError } from '../../../util/errors.ts';
import { alt, enm, obj, opt, req } from '../../../qapi/types.ts';
import { BlockdevRef, BlockdevRefOrNull } from '../../options.ts';
import type { Driver, DriverContext, DriverOps } from '../../driver.ts';
import type { BlockNode } from '../../node.ts';
import { Compat, Incompat, Limit, QCOW2_MAGIC, parseHeader, type Qcow2Header } from './header.ts';
import { Qcow2Image, type ImageSettings, type OverlapName } from './image.ts';
import { parseSnapshotTable, snapshotTableReadSize } from './snapshots.ts';
import { snapshotInfo } from '../../internal-snapshots.ts';
import { repairRefcounts } from './check.ts';
import { bitmapDirectoryReadSize, parseBitmapDirectory, type BitmapInfo } from './bitmaps.ts';
import { loadBitmapStore } from './bitmaps-store.ts';
import { qcow2InternalSnapshots } from './snapshot-write.ts';
import { BlockdevQcow2Encryption, CRYPT_SECTOR, openEncryption, type EncryptOptions } from './encryption.ts';
import { QCryptoBlockAmendOptions, amendVolume } from '../luks/amend.ts';
import type { Luks1AmendOptions } from '../../../crypto/luks1-amend.ts';

const MiB = 1024 * 1024;

/** QEMU's default caps the L2 cache at 32 MiB (256 GiB of 64k clusters); blockd covers 1 TiB. */
export const DEFAULT_L2_CACHE_MAX = 128 * MiB;
const MIN_REFCOUNT_CACHE_CLUSTERS = 4;
const DEFAULT_CACHE_CLEAN_INTERVAL = 600;

const OverlapMode = enm('Qcow2OverlapCheckMode', ['none', 'constant', 'cached', 'all']);
const OverlapFlags = obj('Qcow2OverlapCheckFlags', [
  opt('template', OverlapMode), opt('main-header', 'bool'), opt('active-l1', 'bool'), opt('active-l2', 'bool'),
  opt('refcount-table', 'bool'), opt('refcount-block', 'bool'), opt('snapshot-table', 'bool'),
  opt('inactive-l1', 'bool'), opt('inactive-l2', 'bool'), opt('bitmap-directory', 'bool'),
]);

export const qcow2Options = obj('BlockdevOptionsQcow2', [
  req('file', BlockdevRef, 'reference to or definition of the data source block device'),
  opt('backing', BlockdevRefOrNull, 'reference to or definition of the backing file block device, null disables the backing file entirely'),
  opt('lazy-refcounts', 'bool', 'whether to enable the lazy refcounts feature (default is taken from the image file)'),
  opt('pass-discard-request', 'bool', 'whether discard requests to the qcow2 device should be forwarded to the data source'),
  opt('pass-discard-snapshot', 'bool', 'whether discard requests for the data source should be issued when a snapshot operation (e.g. deleting a snapshot) frees clusters in the qcow2 file'),
  opt('pass-discard-other', 'bool', 'whether discard requests for the data source should be issued on other occasions where a cluster gets freed'),
  opt('overlap-check', alt('Qcow2OverlapChecks', [OverlapFlags, OverlapMode]), 'which overlap checks to perform for writes to the image, defaults to \'cached\''),
  opt('cache-size', 'int', 'the maximum total size of the L2 table and refcount block caches in bytes'),
  opt('l2-cache-size', 'int', 'the maximum size of the L2 table cache in bytes'),
  opt('l2-cache-entry-size', 'int', 'the size of each entry in the L2 cache in bytes'),
  opt('refcount-cache-size', 'int', 'the maximum size of the refcount block cache in bytes'),
  opt('cache-clean-interval', 'int', 'clean unused entries in the L2 and refcount caches. The interval is in seconds. The default value is 600 on supporting platforms, and 0 on other platforms. 0 disables this feature.'),
  opt('data-file', BlockdevRef, 'reference to or definition of the external data file'),
  opt('encrypt', BlockdevQcow2Encryption, 'Image decryption options. Mandatory for encrypted images, except when doing a metadata-only probe of the image.'),
]);

const MODE_FLAGS: Record<string, OverlapName[]> = {
  none: [],
  constant: ['main-header', 'active-l1', 'refcount-table', 'snapshot-table', 'bitmap-directory'],
  cached: ['main-header', 'active-l1', 'refcount-table', 'snapshot-table', 'bitmap-directory', 'active-l2', 'refcount-block', 'inactive-l1'],
  all: ['main-header', 'active-l1', 'refcount-table', 'snapshot-table', 'bitmap-directory', 'active-l2', 'refcount-block', 'inactive-l1', 'inactive-l2'],
};

function overlapSet(v: unknown): Set<OverlapName> {
  if (v === undefined) return new Set(MODE_FLAGS.cached);
  if (typeof v === 'string') return new Set(MODE_FLAGS[v] ?? MODE_FLAGS.cached);
  const o = v as Record<string, unknown>;
  const set = new Set(MODE_FLAGS[(o.template as string) ?? 'cached']);
  for (const k of MODE_FLAGS.all) {
    if (o[k] === true) set.add(k);
    if (o[k] === false) set.delete(k);
  }
  return set;
}

const int = (v: unknown): number | undefined => (v === undefined ? undefined : Number(v));

/** QEMU's read_cache_sizes(), with blockd's larger default L2 cap. */
export function cacheSizes(o: Record<string, unknown>, h: Qcow2Header): { l2: number; slice: number; refcount: number } {
  const cs = 2 ** h.clusterBits;
  const entryBytes = (h.incompatible & Incompat.EXTL2) ? 16 : 8;
  const maxL2 = Math.ceil((Math.ceil(h.size / cs) * entryBytes) / cs) * cs;
  const minRc = MIN_REFCOUNT_CACHE_CLUSTERS * cs;
  const combined = int(o['cache-size']);
  let l2 = int(o['l2-cache-size']);
  let rc = int(o['refcount-cache-size']);
  for (const [k, v] of [['cache-size', combined], ['l2-cache-size', l2], ['refcount-cache-size', rc]] as const) {
    if (v !== undefined && (!Number.isSafeInteger(v) || v < 0)) throw new BlockError('EINVAL', `Parameter '${k}' expects a non-negative number below 2^63`);
  }
  if (combined !== undefined) {
    if (l2 !== undefined && rc !== undefined) throw new BlockError('EINVAL', 'cache-size, l2-cache-size and refcount-cache-size may not be set at the same time');
    if (l2 !== undefined) {
      if (l2 > combined) throw new BlockError('EINVAL', 'l2-cache-size may not exceed cache-size');
      rc = combined - l2;
    } else if (rc !== undefined) {
      if (rc > combined) throw new BlockError('EINVAL', 'refcount-cache-size may not exceed cache-size');
      l2 = combined - rc;
    } else if (combined >= maxL2 + minRc) {
      l2 = maxL2;
      rc = combined - l2;
    } else {
      rc = Math.min(combined, minRc);
      l2 = combined - rc;
    }
  } else {
    l2 ??= Math.min(maxL2, DEFAULT_L2_CACHE_MAX);
    rc ??= minRc;
  }
  const slice = int(o['l2-cache-entry-size']) ?? cs;
  if (slice < 512 || slice > cs || (slice & (slice - 1)) !== 0) {
    throw new BlockError('EINVAL', `L2 cache entry size must be a power of two between 512 and the cluster size (${cs})`);
  }
  if (l2 / slice > 0x7fffffff) throw new BlockError('EINVAL', 'L2 cache size too big');
  if (rc / cs > 0x7fffffff) throw new BlockError('EINVAL', 'Refcount cache size too big');
  return { l2: Math.max(l2, 2 * slice), slice, refcount: Math.max(rc, minRc) };
}

/** Filename of a node as its driver reports it; undefined when it has none (then no relative name can be resolved against it). */
function nodeFilename(n: BlockNode): string | undefined {
  return n.ops.filename?.() ?? (n.options.filename as string | undefined);
}

/** The backing file name resolved against the image's directory, as QEMU does for relative names. */
export function resolveBacking(name: string, image: BlockNode): string {
  if (path.isAbsolute(name) || /^[a-z0-9+.-]+:/i.test(name) && !name.startsWith('./')) return name;
  const base = nodeFilename(image);
  if (!base || base.startsWith('json:')) throw new BlockError('EINVAL', `Cannot use relative backing file names for '${base ?? image.nodeName}'`);
  return path.join(path.dirname(base), name);
}

/** QEMU probes backing files without a recorded format (with the registered drivers' probe() hooks). */
async function probeBacking(ctx: DriverContext, filename: string): Promise<string> {
  try {
    return await ctx.probeFormat(filename);
  } catch (e) {
    throw new BlockError('ENOENT', `Could not open backing file: ${(e as Error).message}`);
  }
}

/** Validated runtime settings from the options (open and reopen). */
function computeSettings(options: Record<string, unknown>, h: Qcow2Header, discardUnmap: boolean): { settings: ImageSettings; interval: number } {
  const lazy = options['lazy-refcounts'] as boolean | undefined ?? (h.compatible & Compat.LAZY_REFCOUNTS) !== 0n;
  if (lazy && h.version < 3) {
    throw new BlockError('EINVAL', 'Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level');
  }
  const sizes = cacheSizes(options, h);
  const interval = int(options['cache-clean-interval']) ?? DEFAULT_CACHE_CLEAN_INTERVAL;
  if (interval < 0 || interval > 0xffffffff) throw new BlockError('EINVAL', 'Cache clean interval too big');
  const overlap = overlapSet(options['overlap-check']);
  if (!h.bitmaps) overlap.delete('bitmap-directory');
  const settings: ImageSettings = {
    lazyRefcounts: lazy,
    unmap: discardUnmap,
    passDiscard: {
      request: options['pass-discard-request'] as boolean | undefined ?? discardUnmap,
      snapshot: options['pass-discard-snapshot'] as boolean | undefined ?? true,
      other: options['pass-discard-other'] as boolean | undefined ?? false,
    },
    overlap,
    l2CacheBytes: sizes.l2,
    l2SliceSize: sizes.slice,
    refcountCacheBytes: sizes.refcount,
  };
  return { settings, interval };
}

/** A child reference in reopen options must name the current child (or be left out). */
function sameChild(ref: unknown, child: BlockNode | undefined, old: unknown): boolean {
  if (ref === undefined) return true;
  if (typeof ref === 'string') return child?.nodeName === ref;
  return JSON.stringify(ref) === JSON.stringify(old);
}

export const qcow2Driver: Driver = {
  name: 'qcow2',
  kind: 'format',
  options: qcow2Options,
  // QEMU's qcow2_strong_runtime_opts: the json: filename of an encrypted image names its secret.
  strongOptions: ['encrypt.key-secret'],
  amendOptions: obj('BlockdevAmendOptionsQcow2', [opt('encrypt', QCryptoBlockAmendOptions, 'Encryption options to be target of the change')]),
  setBackingFile: setBackingFileName,
  probe: (head) => (head.length >= 4 && head.readUInt32BE(0) === QCOW2_MAGIC ? 100 : 0),
  async createImage(filename, o) {
    await createFile({ filename, size: 0 } as never);
    const layout = qcow2Layout(o);
    const fh = await open(filename, 'r+');
    try {
      for (const w of layout.writes) await fh.write(w.data, 0, w.data.length, w.offset);
      await fh.truncate(layout.fileLength);
    } finally {
      await fh.close();
    }
  },
  async open(options, ctx): Promise<DriverOps> {
    const opened: { img?: Qcow2Image } = {};
    try {
      return await openImage(options, ctx, opened);
    } catch (e) {
      // A failed open erases the key at once, not when the collector gets to it.
      opened.img?.crypto?.cipher.wipe();
      throw e;
    }
  },
};

/** The work of open(); `opened.img` is set as soon as the image object exists. */
async function openImage(options: Record<string, unknown>, ctx: DriverContext, opened: { img?: Qcow2Image }): Promise<DriverOps> {
  const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
  const fileLen = file.length();
  const first = Buffer.alloc(Math.min(fileLen, 2 * MiB));
  if (first.length) await file.read(0, first);
  const h = parseHeader(first);
  const readOnly = ctx.readOnly;
  if ((h.incompatible & Incompat.CORRUPT) && !readOnly) {
    throw new BlockError('EPERM', 'qcow2: Image is corrupt; cannot be opened read/write');
  }
  const { settings, interval } = computeSettings(options, h, ctx.options.discard === 'unmap');

  // External data file.
  let dataFile: BlockNode | undefined;
  const hasDataBit = (h.incompatible & Incompat.DATA_FILE) !== 0n;
  if (options['data-file'] !== undefined) {
    if (!hasDataBit) throw new BlockError('EINVAL', "'data-file' can only be set for images with an external data file");
    dataFile = await ctx.openChild('data-file', options['data-file'] as string | Record<string, unknown>);
  } else if (hasDataBit) {
    if (!h.dataFile) throw new BlockError('EINVAL', "'data-file' is required for this image");
    dataFile = await ctx.openChild('data-file', { driver: 'file', filename: resolveBacking(h.dataFile, file) });
  }

  // QEMU's qcow2_signal_corruption: the line on stderr (here the log), then BLOCK_IMAGE_CORRUPTED
  // (device is empty, as in qsd: its exports' BlockBackends have no name).
  const img = new Qcow2Image(h, file, dataFile, readOnly, settings, (m) => {
    ctx.log.error(m);
    const msg = m.replace(/^qcow2: Marking image as corrupt: |; further corruption events will be suppressed$/g, '');
    ctx.events.emit('BLOCK_IMAGE_CORRUPTED', { device: '', 'node-name': ctx.nodeName, msg, fatal: true });
  });
  opened.img = img;
  if (h.nbSnapshots) {
    const want = Math.min(snapshotTableReadSize(h.nbSnapshots), Math.max(0, fileLen - h.snapshotsOffset));
    const buf = Buffer.alloc(want);
    await img.readMeta(h.snapshotsOffset, buf);
    const t = parseSnapshotTable(buf, h.nbSnapshots, img.cs);
    img.snapshots = t.snapshots;
    img.snapshotTableSize = t.size;
  }
  img.crypto = await openEncryption(h, file, img.cs, options.encrypt as EncryptOptions | undefined, ctx);
  await img.load();
  let bitmaps: BitmapInfo[] = [];
  if (h.bitmaps && (h.autoclear & 1n)) {
    const dir = Buffer.alloc(bitmapDirectoryReadSize(h.bitmaps.directorySize));
    await img.readMeta(h.bitmaps.directoryOffset, dir);
    bitmaps = parseBitmapDirectory(dir, h.bitmaps.nbBitmaps);
  }
  const bitmapStore = await loadBitmapStore(img, ctx.nodeName, readOnly);
  const discardUnmap = ctx.options.discard === 'unmap';

  // Backing file.
  const backingOpt = options.backing;
  if (backingOpt === null) {
    // Explicitly none.
  } else if (backingOpt !== undefined) {
    img.backing = await ctx.openChild('backing', backingOpt as string | Record<string, unknown>);
  } else if (h.backingFile !== undefined) {
    const filename = resolveBacking(h.backingFile, file);
    const fmt = h.backingFormat ?? await probeBacking(ctx, filename);
    // A name with a protocol prefix ('https://...') opens that protocol's node, as QEMU's bdrv_find_protocol.
    img.backing = await ctx.openChild('backing', { driver: fmt, file: ctx.protocolOptions(filename), 'read-only': true }, { probed: h.backingFormat === undefined });
  }

  if (!readOnly) {
    if (img.dirty) {
      await repairRefcounts(img);
      await img.setIncompat(h.incompatible & ~Incompat.DIRTY);
      img.dirty = false;
    }
    await img.clearUnknownAutoclear();
    await img.markBitmapsInUse();
  }
  img.startCleanTimer(interval);

  const ops: DriverOps = {
    length: () => img.size,
    // Encrypted data is whole 512-byte sectors (QEMU's request_alignment = the crypto sector size).
    limits: { alignment: img.crypto ? CRYPT_SECTOR : 1, canFua: false, canZero: true, canTrim: true },
    read: (o, buf) => img.read(o, buf),
    // Writes, write-zeroes and (with discard=unmap) discards mark the bitmaps first, on disk where it matters.
    write: (o, buf) => bitmapStore.guarded(o, buf.length, () => img.write(o, buf)),
    writeZeroes: (o, l, flags) => bitmapStore.guarded(o, l, () => img.writeZeroes(o, l, flags)),
    compressRefusal: () => img.compressRefusal(),
    writeCompressed: (o, buf) => bitmapStore.guarded(o, buf.length, () => img.writeCompressed(o, buf)),
    discard: (o, l) => (discardUnmap ? bitmapStore.guarded(o, l, () => img.discard(o, l)) : img.discard(o, l)),
    flush: () => img.flush(),
    blockStatus: (o, l, flags) => img.blockStatus(o, l, flags),
    truncate: (size) => img.truncate(size),
    async close() {
      try { await bitmapStore.store(); } catch (err) { ctx.log.error({ err }, 'could not store the bitmaps'); }
      try {
        await img.close();
      } finally {
        img.crypto?.cipher.wipe();
      }
    },
    bitmapStore,
    internalSnapshots: qcow2InternalSnapshots(img),
    // qcow2_co_amend: only the LUKS key slots of an encrypted image.
    async amend(o, force) {
      const enc = o.encrypt as ({ format: string } & Luks1AmendOptions) | undefined;
      if (!enc) return;
      if (!img.crypto) throw new BlockError('ENOTSUP', "image is not encrypted, can't amend");
      if (enc.format !== 'luks') throw new BlockError('ENOTSUP', "Amend can't be used to change the qcow2 encryption format");
      if (!img.crypto.luks) throw new BlockError('ENOTSUP', 'Only LUKS encryption options can be amended for qcow2 with blockdev-amend');
      if (img.readOnly) throw new BlockError('EPERM', 'Block node is read-only');
      await amendVolume(img.crypto.luks, ctx.objects, enc, force);
    },
    info: () => imageInfo(img, bitmapStore.directoryInfo()),
    async prepareReopen(next, ro) {
      for (const k of ['file', 'data-file'] as const) {
        const child = k === 'file' ? file : dataFile;
        if (!sameChild(next[k], child, options[k])) throw new BlockError('EINVAL', `Cannot change the option '${k}'`);
      }
      const n = computeSettings(next, h, (next.discard ?? ctx.options.discard) === 'unmap');
      if (n.settings.l2SliceSize !== img.settings.l2SliceSize) {
        throw new BlockError('EINVAL', "Cannot change the option 'l2-cache-entry-size'");
      }
      if (!ro && (img.corrupt || (h.incompatible & Incompat.CORRUPT))) {
        throw new BlockError('EPERM', 'qcow2: Image is corrupt; cannot be opened read/write');
      }
      // Going read-only: finish read-write use while the file can still be written.
      if (ro && !img.readOnly) {
        await img.deactivate();
        img.pendingActivation = true;
      }
      return {
        commit() {
          Object.assign(img.settings, n.settings);
          img.l2Cache.capacity = Math.max(2, Math.floor(n.settings.l2CacheBytes / n.settings.l2SliceSize));
          img.refcounts.cache.capacity = Math.max(4, Math.floor(n.settings.refcountCacheBytes / img.cs));
          img.startCleanTimer(n.interval);
          if (!ro && img.readOnly) img.pendingActivation = true;
          img.readOnly = ro;
        },
        // A read-only reopen that does not happen: redo the open-time work before the next write.
        abort() { if (ro && !img.readOnly) img.pendingActivation = true; },
      };
    },
    filename: () => file.fileName(),
  };
  return ops;
}


/** The ImageInfo members a qcow2 node contributes (QEMU's query-named-block-nodes 'image'). */
export function imageInfo(img: Qcow2Image, bitmaps: BitmapInfo[] = []): Record<string, unknown> {
  const h = img.h;
  const data: Record<string, unknown> = { compat: h.version === 2 ? '0.10' : '1.1' };
  if (h.version === 3) {
    if (img.hasDataFile || h.dataFile !== undefined) {
      if (h.dataFile !== undefined) data['data-file'] = h.dataFile;
      data['data-file-raw'] = (h.autoclear & 2n) !== 0n;
    }
    data['compression-type'] = h.compressionType === 1 ? 'zstd' : 'zlib';
    // Only while they are consistent (the autoclear bit survives read-only opens).
    if (bitmaps.length && (h.autoclear & 1n)) data.bitmaps = bitmaps;
    data['lazy-refcounts'] = img.settings.lazyRefcounts;
    data['refcount-bits'] = 2 ** h.refcountOrder;
    if (img.crypto) data.encrypt = img.crypto.info();
    data.corrupt = img.corrupt || (h.incompatible & Incompat.CORRUPT) !== 0n;
    data['extended-l2'] = img.extL2;
  } else {
    data['refcount-bits'] = 16;
    if (img.crypto) data.encrypt = img.crypto.info();
  }
  const info: Record<string, unknown> = {
    'cluster-size': img.cs,
    'dirty-flag': img.dirty,
    'format-specific': { type: 'qcow2', data },
  };
  if (img.crypto) info.encrypted = true;
  if (h.backingFile !== undefined) info['backing-filename'] = h.backingFile;
  if (h.backingFormat !== undefined) info['backing-filename-format'] = h.backingFormat;
  if (img.snapshots.length) info.snapshots = img.snapshots.map(snapshotInfo);
  return info;
}

export { Limit };
