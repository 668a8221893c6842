/**
 * The whole QMP command table: every area's list, in the order query-qmp-schema
 * shows them. To add an area: export a CommandDef[] (and EventDef[]) from
 * src/qmp/commands/<area>.ts and list it here.
 */
import { makeTable, type CommandDef, type CommandTable, type EventDef } from '../command.ts';
import { controlCommands } from './control.ts';
import { blockCommands } from './block.ts';
import { nbdCommands, nbdEvents } from './nbd.ts';
import { objectCommands } from './objects.ts';
import { jobCommands, jobEvents } from './jobs.ts';
import { mirrorBackupCommands } from './mirror-backup.ts';
import { bitmapCommands } from './bitmaps.ts';
import { snapshotInternalCommands } from './snapshots-internal.ts';
import { snapshotExternalCommands } from './snapshots-external.ts';
import { streamCommitCommands } from './stream-commit.ts';
import { transactionCommand } from './transaction.ts';

export const allCommands: CommandDef[] = [
  ...blockCommands,
  ...bitmapCommands,
  ...snapshotInternalCommands,
  ...jobCommands,
  ...mirrorBackupCommands,
  ...snapshotExternalCommands,
  ...streamCommitCommands,
  ...nbdCommands,
  ...controlCommands,
  ...objectCommands,
];
// Its actions are the commands above that have one.
allCommands.push(transactionCommand(allCommands));

export const allEvents: EventDef[] = [...jobEvents, ...nbdEvents];

export function commandTable(): CommandTable {
  return makeTable(allCommands, allEvents);
}
