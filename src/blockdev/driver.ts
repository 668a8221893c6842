/**
 * The driver interface. A driver opens one node's worth of state and returns
 * the operations it implements. Anything it leaves out is handled by the
 * generic layer in BlockNode: a filter's missing operation passes to its
 * primary child, write-zeroes and FUA are emulated, block-status defaults to
 * "all data". What generic code needs to know about a driver is a hook or
 * an optional capability here (see README.md), never a test of its name.
 */
import type { Extent, Limits } from './request.ts';
import type { BlockNode } from './node.ts';
import type { ObjectType } from '../qapi/types.ts';
import type { Logger } from 'pino';
import type { ObjectLookup } from '../objects/lookup.ts';
import type { BitmapStore } from './bitmaps/node-bitmaps.ts';
import type { InternalSnapshots } from './internal-snapshots.ts';
import type { BlkdebugEvent } from './debug-events.ts';
import type { ChildEdge } from './edge.ts';

export type DriverKind = 'protocol' | 'format' | 'filter';

/** Roles a child can have under its parent (QEMU's names). */
/** 'image': blkdebug's child, its file child under QEMU's name for it. */
/** 'children.N': quorum's children (QEMU names them so, numbered as they are added); 'log': blklogwrites' log. */
/** 'extents.N': vmdk's extent files (QEMU's names for them). */
export type ChildRole = 'file' | 'backing' | 'data-file' | 'target' | 'image' | 'log' | `children.${number}` | `extents.${number}`;

export interface Perm { read: boolean; write: boolean; resize: boolean }

/** Options every blockdev has (QEMU's BlockdevOptionsBase), already validated. */
export interface CommonOptions {
  driver: string;
  'node-name'?: string;
  discard?: 'ignore' | 'unmap';
  cache?: { direct?: boolean; 'no-flush'?: boolean };
  'read-only'?: boolean;
  'auto-read-only'?: boolean;
  'force-share'?: boolean;
  'detect-zeroes'?: 'off' | 'on' | 'unmap';
}

/**
 * What a parent needs on a child edge and lets other users of the child do
 * (QEMU's bdrv_child_perm result). `passThrough`: the edge shares what the
 * parent's own users share, and follows them as they change (raw's file:
 * QEMU's filtered child of a format without metadata).
 */
export interface ChildPermission {
  perm: Perm; shared: Perm; passThrough?: boolean;
  /** A format's backing edge: shares write and resize only while the parent's own users share write (cowShared()). */
  cow?: boolean;
  /** How permission errors name the use (ChildEdge.permissionAs). */
  permissionAs?: { user: string; role: string };
}

/** A reference to a child: the node-name of an existing node, or the options of a new (implicit) one. */
export type ChildRef = string | Record<string, unknown>;

export interface OpenChildOptions {
  /** Permissions the parent needs on the child. Defaults derive from the parent's read-only flag. */
  perm?: Partial<Perm>;
  /** What the parent lets other users of the child do. Defaults: everything but write and resize for formats. */
  shared?: Partial<Perm>;
  /** A new child (inline options) whose driver the parent found by probing (DriverContext.probed). */
  probed?: boolean;
}

/**
 * Where the block layer sends events for the control plane (QEMU's
 * qapi_event_send_*: BLOCK_IMAGE_CORRUPTED...), with QMP's event name and
 * data. Whoever composes the graph (the daemon) decides who hears them; the
 * block layer never imports the QMP layer. QmpEventBus is one.
 */
export interface BlockEventSink {
  emit(event: string, data: Record<string, unknown>): void;
}

/**
 * What the graph hands every driver from above: the object registry (secrets,
 * and later throttle groups), a logger and the event sink. Given to
 * BlockGraph's constructor by the composition root.
 */
export interface BlockEnvironment {
  readonly objects: ObjectLookup;
  readonly log: Logger;
  readonly events: BlockEventSink;
}

