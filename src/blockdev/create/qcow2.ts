/**
 * blockdev-create for qcow2: QEMU's BlockdevCreateOptionsQcow2, checked in
 * qemu-storage-daemon 7.2's order with its messages, then the image laid
 * out by the pure model in drivers/qcow2/create-layout.ts and written
 * through the 'file' node (and the 'data-file' node's size set).
 *
 * Checks, in qsd's order: the file node; size a multiple of 512; extended
 * L2 needs v3; cluster size; extended L2 needs 16k clusters; backing format
 * needs a backing file; backing file with preallocation needs extended L2;
 * lazy refcounts need v3; refcount width; data-file-raw needs a data file
 * and no backing file; the data file node, which needs v3; zstd needs v3;
 * encryption (key-secret given; blockd checks it and the LUKS cipher before
 * writing anything, where QEMU finds them wrong only after the image is laid
 * out). The LUKS header is written into its clusters last, as
 * qcow2_set_up_encryption does.
 *
 * Also here: createQcow2() (lay out an image on a node) and
 * createQcow2File() (a default image in a new file, without any node).
 */
import { constants, promises as fsp } from 'node:fs';
import { BlockError } from '../../util/errors.ts';
import { ALL_PERM, type ChildEdge, type Parent } from '../edge.ts';
import { BlockNode } from '../node.ts';
import { alt, enm, obj, opt, ref, req, type ObjectType } from '../../qapi/types.ts';
import { blockdevOptionsType } from '../options.ts';
import { BlockGraph } from '../graph.ts';
import { generateNodeName } from '../surgery/node-names.ts';
import { registerDrivers } from '../drivers/index.ts';
import { qcow2Layout, type PreallocMode, type Qcow2Layout, type Qcow2LayoutOptions } from '../drivers/qcow2/create-layout.ts';
import { PreallocMode as PreallocModeEnum } from './file.ts';
import type { CreateContext, ImageCreator } from './types.ts';
import { QCRYPTO_LUKS_CREATE_MEMBERS, luksCreateOptions, type LuksCreateMembers } from './luks-options.ts';
import { createLuks1, luks1HeaderSize, type Luks1CreateOptions } from '../../crypto/luks1-create.ts';
import { lookupPassword } from '../drivers/luks/index.ts';
import { QSD_BLOCKDEV_DRIVERS } from '../../qapi/block-drivers.ts';


/**
 * Inline node definitions in 'file' / 'data-file' are checked against the
 * BlockdevOptions of every driver blockd has (the creator's schema is static,
 * the graph's is not).
 */
let schemaOptions: ObjectType | undefined;
function staticBlockdevOptions(): ObjectType {
  if (!schemaOptions) {
    const g = new BlockGraph();
    registerDrivers(g);
    schemaOptions = blockdevOptionsType(g);
  }
  return schemaOptions;
}
export const BlockdevRef = alt('BlockdevRef', ['str', ref('BlockdevOptions', staticBlockdevOptions)]);

export const BlockdevQcow2Version = enm('BlockdevQcow2Version', ['v2', 'v3'], 'qcow2 format version');
export const Qcow2CompressionType = enm('Qcow2CompressionType', ['zlib', 'zstd'], 'Compression type used in qcow2 image file');

const QCryptoBlockCreateOptions = obj('QCryptoBlockCreateOptions', [
  req('format', enm('QCryptoBlockFormat', ['qcow', 'luks']), 'the encryption format'),
], {
  union: {
    discriminator: 'format',
    variants: {
      qcow: obj('QCryptoBlockOptionsQCow', [opt('key-secret', 'str', 'the ID of a QCryptoSecret object providing the decryption key')]),
      luks: obj('QCryptoBlockCreateOptionsLUKS', QCRYPTO_LUKS_CREATE_MEMBERS),
    },
  },
  doc: 'Options for creating a block device encryption format',
});

export const BlockdevCreateOptionsQcow2: ObjectType = obj('BlockdevCreateOptionsQcow2', [
  req('file', BlockdevRef, 'Node to create the image format on'),
  opt('data-file', BlockdevRef, 'Node to use as an external data file in which all guest data is stored so that only metadata remains in the qcow2 file'),
  opt('data-file-raw', 'bool', 'True if the external data file must stay valid as a standalone (read-only) raw image without looking at qcow2 metadata (default: false)'),
  opt('extended-l2', 'bool', 'True to make the image have extended L2 entries (default: false)'),
  req('size', 'size', 'Size of the virtual disk in bytes'),
  opt('version', BlockdevQcow2Version, 'Compatibility level (default: v3)'),
  opt('backing-file', 'str', 'File name of the backing file if a backing file should be used'),
  opt('backing-fmt', enm('BlockdevDriver', [...QSD_BLOCKDEV_DRIVERS]), 'Name of the block driver to use for the backing file'),
  opt('encrypt', QCryptoBlockCreateOptions, 'Encryption options if the image should be encrypted'),
  opt('cluster-size', 'size', 'qcow2 cluster size in bytes (default: 65536)'),
  opt('preallocation', PreallocModeEnum, 'Preallocation mode for the new image (default: off; allowed values: off, falloc, full, metadata)'),
  opt('lazy-refcounts', 'bool', 'True if refcounts may be updated lazily (default: off)'),
  opt('refcount-bits', 'int', 'Width of reference counts in bits (default: 16)'),
  opt('compression-type', Qcow2CompressionType, 'The image cluster compression method (default: zlib)'),
], { doc: 'Driver specific image creation options for qcow2.' });

