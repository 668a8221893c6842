/**
 * NBD exports and their registry. An export is a user of a node (it holds a
 * 'root' edge to it, like qsd's BlockBackend): a writable export takes the
 * write permission. Like qsd's, it lets other users do anything but resize
 * the node. The registry is shared by every NBD server of the daemon.
 */
import { EventEmitter } from 'node:events';
import { BlockError } from '../util/errors.ts';
import { VALID_ID, type BlockGraph } from '../blockdev/graph.ts';
import type { ChildEdge, Parent } from '../blockdev/edge.ts';
import type { BlockNode } from '../blockdev/node.ts';
import { MAX_PAYLOAD, MAX_STRING, PREFERRED_BLOCK_SIZE, TxFlag } from '../nbd-protocol/constants.ts';
import { DEFAULT_PROVIDERS, type DirtyBitmapView, type MetaContext, type MetaContextProvider } from './meta.ts';

export interface NbdExportOptions {
  id: string;
  nodeName: string;
  /** Export name clients ask for; default: the node name. */
  name?: string;
  description?: string;
  writable?: boolean;
  /** Every write is made stable before it completes (qsd: the write cache is off). */
  writethrough?: boolean;
  bitmaps?: string[];
  allocationDepth?: boolean;
}

/** What a connection needs from its export while it serves it. */
export interface ExportClient {
  /** Hard close: drop the client now; resolves once its in-flight requests are done. */
  destroy(): Promise<void>;
}

export type CloseMode = 'safe' | 'hard';

export class NbdExport implements Parent {
  readonly id: string;
  readonly name: string;
  readonly description?: string;
  readonly writable: boolean;
  readonly writethrough: boolean;
  readonly allocationDepth: boolean;
  readonly bitmaps: readonly DirtyBitmapView[];
  /** Size in bytes, fixed at creation as in qsd (the export forbids resizing the node). */
  readonly size: number;
  readonly metaContexts: readonly MetaContext[];
  private readonly clients = new Set<ExportClient>();
  private shutdown?: Promise<void>;

  constructor(
    private readonly graph: BlockGraph,
    node: BlockNode,
    opts: NbdExportOptions,
    bitmaps: DirtyBitmapView[],
    providers: readonly MetaContextProvider[],
  ) {
    this.id = opts.id;
    this.name = opts.name ?? opts.nodeName;
    this.description = opts.description;
    this.writable = opts.writable === true;
    this.writethrough = opts.writethrough === true;
    this.allocationDepth = opts.allocationDepth === true;
    this.bitmaps = bitmaps;
    this.size = node.length();
    this.edge = graph.link(this, node, 'root', {
      perm: { read: true, write: this.writable, resize: false },
      shared: { read: true, write: true, resize: false },
    });
    this.metaContexts = providers.flatMap((p) => p.contexts(this));
  }

  readonly edge: ChildEdge;

  /** The exported node (follows the edge if a job swaps the node under it). */
  get node(): BlockNode { return this.edge.child; }

  describe(): string { return `block device export '${this.id}'`; }

  /** True once close() started: new clients are refused, query-block-exports shows shutting-down. */
  get shuttingDown(): boolean { return this.shutdown !== undefined; }

  connections(): number { return this.clients.size; }

  /** Transmission flags as qsd sets them; DF is added per connection when structured replies are on. */
  transmissionFlags(multiConn: boolean): number {
    let f = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_CACHE;
    if (multiConn) f |= TxFlag.CAN_MULTI_CONN;
    if (this.writable) f |= TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO;
    else f |= TxFlag.READ_ONLY;
    return f;
  }

  /** NBD_INFO_BLOCK_SIZE: minimum is the node's alignment when the client will honour it, else 1. */
  blockSizes(clientHonoursMinimum: boolean): [number, number, number] {
    const min = clientHonoursMinimum ? this.node.limits.alignment : 1;
    return [min, Math.max(PREFERRED_BLOCK_SIZE, min), Math.min(this.node.limits.maxTransfer, MAX_PAYLOAD)];
  }

