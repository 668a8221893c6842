/**
 * The export-driver table (QEMU's blk_exp_drivers[]): one entry per export
 * type. The generic layer knows the types only through it; the daemon
 * composes it (NBD first). A new export type is one more entry.
 */
import type { ObjectType } from '../qapi/types.ts';
import { blockExportInfoType, blockExportOptionsType, type BlockExportOptionsValue } from '../qapi/block-export.ts';
import type { BlockExport, ExportCommon } from './export.ts';

export interface ExportDriver<E extends BlockExport = BlockExport> {
  /** The BlockExportOptions discriminator value, e.g. 'nbd'. */
  readonly type: string;
  /** This type's variant of BlockExportOptions (the members after the common ones). */
  readonly options: ObjectType;
  /**
   * The type's own checks (qsd's messages, in qsd's order), then the export,
   * linked to `common.node`. Called after the generic checks; a refusal
   * leaves nothing behind. `options` is the whole validated value.
   */
  create(common: ExportCommon, options: BlockExportOptionsValue): E;
  /** Starts ending the export: drops its users; resolves once none is left (QEMU's request_shutdown). */
  requestShutdown(exp: E): Promise<void>;
  /** The export is gone: its edge is unlinked and its id free (QEMU's delete). */
  deleted?(exp: E): void;
}

export class ExportDriverTable {
  private readonly byType = new Map<string, ExportDriver>();
  private schema?: { options: ObjectType; info: ObjectType };

  /** Entries in the order the type enum lists them. */
  constructor(entries: readonly ExportDriver[]) {
    for (const e of entries) {
      if (this.byType.has(e.type)) throw new Error(`assertion failed: export type '${e.type}' is registered twice`);
      this.byType.set(e.type, e);
    }
  }

  get(type: string): ExportDriver | undefined { return this.byType.get(type); }

  /** The type names, in table order (BlockExportType). */
  types(): string[] { return [...this.byType.keys()]; }

  /** BlockExportOptions over this table's types (--export, block-export-add). */
  optionsType(): ObjectType { return this.schemas().options; }

  /** BlockExportInfo (query-block-exports). */
  infoType(): ObjectType { return this.schemas().info; }

  private schemas(): { options: ObjectType; info: ObjectType } {
    this.schema ??= {
      options: blockExportOptionsType(Object.fromEntries([...this.byType].map(([t, e]) => [t, e.options]))),
      info: blockExportInfoType(this.types()),
    };
    return this.schema;
  }
}
