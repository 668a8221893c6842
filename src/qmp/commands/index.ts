/**
 * The whole QMP command table: every area's list, in the order query-qmp-schema
 * shows them. To add an area: export a CommandDef[] (and EventDef[]) from
 * src/qmp/commands/<area>.ts and list it here.
 */
import type { ExportDriverTable } from '../../export/drivers.ts';
import { makeTable, type CommandTable, type EventDef } from '../command.ts';
import { controlCommands } from './control.ts';
import { blockCommands } from './block.ts';
import { nbdCommands } from './nbd.ts';
import { exportCommands, exportEvents } from './exports.ts';
import { objectCommands } from './objects.ts';
import { qomCommands } from './qom.ts';
import { jobCommands, jobEvents } from './jobs.ts';
import { mirrorBackupCommands } from './mirror-backup.ts';
import { bitmapCommands } from './bitmaps.ts';
import { snapshotInternalCommands } from './snapshots-internal.ts';
import { snapshotExternalCommands } from './snapshots-external.ts';
import { streamCommitCommands } from './stream-commit.ts';
import { transactionCommand } from './transaction.ts';
import { statsCommands, statsEvents } from './stats.ts';
import { backingFileCommands } from './backing-file.ts';
import { chardevCommands } from './chardev.ts';
import { unraisedEvents } from './unraised-events.ts';
import { quorumEvents } from './quorum-events.ts';
import { nodeContextCommands } from './node-context.ts';

export const allEvents: EventDef[] = [...jobEvents, ...exportEvents, ...statsEvents, ...quorumEvents, ...unraisedEvents];

/** The table for a daemon serving the export types in `exportDrivers` (block-export-add's types come from it). */
export function commandTable(exportDrivers: ExportDriverTable): CommandTable {
  const commands = [
    ...blockCommands,
    ...statsCommands,
    ...bitmapCommands,
    ...snapshotInternalCommands,
    ...jobCommands,
    ...mirrorBackupCommands,
    ...snapshotExternalCommands,
    ...streamCommitCommands,
    ...backingFileCommands,
    ...nodeContextCommands,
    ...nbdCommands,
    ...exportCommands(exportDrivers),
    ...controlCommands,
    ...objectCommands,
    ...qomCommands,
    ...chardevCommands,
  ];
  // Its actions are the commands above that have one.
  commands.push(transactionCommand(commands));
  return makeTable(commands, allEvents);
}
