/**
 * Every export of the daemon, of every type (QEMU's block_exports list), and
 * the one add/del/query path: --export and block-export-add (and NBD's
 * legacy nbd-server-add, which builds the same options) go through add(),
 * block-export-del and nbd-server-remove through del(), query-block-exports
 * through query().
 *
 * add() makes the checks every export shares in qsd's order (blk_exp_add):
 * id, id in use, node, read-only, iothread, the node's other users; then the
 * type's driver makes its own and creates the export. Emits 'deleted' (id)
 * once an export is gone and its id may be reused (BLOCK_EXPORT_DELETED).
 */
import { EventEmitter } from 'node:events';
import { BlockError } from '../util/errors.ts';
import { VALID_ID, type BlockGraph } from '../blockdev/graph.ts';
import { checkPermissions } from '../blockdev/edge.ts';
import type { BlockExportInfoValue, BlockExportOptionsValue } from '../qapi/block-export.ts';
import type { ExportDriverTable } from './drivers.ts';
import { exportPermissions, type BlockExport, type CloseMode } from './export.ts';

export interface BlockExportsOptions {
  /** The type of the object with this id ('iothread', 'secret'...); without it no iothread exists. */
  objectType?: (id: string) => string | undefined;
  /**
   * Why a new export cannot run where it asked (an iothread=, fixed-iothread
   * export whose nodes cannot move there), or undefined. Without it, none is refused.
   */
  placementRefusal?: (exp: BlockExport) => string | undefined;
  /** A shutdown nobody waits for failed (del() of an export with users, closeAll()). */
  onError: (err: unknown, id: string) => void;
}

export class BlockExports extends EventEmitter<{ deleted: [id: string] }> {
  /** In creation order. */
  private readonly byId = new Map<string, BlockExport>();

  constructor(readonly drivers: ExportDriverTable, private readonly opts: BlockExportsOptions) {
    super();
  }

  /** --export, block-export-add: `options` is a validated BlockExportOptions. Throws qsd's messages; a refusal leaves nothing behind. */
  add(graph: BlockGraph, options: BlockExportOptionsValue): BlockExport {
    const { id } = options;
    if (!VALID_ID.test(id)) throw new BlockError('EINVAL', 'Invalid block export id');
    if (this.byId.has(id)) throw new BlockError('EINVAL', `Block export id '${id}' is already in use`);
    const driver = this.drivers.get(options.type);
    if (!driver) throw new BlockError('EINVAL', 'No driver found for the requested export type');
    const node = graph.find(options['node-name']);
    const writable = options.writable === true;
    if (writable && node.readOnly) throw new BlockError('EINVAL', 'Cannot export read-only node as writable');
    if (options.iothread !== undefined && this.opts.objectType?.(options.iothread) !== 'iothread') {
      throw new BlockError('EINVAL', `iothread "${options.iothread}" not found`);
    }
    // As QEMU's blk_insert_bs before the driver runs: the node's users must allow what an export uses.
    const user = { describe: () => `block device export '${id}'`, permissionUser: () => 'an unnamed block device' };
    checkPermissions(node, { parent: user, child: node, role: 'root', ...exportPermissions(writable, true) });
    const common = {
      type: driver.type, id, graph, node, writable, writethrough: options.writethrough === true,
      iothread: options.iothread, fixedIothread: options['fixed-iothread'] === true,
    };
    const exp = driver.create(common, options);
    // An export that must run in its iothread and cannot is refused (fixed-iothread), leaving nothing behind.
    const refusal = this.opts.placementRefusal?.(exp);
    if (refusal !== undefined) {
      void exp.unlink();
      driver.deleted?.(exp);
      throw new BlockError('EINVAL', refusal);
    }
    this.byId.set(id, exp);
    return exp;
  }

  /**
   * block-export-del, nbd-server-remove. Refusals as qsd: unknown id, already
   * shutting down, 'safe' with users connected. With no user connected it
   * resolves once the export is gone (BLOCK_EXPORT_DELETED before the
   * reply); otherwise at once, and the event follows when the users are gone.
   */
  async del(id: string, mode: CloseMode = 'safe'): Promise<void> {
    const exp = this.byId.get(id);
    if (!exp) throw new BlockError('ENOENT', `Export '${id}' is not found`);
    if (exp.shuttingDown) throw new BlockError('EINVAL', `Export '${id}' is already shutting down`);
    if (mode === 'safe' && exp.activeConnections() > 0) throw new BlockError('EBUSY', `export '${id}' still in use`);
    // Clients that said goodbye are waited for as for an idle export: gone before the reply.
    const idle = exp.activeConnections() === 0;
    const done = this.shutDown(exp);
    if (idle) return done;
    done.catch((err: unknown) => this.opts.onError(err, id));
  }

  /**
   * Ends every export (of one type, or all), users dropped, one after the
   * other, oldest first (so their BLOCK_EXPORT_DELETED come in that order);
   * resolves when they are gone (QEMU's blk_exp_close_all_type).
   */
  async closeAll(type?: string): Promise<void> {
    for (const e of this.list()) {
      if (type !== undefined && e.type !== type) continue;
      await this.shutDown(e).catch((err: unknown) => this.opts.onError(err, e.id));
    }
  }

  get(id: string): BlockExport | undefined { return this.byId.get(id); }

  /** Every export, oldest first. */
  list(): BlockExport[] { return [...this.byId.values()]; }

  /** query-block-exports: newest first, as qsd lists them. */
  query(): BlockExportInfoValue[] {
    return this.list().reverse().map((e) => ({ id: e.id, type: e.type, 'node-name': e.node.nodeName, 'shutting-down': e.shuttingDown }));
  }

  /** QEMU's blk_exp_request_shutdown and what follows: the driver drops the users, the edge goes, the id is freed. Idempotent. */
  private shutDown(exp: BlockExport): Promise<void> {
    const driver = this.drivers.get(exp.type);
    if (!driver) throw new Error(`assertion failed: export '${exp.id}' of unknown type '${exp.type}'`);
    return exp.endOnce(async () => {
      await driver.requestShutdown(exp);
      await exp.unlink();
      driver.deleted?.(exp);
      this.byId.delete(exp.id);
      this.emit('deleted', exp.id);
    });
  }
}