type NodeRef = string | Record<string, unknown>;

export interface Qcow2CreateOptions {
  file: NodeRef;
  'data-file'?: NodeRef;
  'data-file-raw'?: boolean;
  'extended-l2'?: boolean;
  size: number;
  version?: 'v2' | 'v3';
  'backing-file'?: string;
  'backing-fmt'?: string;
  encrypt?: { format: 'qcow' | 'luks' } & LuksCreateMembers;
  'cluster-size'?: number;
  preallocation?: PreallocMode;
  'lazy-refcounts'?: boolean;
  'refcount-bits'?: number;
  'compression-type'?: 'zlib' | 'zstd';
}

export const qcow2Creator: ImageCreator = {
  driver: 'qcow2',
  options: BlockdevCreateOptionsQcow2,
  create: (options, ctx) => blockdevCreateQcow2(options as unknown as Qcow2CreateOptions, ctx),
};

const KiB = 1024;
const TWO_POW_63 = 2 ** 63;
const V3_ONLY = '(use version=v3 or greater)';
const invalid = (msg: string) => new BlockError('EINVAL', msg);

/** The user (QEMU: a BlockBackend without a name) that writes the new image. */
const creatorUser: Parent = { describe: () => 'an unnamed block device' };

/**
 * Node references used by one creation, each held through an edge of the
 * creating user; unlinking them at the end closes inline definitions again.
 */
export class Refs {
  private readonly edges: ChildEdge[] = [];
  constructor(private readonly graph: BlockGraph) {}

  async open(r: NodeRef): Promise<BlockNode> {
    if (typeof r === 'string') {
      const n = this.graph.nodes.get(r);
      if (!n) throw new BlockError('ENOENT', `Cannot find device='${r}' nor node-name='${r}'`);
      return n;
    }
    const node = await this.graph.add(r, true);
    this.link(node, 'root', { write: false, resize: false });
    return node;
  }

  link(node: BlockNode, role: string, perm: { write: boolean; resize: boolean }): void {
    this.edges.push(this.graph.link(creatorUser, node, role, { perm: { read: false, ...perm }, shared: ALL_PERM }));
  }

  async close(): Promise<void> {
    for (const e of this.edges.reverse()) await this.graph.unlink(creatorUser, e);
  }
}

/** QEMU's validate_cluster_size: a power of two from 512 bytes to 2 MiB. */
function validClusterSize(cs: number): boolean {
  return Number.isSafeInteger(cs) && cs >= 512 && cs <= 2 * KiB * KiB && (cs & (cs - 1)) === 0;
}