/** What a driver gets while opening. */
export interface DriverContext {
  readonly nodeName: string;
  readonly readOnly: boolean;
  readonly options: CommonOptions;
  /** Opens (inline options) or references (node-name) a child and creates the edge. */
  openChild(role: ChildRole, ref: ChildRef, opts?: OpenChildOptions): Promise<BlockNode>;
  /** The format of the image in `filename`, by the registered drivers' probe() hooks ('raw' if none claims it). */
  probeFormat(filename: string): Promise<string>;
  /** The protocol node's options for a filename (BlockGraph.protocolOptions: 'http://...' is an http node, a path a file). */
  protocolOptions(filename: string): Record<string, unknown>;
  /** The format the registered drivers' probe() hooks give an image starting with `head` ('raw' if none claims it). */
  probeBytes(head: Buffer): string;
  /**
   * The node's driver was found by probing, not named (QEMU's bs->probed:
   * a backing file without a recorded format, a drive-mirror target without
   * `format`). A probed raw node keeps block 0 from becoming another format.
   */
  readonly probed: boolean;
  /**
   * User-created objects by id: `objects.secret(id)` for a key or password
   * (QEMU's texts when it is missing or not a secret), `objects.lookup(id,
   * type)` for another type, `objects.use(id)` to keep object-del from
   * taking it away while the node needs it (release it in close()).
   */
  readonly objects: ObjectLookup;
  /** The daemon's logger, bound to this node (`node` field). Drivers never write to stdout/stderr themselves. */
  readonly log: Logger;
  /** Events for the control plane; data as in QMP (e.g. BLOCK_IMAGE_CORRUPTED's device, node-name, msg, fatal). */
  readonly events: BlockEventSink;
  /**
   * The roles of the edges the node has already, in order: none at a first
   * open; when graph surgery opens the driver again on moved children
   * (BlockGraph.openOnChildren), the ones it has now, which for a driver
   * whose children change at run time (quorum) are no longer its options'.
   */
  readonly currentChildren: readonly string[];
  /**
   * The edge openChild() made for `role`. Graph surgery that moves a node's
   * users (a mirror's replaces) changes the edge's child in place, so a
   * driver that keeps the edge rather than the child node follows it.
   */
  childEdge(role: string): ChildEdge | undefined;
}

/**
 * Operations a driver implements. Offsets and lengths reaching these are
 * within the node, aligned to `limits.alignment` and no larger than
 * `limits.maxTransfer`; the caller owns every buffer.
 */
