/**
 * What every block export is, whatever serves it (QEMU's BlockExport in
 * block/export/export.c): an id, a 'root' edge to the exported node with the
 * permissions the export needs, writable and writethrough, and the users
 * (client connections) it serves. An export type's driver subclasses it.
 *
 * Its life: created by BlockExports.add, served while user-owned, then
 * shutting down (no new users; its driver drops the ones it has), then
 * deleted once no user is left and the edge is gone (BLOCK_EXPORT_DELETED).
 */
import type { BlockGraph } from '../blockdev/graph.ts';
import type { ChildEdge, Parent } from '../blockdev/edge.ts';
import type { BlockNode } from '../blockdev/node.ts';
import { ExportIoStats } from './io-stats.ts';

/** One user of an export (an NBD connection...): counted, and dropped on a hard shutdown. */
export interface ExportClient {
  /** Hard close: drop the client now; resolves once its in-flight requests are done. */
  destroy(): Promise<void>;
  /**
   * The client has said goodbye (NBD_CMD_DISC, or closed its end): it sends
   * nothing more and only its socket is still to close. A 'safe' removal
   * does not count it as a user (a script's qemu-io has exited by then).
   */
  readonly leaving?: boolean;
}

/** block-export-del's mode: 'safe' refuses while users are connected, 'hard' drops them. */
export type CloseMode = 'safe' | 'hard';

/** What the generic layer has checked and hands to a driver's create (QEMU: the fields blk_exp_add fills). */
export interface ExportCommon {
  readonly type: string;
  readonly id: string;
  readonly graph: BlockGraph;
  readonly node: BlockNode;
  readonly writable: boolean;
  readonly writethrough: boolean;
  /** The iothread object the export asked to run in (iothread=), if any. */
  readonly iothread?: string;
  /** fixed-iothread: refuse the export rather than serve it elsewhere when it cannot run in its iothread. */
  readonly fixedIothread?: boolean;
}

/**
 * The permissions an export's edge takes: read, write when writable, resize
 * when the type resizes the node (FUSE: writable or growable); it lets
 * others do anything but what `shared` withholds.
 */
export function exportPermissions(writable: boolean, sharesResize: boolean, takesResize = false) {
  return {
    perm: { read: true, write: writable, resize: takesResize },
    shared: { read: true, write: true, resize: sharesResize },
  };
}

export abstract class BlockExport implements Parent {
  readonly type: string;
  readonly id: string;
  readonly writable: boolean;
  /** Every write is made stable before it completes (qsd: the write cache is off). */
  readonly writethrough: boolean;
  readonly edge: ChildEdge;
  /** The iothread asked for (iothread=), and whether it is fixed (see ExportCommon). */
  readonly iothread?: string;
  readonly fixedIothread: boolean;
  /** Its clients' requests, counted by the server that runs them (io-stats.ts). */
  readonly ioStats = new ExportIoStats();
  /** Clients that ever attached. */
  clientsTotal = 0;
  protected readonly graph: BlockGraph;
  private readonly users = new Set<ExportClient>();
  private ending?: Promise<void>;
  private userOwned = true;

  /**
   * Links the 'root' edge (a conflict throws, leaving nothing behind). A
   * subclass does its own checks before calling this, so a refused export
   * holds nothing. `sharesResize`: whether other users may resize the node
   * (NBD: no, its size is fixed at creation); `takesResize`: whether the
   * export itself resizes it (FUSE's truncate and growable writes).
   */
  protected constructor(common: ExportCommon, sharesResize: boolean, takesResize = false) {
    this.type = common.type;
    this.id = common.id;
    this.writable = common.writable;
    this.writethrough = common.writethrough;
    this.iothread = common.iothread;
    this.fixedIothread = common.fixedIothread === true;
    this.graph = common.graph;
    this.edge = common.graph.link(this, common.node, 'root', exportPermissions(this.writable, sharesResize, takesResize));
  }

  /** The exported node (follows the edge if a job swaps the node under it). */
  get node(): BlockNode { return this.edge.child; }

  describe(): string { return `block device export '${this.id}'`; }

  /** qsd's exports use a BlockBackend without a name. */
  permissionUser(): string { return 'an unnamed block device'; }

  /** True once shutdown began (QEMU: !user_owned): new users are refused, query-block-exports shows shutting-down. */
  get shuttingDown(): boolean { return !this.userOwned; }

  /** Users being served. */
  connections(): number { return this.users.size; }

  /** Users being served that have not said goodbye (see ExportClient.leaving). */
  activeConnections(): number {
    let n = 0;
    for (const u of this.users) if (!u.leaving) n++;
    return n;
  }

  /** The users being served, for a driver's requestShutdown. */
  clients(): ExportClient[] { return [...this.users]; }

  /** Called by a user that has chosen this export; false if the export is going away. */
  attach(client: ExportClient): boolean {
    if (this.shuttingDown) return false;
    this.users.add(client);
    this.clientsTotal++;
    return true;
  }

  detach(client: ExportClient): void {
    this.users.delete(client);
  }

  /**
   * Runs `end` once (the registry's shutdown: driver's requestShutdown, then
   * unlinking); later calls get the same promise. Marks the export shutting
   * down before `end` starts.
   */
  endOnce(end: () => Promise<void>): Promise<void> {
    if (!this.ending) {
      this.userOwned = false;
      this.ending = end();
    }
    return this.ending;
  }

  /** Unlinks the edge; called by the registry once no user is left. */
  async unlink(): Promise<void> {
    if (this.users.size > 0) throw new Error(`assertion failed: export '${this.id}' unlinked with ${this.users.size} users`);
    await this.graph.unlink(this, this.edge);
  }
}

/** Whether an edge's user is an export (QEMU's "the node has a BlockBackend"): blockdev-del refuses such a node. */
export function isBlockExport(user: Parent): user is BlockExport {
  return user instanceof BlockExport;
}
