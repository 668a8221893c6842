/**
 * The daemon's export composition (src/daemon/daemon.ts) for tests that run
 * the NBD server without a daemon: the generic registry with the NBD entry
 * as its only type, and the option shape those tests write. Every add goes
 * through the same path as --export and block-export-add.
 */
import type { BlockGraph } from '../../src/blockdev/graph.ts';
import { ExportDriverTable } from '../../src/export/drivers.ts';
import { BlockExports } from '../../src/export/registry.ts';
import type { CloseMode } from '../../src/export/export.ts';
import { NbdExportDriver, type NbdExport, type NbdExportDriverOptions, type NbdExportList } from '../../src/nbd/exports.ts';

/** An NBD export as tests describe it (the members of BlockExportOptions, camel-cased). */
export interface NbdExportOptions {
  id: string;
  nodeName: string;
  name?: string;
  description?: string;
  writable?: boolean;
  writethrough?: boolean;
  bitmaps?: string[];
  allocationDepth?: boolean;
}

/** BlockExportOptions as the daemon's table (NBD only) builds it. */
export const BlockExportOptions = new ExportDriverTable([new NbdExportDriver()]).optionsType();

export class ExportRegistry implements NbdExportList {
  readonly nbd: NbdExportDriver;
  readonly exports: BlockExports;

  constructor(opts: NbdExportDriverOptions = {}) {
    this.nbd = new NbdExportDriver(opts);
    this.exports = new BlockExports(new ExportDriverTable([this.nbd]), { onError: (err) => { throw err; } });
  }

  add(graph: BlockGraph, o: NbdExportOptions): NbdExport {
    return this.exports.add(graph, {
      type: 'nbd', id: o.id, 'node-name': o.nodeName, writable: o.writable, writethrough: o.writethrough,
      name: o.name, description: o.description, bitmaps: o.bitmaps, 'allocation-depth': o.allocationDepth,
    } as Parameters<BlockExports['add']>[1]) as NbdExport;
  }

  remove(id: string, mode: CloseMode = 'safe'): Promise<void> { return this.exports.del(id, mode); }
  get(id: string): NbdExport | undefined { return this.exports.get(id) as NbdExport | undefined; }
  on(event: 'deleted', listener: (id: string) => void): this { this.exports.on(event, listener); return this; }
  byName(name: string): NbdExport | undefined { return this.nbd.byName(name); }
  list(): NbdExport[] { return this.nbd.list(); }
}
