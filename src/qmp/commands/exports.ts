/**
 * The generic export commands (qapi/block-export.json): block-export-add,
 * block-export-del, query-block-exports; event BLOCK_EXPORT_DELETED. Each is
 * a thin wrapper over src/export's registry, as in QEMU's export.c; the
 * types come from the daemon's export-driver table.
 *
 * block-export-del mode=safe refuses while clients are connected (qsd's
 * "export 'x' still in use"); mode=hard disconnects them. BLOCK_EXPORT_DELETED
 * follows once the export is gone: before the reply when nobody was
 * connected, after it otherwise, as in qsd.
 */
import type { ExportDriverTable } from '../../export/drivers.ts';
import { BlockExportRemoveMode, type BlockExportOptionsValue } from '../../qapi/block-export.ts';
import { arr, obj, opt, req } from '../../qapi/types.ts';
import type { CommandContext, CommandDef, EventDef } from '../command.ts';

export const exportEvents: EventDef[] = [
  { name: 'BLOCK_EXPORT_DELETED', data: obj('q_obj_BLOCK_EXPORT_DELETED-arg', [req('id', 'str', 'Block export id')]), doc: 'Emitted when a block export is removed and its id can be reused.' },
];

/** block-export-add and the legacy nbd-server-add: one path for every export. */
export function addExport(ctx: CommandContext, options: BlockExportOptionsValue): void {
  const exp = ctx.host.exports.add(ctx.graph, options);
  ctx.host.log.info({ id: exp.id, type: exp.type, node: exp.node.nodeName }, 'export added');
}

export function exportCommands(drivers: ExportDriverTable): CommandDef[] {
  return [
    {
      name: 'block-export-add',
      args: drivers.optionsType(),
      doc: `Creates a new block export (blockd's types: ${drivers.types().join(', ')}).`,
      handler: (o: BlockExportOptionsValue, ctx) => addExport(ctx, o),
    },
    {
      name: 'block-export-del',
      args: obj('q_obj_block-export-del-arg', [
        req('id', 'str', 'Block export id.'),
        opt('mode', BlockExportRemoveMode, 'Mode of command operation (default: safe)'),
      ]),
      doc: 'Request to remove a block export. safe: refused while clients are connected; hard: disconnects them. BLOCK_EXPORT_DELETED is emitted once the export is gone.',
      handler: (a: { id: string; mode?: 'safe' | 'hard' }, ctx) => ctx.host.exports.del(a.id, a.mode),
    },
    {
      name: 'query-block-exports',
      returns: arr(drivers.infoType()),
      doc: 'Lists the exports, newest first.',
      handler: (_a, ctx) => ctx.host.exports.query(),
    },
  ];
}
