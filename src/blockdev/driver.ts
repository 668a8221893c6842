/**
 * The driver interface. A driver opens one node's worth of state and returns
 * the operations it implements. Anything it leaves out is handled by the
 * generic layer in BlockNode: a filter's missing operation passes to its
 * primary child, write-zeroes and FUA are emulated, block-status defaults to
 * "all data".
 */
import type { Extent, Limits } from './request.ts';
import type { BlockNode } from './node.ts';
import type { ObjectType } from '../qapi/types.ts';
import type { Logger } from 'pino';
import type { ObjectLookup } from '../objects/lookup.ts';

export type DriverKind = 'protocol' | 'format' | 'filter';

/** Roles a child can have under its parent (QEMU's names). */
export type ChildRole = 'file' | 'backing' | 'data-file' | 'target';

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

/** A reference to a child: the node-name of an existing node, or the options of a new (implicit) one. */
export type ChildRef = string | Record<string, unknown>;

export interface OpenChildOptions {
  /** Permissions the parent needs on the child. Defaults derive from the parent's read-only flag. */
  perm?: Partial<Perm>;
  /** What the parent lets other users of the child do. Defaults: everything but write and resize for formats. */
  shared?: Partial<Perm>;
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
  discard?(offset: number, length: number): Promise<void>;
  flush?(): Promise<void>;
  /** Extents covering a prefix (at least one byte) of [offset, offset+length). */
  blockStatus?(offset: number, length: number, flags: number): Promise<Extent[]>;
  truncate?(size: number): Promise<void>;
  close?(): Promise<void>;
  /** Per-driver limits; unset fields are derived from the primary child. */
  limits?: Partial<Limits>;
  /** Driver-specific information for query-named-block-nodes (QEMU's image info). */
  info?(): Record<string, unknown>;
  /** Filename as QEMU reports it in query-named-block-nodes ("file" member). */
  filename?(): string;
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
}