  /** Called by a connection that has chosen this export; false if the export is going away. */
  attach(client: ExportClient): boolean {
    if (this.shuttingDown) return false;
    this.clients.add(client);
    return true;
  }

  detach(client: ExportClient): void {
    this.clients.delete(client);
  }

  /**
   * Ends the export. 'safe' refuses while clients are connected (qsd's
   * "export 'ID' still in use"); 'hard' disconnects them. Resolves once no
   * request of this export is in flight and the edge to the node is gone.
   * Idempotent.
   */
  close(mode: CloseMode): Promise<void> {
    if (this.shutdown) return this.shutdown;
    if (mode === 'safe' && this.clients.size > 0) {
      return Promise.reject(new BlockError('EBUSY', `export '${this.id}' still in use`));
    }
    this.shutdown = (async () => {
      await Promise.all([...this.clients].map((c) => c.destroy()));
      this.clients.clear();
      await this.graph.unlink(this, this.edge);
    })();
    return this.shutdown;
  }
}

export interface ExportRegistryOptions {
  /** Finds a dirty bitmap by name on a node (or below it); none are found without it. */
  findBitmap?: (node: BlockNode, name: string, exportWritable: boolean) => DirtyBitmapView | undefined;
  /** Metadata context providers, in reply order. */
  providers?: readonly MetaContextProvider[];
}

/** Every export of the daemon, keyed by id; emits 'deleted' (id) when one is gone. */
export class ExportRegistry extends EventEmitter<{ deleted: [id: string] }> {
  private readonly byId = new Map<string, NbdExport>();

  constructor(private readonly opts: ExportRegistryOptions = {}) {
    super();
  }

  /** block-export-add for type=nbd; checks and messages in qsd's order. */
  add(graph: BlockGraph, opts: NbdExportOptions): NbdExport {
    if (!VALID_ID.test(opts.id)) throw new BlockError('EINVAL', 'Invalid block export id');
    if (this.byId.has(opts.id)) throw new BlockError('EINVAL', `Block export id '${opts.id}' is already in use`);
    const node = graph.find(opts.nodeName);
    if (opts.writable && node.readOnly) throw new BlockError('EINVAL', 'Cannot export read-only node as writable');
    const name = opts.name ?? opts.nodeName;
    if (Buffer.byteLength(name) > MAX_STRING) throw new BlockError('EINVAL', `export name '${name}' too long`);
    if (opts.description !== undefined && Buffer.byteLength(opts.description) > MAX_STRING) {
      throw new BlockError('EINVAL', `description '${opts.description}' too long`);
    }
    if (this.byName(name)) throw new BlockError('EINVAL', `NBD server already has export named '${name}'`);
    const bitmaps: DirtyBitmapView[] = [];
    for (const b of opts.bitmaps ?? []) {
      const bm = this.opts.findBitmap?.(node, b, opts.writable === true);
      if (!bm) throw new BlockError('ENOENT', `Bitmap '${b}' is not found`);
      bitmaps.push(bm);
    }
    const exp = new NbdExport(graph, node, { ...opts, name }, bitmaps, this.opts.providers ?? DEFAULT_PROVIDERS);
    this.byId.set(exp.id, exp);
    return exp;
  }

  /** block-export-del. */
  async remove(id: string, mode: CloseMode = 'safe'): Promise<void> {
    const exp = this.byId.get(id);
    if (!exp) throw new BlockError('ENOENT', `Export '${id}' is not found`);
    await exp.close(mode);
    if (this.byId.get(id) === exp) {
      this.byId.delete(id);
      this.emit('deleted', id);
    }
  }

  get(id: string): NbdExport | undefined { return this.byId.get(id); }

  /** The export clients reach by this name; exports shutting down are no longer reachable. */
  byName(name: string): NbdExport | undefined {
    for (const e of this.byId.values()) if (e.name === name && !e.shuttingDown) return e;
    return undefined;
  }

  /** Every export, oldest first (the order NBD_OPT_LIST uses). */
  list(): NbdExport[] { return [...this.byId.values()]; }
}