/** Checks the options in qsd's order; returns what the layout needs. */
async function validate(o: Qcow2CreateOptions, refs: Refs): Promise<{ layout: Qcow2LayoutOptions; data?: BlockNode }> {
  if (o.size >= TWO_POW_63 || o.size % 512 !== 0) throw invalid('Image size must be a multiple of 512 bytes');
  const version = o.version === 'v2' ? 2 : 3;
  const extL2 = o['extended-l2'] === true;
  if (extL2 && version < 3) throw invalid(`Extended L2 entries are only supported with compatibility level 1.1 and above ${V3_ONLY}`);
  const cs = o['cluster-size'] ?? 64 * KiB;
  if (!validClusterSize(cs)) throw invalid('Cluster size must be a power of two between 512 and 2048k');
  if (extL2 && cs < 16 * KiB) throw invalid('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  const prealloc = o.preallocation ?? 'off';
  if (o['backing-file'] !== undefined) {
    if (prealloc !== 'off' && !extL2) throw invalid('Backing file and preallocation can only be used at the same time if extended_l2 is on');
  } else if (o['backing-fmt'] !== undefined) {
    throw invalid('Backing format cannot be used without backing file');
  }
  if (o['lazy-refcounts'] && version < 3) throw invalid(`Lazy refcounts only supported with compatibility level 1.1 and above ${V3_ONLY}`);
  const bits = o['refcount-bits'] ?? 16;
  if (bits < 1 || bits > 64 || (bits & (bits - 1)) !== 0) throw invalid('Refcount width must be a power of two and may not exceed 64 bits');
  if (version < 3 && bits !== 16) {
    throw invalid(`Different refcount widths than 16 bits require compatibility level 1.1 or above ${V3_ONLY}`);
  }
  const raw = o['data-file-raw'] === true;
  if (raw && o['data-file'] === undefined) throw invalid('data-file-raw requires data-file');
  if (raw && o['backing-file'] !== undefined) throw invalid('Backing file and data-file-raw cannot be used at the same time');
  let data: BlockNode | undefined;
  if (o['data-file'] !== undefined) {
    if (version < 3) throw invalid(`External data files are only supported with compatibility level 1.1 and above ${V3_ONLY}`);
    data = await refs.open(o['data-file']);
  }
  if (o['compression-type'] === 'zstd' && version < 3) {
    throw invalid(`Non-zlib compression type is only supported with compatibility level 1.1 and above ${V3_ONLY}`);
  }
  let encryption: Qcow2LayoutOptions['encryption'];
  if (o.encrypt) {
    if (o.encrypt['key-secret'] === undefined) throw invalid("Parameter 'encrypt.key-secret' is required for cipher");
    encryption = o.encrypt.format === 'luks' ? { method: 2, headerBytes: luks1HeaderSize(luksCreateOptions(o.encrypt)) } : { method: 1 };
  }
  return {
    data,
    layout: {
      size: o.size, version, clusterSize: cs, refcountBits: bits, lazyRefcounts: o['lazy-refcounts'] === true,
      extendedL2: extL2, compressionType: o['compression-type'] ?? 'zlib', preallocation: prealloc,
      backingFile: o['backing-file'], backingFormat: o['backing-fmt'],
      dataFile: data ? data.fileName() : undefined, dataFileRaw: raw, encryption,
    },
  };
}


/** How QEMU names a user of a node in permission errors. */
function userName(e: ChildEdge): string {
  return e.parent instanceof BlockNode ? `node '${e.parent.nodeName}'` : e.parent.describe();
}

/** The file node is written by an unnamed user taking write and resize and sharing everything (QEMU's BlockBackend). */
export function checkFilePermissions(file: BlockNode): void {
  for (const e of file.parents) {
    const missing = (['write', 'resize'] as const).filter((p) => !e.shared[p]);
    if (missing.length) {
      throw invalid(`Permission conflict on node '${file.nodeName}': permissions '${missing.join(', ')}' are both required by `
        + `an unnamed block device (uses node '${file.nodeName}' as 'root' child) and unshared by ${userName(e)} `
        + `(uses node '${file.nodeName}' as '${e.role}' child).`);
    }
  }
  if (file.readOnly) throw new BlockError('EPERM', 'Block node is read-only');
}

/** The data file is a data child of the new image: it may not be resized by anyone else (nor be the file itself). */
function checkDataPermissions(data: BlockNode, file: BlockNode): void {
  // The node QEMU would open to check the image takes a generated name.
  const fresh = generateNodeName();
  const conflict = (by: string, role: string) => invalid(`Permission conflict on node '${data.nodeName}': permissions 'resize' are both required by `
    + `${by} (uses node '${data.nodeName}' as '${role}' child) and unshared by node '${fresh}' (uses node '${data.nodeName}' as 'data-file' child).`);
  if (data === file) throw conflict(`node '${fresh}'`, 'file');
  for (const e of data.parents) if (e.perm.resize) throw conflict(userName(e), e.role);
  if (data.readOnly) throw new BlockError('EPERM', 'Block node is read-only');
}

async function blockdevCreateQcow2(o: Qcow2CreateOptions, ctx: CreateContext): Promise<void> {
  const refs = new Refs(ctx.graph);
  try {
    const file = await refs.open(o.file);
    const { layout, data } = await validate(o, refs);
    checkFilePermissions(file);
    if (data) checkDataPermissions(data, file);
    refs.link(file, 'root', { write: true, resize: true });
    if (data) refs.link(data, 'data-file', { write: true, resize: true });
    // The passphrase is looked up (QEMU's texts for a missing or unusable secret) before anything is written.
    const password = o.encrypt ? lookupPassword(ctx.graph.env, o.encrypt['key-secret'], 'encrypt.') : undefined;
    try {
      const made = await createQcow2(file, { ...layout, dataNode: data }, ctx.signal);
      if (made.header.crypto) await writeLuksHeader(file, made.header.crypto, luksCreateOptions(o.encrypt!), password!);
    } finally {
      password?.fill(0);
    }
  } finally {
    await refs.close();
  }
}

export interface Qcow2CreateParams extends Qcow2LayoutOptions {
  /** The external data file's node (its name in the image is `dataFile`). */
  dataNode?: BlockNode;
}

const ZERO_CHUNK = 1024 * KiB;
const FIRST_BLOCK = 4096;

/**
 * Lays out a new qcow2 image on `file` (normally empty) and sizes the data
 * file, as qemu-img / qsd 7.2 do for the same options. The file only ever
 * grows. Throws BlockError with QEMU's message.
 */
export async function createQcow2(file: BlockNode, opts: Qcow2CreateParams, signal?: AbortSignal): Promise<Qcow2Layout> {
  const { dataNode, ...layoutOpts } = opts;
  if (layoutOpts.dataFile !== undefined && !dataNode) throw new BlockError('EINVAL', "'data-file' is required for this image");
  const layout = qcow2Layout(layoutOpts);
  const start = file.length();
  if (layout.filePrealloc && start > layout.filePrealloc.to) {
    throw new BlockError('ENOTSUP', 'Could not resize image: Failed to resize underlying file: Cannot use preallocation for shrinking files');
  }
  if (layout.fileLength > start) await file.truncate(layout.fileLength);
  for (const w of layout.writes) {
    signal?.throwIfAborted();
    await file.write(w.offset, w.data);
  }
  if (layout.filePrealloc) {
    const { from, to, mode } = layout.filePrealloc;
    await preallocate(file, Math.max(from, start), to, mode, signal);
  }
  await file.flush();
  if (dataNode && layout.dataFile) await sizeDataFile(dataNode, layout.dataFile, signal);
  if (layout.error) throw layout.error;
  return layout;
}

/** The LUKS header and key slot 0 of an encrypted image, into the (zeroed) clusters the layout gave it. */
async function writeLuksHeader(file: BlockNode, region: { offset: number; length: number }, o: Luks1CreateOptions, password: Buffer): Promise<void> {
  const created = await createLuks1(o, password, async () => undefined, async (offset, data) => {
    if (offset + data.length > region.length) throw new BlockError('EINVAL', 'Request for data outside of extension header');
    await file.write(region.offset + offset, data);
  });
  created.masterKey.fill(0);
  await file.flush();
}

/** Sizes the external data file as QEMU does when it creates the image. */
async function sizeDataFile(node: BlockNode, d: NonNullable<Qcow2Layout['dataFile']>, signal?: AbortSignal): Promise<void> {
  let cur = node.length();
  if (d.zeroTail) {
    const end = d.zeroTail.offset + d.zeroTail.length;
    if (end > cur) await node.truncate(end);
    await node.write(d.zeroTail.offset, Buffer.alloc(d.zeroTail.length));
    cur = Math.max(cur, end);
  }
  if (d.length > cur) {
    await node.truncate(d.length);
    if (d.mode !== 'off') await preallocate(node, cur, d.length, d.mode, signal);
    // QEMU's file driver allocates the first block of a file it grows from nothing (for alignment
    // probing): after a plain truncate, and after fallocate (whose blocks read as zeroes unwritten).
    if (cur === 0 && d.mode !== 'full') await node.write(0, Buffer.alloc(d.length < FIRST_BLOCK ? 512 : FIRST_BLOCK));
  } else if (d.length < cur && !d.growOnly) {
    await node.truncate(d.length);
  }
  await node.flush();
}

/** Allocates [from, to) of a node: falloc reserves the space (write-zeroes without unmapping), full writes zeroes. */
export async function preallocate(node: BlockNode, from: number, to: number, mode: 'falloc' | 'full', signal?: AbortSignal): Promise<void> {
  if (to <= from) return;
  if (mode === 'falloc') {
    await node.writeZeroes(from, to - from, 0);
    return;
  }
  const zeroes = Buffer.alloc(Math.min(ZERO_CHUNK, to - from));
  for (let pos = from; pos < to; pos += zeroes.length) {
    signal?.throwIfAborted();
    await node.write(pos, zeroes.subarray(0, Math.min(zeroes.length, to - pos)));
  }
}

/**
 * Creates (or replaces) `path` with a default qcow2 image of `size` bytes:
 * v3, 64 KiB clusters, 16-bit refcounts, no preallocation: what
 * `qemu-img create -f qcow2 path size` writes. For the daemon's embedded
 * default; needs neither a graph nor qemu-img.
 */
export async function createQcow2File(path: string, size: number): Promise<void> {
  if (!Number.isSafeInteger(size) || size < 0 || size % 512 !== 0) throw invalid('Image size must be a multiple of 512 bytes');
  const layout: Qcow2Layout = qcow2Layout({ size });
  const fh = await fsp.open(path, constants.O_RDWR | constants.O_CREAT | constants.O_TRUNC, 0o644);
  try {
    for (const w of layout.writes) await fh.write(w.data, 0, w.data.length, w.offset);
    await fh.truncate(layout.fileLength);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
