/**
 * NBD as an export type: `NbdExport` (a BlockExport with what the NBD
 * server needs: name, description, fixed size, metadata contexts) and
 * `NbdExportDriver`, the NBD entry of the export-driver table
 * (src/export/drivers.ts), which also keeps the NBD exports the servers
 * look up by name (QEMU nbd/server.c's export list). Like qsd's, an NBD
 * export lets other users do anything with its node but resize it.
 */
import { BlockError } from '../util/errors.ts';
import type { BlockNode } from '../blockdev/node.ts';
import { BlockExport, type ExportClient, type ExportCommon, type CloseMode } from '../export/export.ts';
import type { ExportDriver } from '../export/drivers.ts';
import { BlockExportOptionsNbd, type BlockExportOptionsNbdValue, type BlockExportOptionsValue } from '../qapi/block-export.ts';
import { MAX_PAYLOAD, MAX_STRING, PREFERRED_BLOCK_SIZE, TxFlag } from '../nbd-protocol/constants.ts';
import type { NbdConnection } from './connection.ts';
import { DEFAULT_PROVIDERS, type DirtyBitmapView, type MetaContext, type MetaContextProvider } from './meta.ts';

export type { ExportClient, CloseMode };

export const NBD_EXPORT_TYPE = 'nbd';

/** The NBD members of an export's options, as the export uses them. */
export interface NbdExportSettings {
  /** Export name clients ask for (default: the node name). */
  name: string;
  description?: string;
  bitmaps: string[];
  allocationDepth: boolean;
}

/** The one conversion of a validated BlockExportOptions (type nbd) into the NBD export's settings. */
export function nbdExportSettings(o: BlockExportOptionsValue & BlockExportOptionsNbdValue): NbdExportSettings {
  return {
    name: o.name ?? o['node-name'],
    description: o.description,
    // 7.2's bitmaps list takes a name or {node, name}; blockd looks bitmaps up on the exported node.
    bitmaps: (o.bitmaps ?? []).map((b) => (typeof b === 'string' ? b : b.name)),
    allocationDepth: o['allocation-depth'] === true,
  };
}

export class NbdExport extends BlockExport {
  readonly name: string;
  readonly description?: string;
  readonly allocationDepth: boolean;
  readonly bitmaps: readonly DirtyBitmapView[];
  /** Size in bytes, fixed at creation as in qsd (the export forbids resizing the node). */
  readonly size: number;
  readonly metaContexts: readonly MetaContext[];
  /**
   * Set while another event loop (an iothread, src/iothread) serves the
   * export: each connection that enters transmission here is offered to it.
   */
  placement?: (conn: NbdConnection) => void;

  constructor(common: ExportCommon, s: NbdExportSettings, bitmaps: DirtyBitmapView[], providers: readonly MetaContextProvider[]) {
    super(common, false);
    this.name = s.name;
    this.description = s.description;
    this.allocationDepth = s.allocationDepth;
    this.bitmaps = bitmaps;
    this.size = common.node.length();
    this.metaContexts = providers.flatMap((p) => p.contexts(this));
  }

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
}

/** What an NBD server serves: the NBD exports, by name. */
export interface NbdExportList {
  /** The export clients reach by this name; exports shutting down are no longer reachable. */
  byName(name: string): NbdExport | undefined;
  /** Every NBD export, oldest first (the order NBD_OPT_LIST uses). */
  list(): NbdExport[];
}

export interface NbdExportDriverOptions {
  /** Finds a dirty bitmap by name on a node (or below it); none are found without it. */
  findBitmap?: (node: BlockNode, name: string, exportWritable: boolean) => DirtyBitmapView | undefined;
  /** Metadata context providers, in reply order. */
  providers?: readonly MetaContextProvider[];
  /** Whether an NBD server runs: qsd refuses an NBD export without one. Without it, one always does. */
  serverRunning?: () => boolean;
}

/** The NBD entry of the export-driver table, and the NBD exports' list. */
export class NbdExportDriver implements ExportDriver<NbdExport>, NbdExportList {
  readonly type = NBD_EXPORT_TYPE;
  readonly options = BlockExportOptionsNbd;
  private readonly exports: NbdExport[] = [];

  constructor(private readonly opts: NbdExportDriverOptions = {}) {}

  /** QEMU's nbd_export_create: its checks and messages in its order. */
  create(common: ExportCommon, options: BlockExportOptionsValue): NbdExport {
    if (this.opts.serverRunning && !this.opts.serverRunning()) throw new BlockError('EINVAL', 'NBD server not running');
    const s = nbdExportSettings(options);
    if (Buffer.byteLength(s.name) > MAX_STRING) throw new BlockError('EINVAL', `export name '${s.name}' too long`);
    if (s.description !== undefined && Buffer.byteLength(s.description) > MAX_STRING) {
      throw new BlockError('EINVAL', `description '${s.description}' too long`);
    }
    if (this.byName(s.name)) throw new BlockError('EINVAL', `NBD server already has export named '${s.name}'`);
    // blk_getlength fails with ENOMEDIUM when the medium is not there (host_cdrom without a disc).
    if (!common.node.inserted()) throw new BlockError('EINVAL', "Failed to determine the NBD export's length: No medium found");
    const bitmaps: DirtyBitmapView[] = [];
    for (const b of s.bitmaps) {
      const bm = this.opts.findBitmap?.(common.node, b, common.writable);
      if (!bm) throw new BlockError('ENOENT', `Bitmap '${b}' is not found`);
      bitmaps.push(bm);
    }
    const exp = new NbdExport(common, s, bitmaps, this.opts.providers ?? DEFAULT_PROVIDERS);
    this.exports.push(exp);
    return exp;
  }

  /** Disconnects the export's clients; resolves once their in-flight requests are answered. */
  async requestShutdown(exp: NbdExport): Promise<void> {
    await Promise.all(exp.clients().map((c) => c.destroy()));
  }

  deleted(exp: NbdExport): void {
    const i = this.exports.indexOf(exp);
    if (i >= 0) this.exports.splice(i, 1);
  }

  byName(name: string): NbdExport | undefined {
    return this.exports.find((e) => e.name === name && !e.shuttingDown);
  }

  list(): NbdExport[] { return [...this.exports]; }
}