export interface DriverOps {
  /** Current size in bytes (cached by the driver; sync). Filters may omit it. */
  length?(): number;
  read?(offset: number, buf: Buffer): Promise<void>;
  write?(offset: number, buf: Buffer, flags: number): Promise<void>;
  writeZeroes?(offset: number, length: number, flags: number): Promise<void>;
  /**
   * A compressed write (QEMU's bdrv_co_pwritev_compressed; qcow2): `offset`
   * on a cluster boundary, whole clusters but for the image's last. Only
   * through BlockNode.writeCompressed (the compress filter, backup's
   * compress=true); a driver without it cannot take compressed writes.
   */
  writeCompressed?(offset: number, buf: Buffer): Promise<void>;
  /** Why writeCompressed would fail on this node though the driver has it (qcow2 with zstd: no compressor in blockd). */
  compressRefusal?(): string | undefined;
  discard?(offset: number, length: number): Promise<void>;
  flush?(): Promise<void>;
  /** Extents covering a prefix (at least one byte) of [offset, offset+length). */
  blockStatus?(offset: number, length: number, flags: number): Promise<Extent[]>;
  truncate?(size: number): Promise<void>;
  close?(): Promise<void>;
  /**
   * The node asked for read-write got read-only instead (auto-read-only on
   * a read-only NBD export: QEMU's bdrv_apply_auto_read_only); it then
   * reports ro and refuses writes.
   */
  readonly openedReadOnly?: boolean;
  /** Per-driver limits; unset fields are derived from the primary child. */
  limits?: Partial<Limits>;
  /** Driver-specific information for query-named-block-nodes (QEMU's image info). */
  info?(): Record<string, unknown>;
  /** Whether the node's medium is there (QEMU's bdrv_is_inserted hook: host_cdrom); without it, as its children's. */
  inserted?(): boolean;
  /** Driver-specific statistics (query-blockstats' BlockStatsSpecific members, QEMU's bdrv_get_specific_stats). */
  blockStats?(): Record<string, unknown>;
  /** Filename as QEMU reports it in query-named-block-nodes ("file" member); see Driver.filenameIsExact. */
  filename?(): string | undefined;
  /**
   * blockdev-reopen: get ready to run with `options` (the node's complete new
   * options, common ones included) and `readOnly`, leaving the current state
   * untouched; throw to refuse (QEMU's "Cannot change the option 'x'"). The
   * caller then calls exactly one of commit() or abort(), with the node
   * drained. Without this hook only read-only (except read-write on a
   * protocol node), detect-zeroes, discard and cache.no-flush can change.
   */
  prepareReopen?(options: Record<string, unknown>, readOnly: boolean): Promise<ReopenTransaction>;
  /**
   * What the node's users need and share, together (undefined: it has none).
   * The file driver's image locks follow it, as QEMU's permission updates do;
   * a conflict with another process throws and leaves the old state.
   */
  setPermissions?(users: { perm: Perm; shared: Perm } | undefined): void;
  /**
   * The node is being drained (QEMU's bdrv_drain_begin): BlockNode calls it,
   * top-down through the nodes above the drained one, as it quiesces this
   * node and before it waits for the node's in-flight requests, which must
   * therefore finish without new input (a throttle lets its queued requests
   * through at once). New requests wait in BlockNode until drainEnd().
   * Nested sections call it once, at the outermost.
   */
  drainBegin?(): void;
  /**
   * An event of QEMU's BlkdebugEvent happened to this node (QEMU's
   * bdrv_debug_event): its parent is about to read from it (read_aio), the
   * block layer is writing it (pwritev)... Only blkdebug listens; whoever
   * raises one calls BlockNode.debugEvent(), which costs nothing elsewhere.
   */
  debugEvent?(event: BlkdebugEvent): void;
  /** The last drained section holding the node ended (QEMU's bdrv_drain_end); requests flow again after it. */
  drainEnd?(): void;
  /** Persistent dirty bitmaps kept in the image (qcow2); the bitmap registry hands out its nodeBitmaps. */
  readonly bitmapStore?: BitmapStore;
  /**
   * The point-in-time view a copy-before-write filter keeps (QEMU's
   * bdrv_co_preadv_snapshot and friends), which a snapshot-access node
   * above it serves.
   */
  readonly snapshotAccess?: SnapshotAccess;
  /** Internal snapshots kept in the image (qcow2), for the blockdev-snapshot-*-internal-sync commands. */
  readonly internalSnapshots?: InternalSnapshots;
  /**
   * x-blockdev-amend (QEMU's bdrv_co_amend): changes format options of the
   * open image, `options` being the driver's members of BlockdevAmendOptions
   * (Driver.amendOptions), already validated; `force` allows what QEMU calls
   * unsafe (erasing the last LUKS key slot).
   */
  amend?(options: Record<string, unknown>, force: boolean): Promise<void>;
  /**
   * x-blockdev-change with node= (QEMU's bdrv_add_child; quorum): takes
   * `child`, a node nobody uses, as a new child, with the node drained.
   * `attach(role)` makes the edge (throwing on a permission refusal, which
   * the driver lets through after undoing its own step). Throws QEMU's
   * refusal (blkverify mode) before attaching anything.
   */
  addChild?(child: BlockNode, attach: (role: ChildRole) => ChildEdge): void;
  /**
   * x-blockdev-change with child= (QEMU's bdrv_del_child): lets go of the
   * child edge `role`, with the node drained; `detach()` removes the edge (an
   * inline child closes with it). Throws QEMU's refusal before detaching.
   */
  delChild?(role: string, detach: () => Promise<void>): Promise<void>;
}

/**
 * Reads of a point-in-time snapshot of a node (DriverOps.snapshotAccess):
 * what the node held when the snapshot began, whatever was written since.
 * A range the snapshot does not cover (discarded, or outside a bitmap's
 * ranges) fails with EINVAL (QEMU's EACCES, which NBD sends as EINVAL).
 */
export interface SnapshotAccess {
  read(offset: number, buf: Buffer): Promise<void>;
  /** Extents covering a prefix of [offset, offset+length) of the snapshot. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** The range is no longer needed: it is not copied any more and reads of it fail. */
  discard(offset: number, length: number): Promise<void>;
}

/** A prepared reopen (see DriverOps.prepareReopen). */
export interface ReopenTransaction {
  commit(): void;
  abort(): Promise<void> | void;
}

export interface Driver {
  readonly name: string;
  readonly kind: DriverKind;
  /** The driver-specific members of its blockdev-add options (QEMU's BlockdevOptions<Driver>). */
  readonly options: ObjectType;
  open(options: Record<string, unknown>, ctx: DriverContext): Promise<DriverOps>;
  /**
   * QEMU's bdrv_child_perm: what a node of this driver needs and shares on
   * its child `role` in the given mode. Without it the default for the
   * driver's kind applies (perm.ts: a format owns its file, filters and
   * protocols share everything). Used at open and again by blockdev-reopen;
   * OpenChildOptions given to openChild() override it for one edge.
   */
  childPerm?(role: string, readOnly: boolean): ChildPermission;
  /**
   * Format probing (QEMU's BlockDriver.bdrv_probe): how surely `head`, the
   * first PROBE_BYTES (probe.ts) of `filename`, zeroes after the end of a
   * short file, is an image of this format: 0 not at all, 100 certain. Raw
   * has none: it is what is left when nothing claims a file.
   */
  probe?(head: Buffer, filename: string): number;
  /**
   * Creates a new, empty image of this format in `filename` (QEMU's
   * bdrv_img_create for drive-mirror and drive-backup targets in
   * absolute-paths mode), `size` bytes, on top of `backingFile` (of
   * `backingFormat`) when given. A format without it cannot be such a target.
   */
  createImage?(filename: string, o: { size: number; backingFile?: string; backingFormat?: string }): Promise<void>;
  /**
   * QEMU's strong_runtime_opts: the driver's options that change what a node
   * reads (null-co's size, raw's offset and size, a file's filename). A node
   * with any of them set (filename aside) cannot be opened from a plain
   * filename, so query-named-block-nodes names it "json:{...}" with them.
   * Default: none. A dotted name is a nested option ('encrypt.key-secret').
   */
  readonly strongOptions?: readonly string[];
  /**
   * A protocol driver that names its nodes itself (QEMU's
   * bdrv_refresh_filename hook, nbd's nbd://host:port/export): its ops'
   * filename() is the exact filename whatever its strong options, and
   * undefined means it has none (the node shows as json:{...}).
   */
  readonly filenameIsExact?: boolean;
  /**
   * QEMU's protocol_name(s) with bdrv_parse_filename: a filename starting
   * with `<protocol>:` (drive-mirror's target "nbd+unix:///disk?socket=...")
   * is opened by this driver with the options parseFilename() makes of it
   * (BlockGraph.protocolOptions).
   */
  readonly protocols?: readonly string[];
  parseFilename?(filename: string): Record<string, unknown>;
  /**
   * Whether QEMU's bdrv_get_info succeeds for a node (query-named-block-nodes
   * then reports its dirty-flag): 'own' for drivers that answer it
   * themselves (file, host_device), 'file' for drivers that ask their file
   * child (raw). A format whose info() has a dirty-flag needs neither.
   */
  readonly getInfo?: 'own' | 'file';
  /**
   * A protocol driver whose nodes hold nothing that depends on their mode
   * (null-co: no file): blockdev-reopen may make one read-write without a
   * prepareReopen() hook.
   */
  readonly reopenWithoutHook?: boolean;
  /**
   * A filter that holds its child for one job (mirror_top, copy-before-write):
   * mirror refuses a node below one ("Need a root block node") and backup
   * names the job that holds it.
   */
  readonly jobFilter?: boolean;
  /**
   * QEMU's bdrv_change_backing_file: records a new backing file name and
   * format (undefined: none) in the image of `node`, a node of this driver.
   * Graph surgery (stream, commit) calls it with the node drained and its
   * ops closed, between closing them and opening them again on the new
   * children, so it works through the node's children, not open state.
   * Formats without it record no backing name.
   */
  /**
   * The node's own exact filename (QEMU's bdrv_refresh_filename hook), given
   * its primary child's (undefined: the child has none, so neither has the
   * node); undefined when the options cannot be said in a filename (then it
   * is json:{...}). blkdebug's "blkdebug:CONFIG:FILE". Without it a filter
   * shows its child's filename.
   */
  exactFilename?(options: Record<string, unknown>, childFilename: string): string | undefined;
  /**
   * QEMU's driver has a protocol name but no bdrv_get_allocated_file_size
   * (blkdebug): query-named-block-nodes shows no actual-size for its nodes.
   */
  readonly noAllocatedSize?: boolean;
  setBackingFile?(node: BlockNode, backingFile: string | undefined, backingFormat: string | undefined): Promise<void>;
  /**
   * What the daemon warns (its log, QEMU's stderr) when a node of this driver
   * is opened read-write with its format probed (QEMU's raw: "Image format
   * was not specified for 'x' and probing guessed raw..."), given the node's
   * file's filename.
   */
  probedWarning?(filename: string): string;
  /** The driver's members of x-blockdev-amend's BlockdevAmendOptions; drivers without it cannot amend. */
  readonly amendOptions?: ObjectType;
  /**
   * Its children are a list option (quorum's `children`, edges 'children.N'
   * with gaps once some were removed): a json:{...} filename lists them
   * under this name, gap-less, in edge order (QEMU's
   * bdrv_gather_child_options hook).
   */
  readonly childList?: string;
}
