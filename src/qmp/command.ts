/**
 * The shape of the command table. Each src/qmp/commands/<area>.ts exports a
 * list of these; src/qmp/commands/index.ts collects them. One entry drives
 * argument validation, query-commands, query-qmp-schema and help text.
 */
import type { Logger } from 'pino';
import type { BlockGraph } from '../blockdev/graph.ts';
import type { JobManager } from '../blockdev/jobs/manager.ts';
import type { JobTxn } from '../blockdev/jobs/txn.ts';
import type { BlockExports } from '../export/registry.ts';
import type { NbdExportList } from '../nbd/exports.ts';
import type { NbdServer } from '../nbd/server.ts';
import type { ObjectType, TypeRef } from '../qapi/types.ts';
import type { QmpEventBus } from './events.ts';
import type { ObjectRegistry } from '../objects/registry.ts';
import type { ChardevRegistry } from './chardevs/registry.ts';

/** What commands need from the daemon (src/daemon/daemon.ts's Daemon is one). */
export interface QmpHost {
  readonly graph: BlockGraph;
  readonly jobs: JobManager;
  /** Every export, of every type (block-export-add/del, query-block-exports). */
  readonly exports: BlockExports;
  /** The NBD exports, which the NBD servers serve. */
  readonly nbdExports: NbdExportList;
  /** Running NBD servers (--nbd-server and nbd-server-start); nbd-server-stop empties it. */
  readonly nbdServers: NbdServer[];
  readonly objects: ObjectRegistry;
  /** Every chardev (the children of /chardevs): the monitors', the other --chardev ones, chardev-add's. */
  chardevs(): ChardevRegistry;
  readonly events: QmpEventBus;
  readonly log: Logger;
  /**
   * Runs around every command, in the dispatcher's one-at-a-time section:
   * the iothreads take their exports back to the main loop before a command
   * that may change the graph, and serve them again after it.
   */
  readonly commandGate?: CommandGate;
  /** QMP quit: a graceful shutdown, as on SIGTERM; quit replies once the returned promise settles. */
  requestQuit(): Promise<void> | void;
}

export interface CommandGate {
  before(command: string): Promise<void>;
  after(command: string): void;
}

/** Per-client protocol state. */
export interface SessionState {
  negotiated: boolean;
  /** Out-of-band execution was enabled by qmp_capabilities. */
  oob: boolean;
}

export interface CommandContext {
  readonly graph: BlockGraph;
  readonly jobs: JobManager;
  readonly host: QmpHost;
  readonly session: SessionState;
  /** The command table, for the introspection commands. */
  readonly table: CommandTable;
}

/**
 * What a transaction action's prepare leaves behind (QEMU's BlkActionOps):
 * after every action prepared, each gets commit (in order) or, if a later
 * one failed, abort (in reverse order); then clean. None of them may fail.
 * A prepare that fails undoes its own partial work before it throws.
 */
export interface PreparedAction {
  commit?(): void | Promise<void>;
  abort?(): void | Promise<void>;
  clean?(): void | Promise<void>;
}

export type CompletionMode = 'individual' | 'grouped';

export interface ActionContext extends CommandContext {
  /** The transaction's completion-mode ('individual' for a command run on its own). */
  readonly completionMode: CompletionMode;
  /** A grouped transaction's job transaction, which the jobs its actions create join. */
  readonly jobTxn?: JobTxn;
}

export interface CommandDef {
  name: string;
  /** Argument type (an object type, or a flat union for "boxed" commands). A function when it depends on the graph. */
  args?: ObjectType | ((ctx: { graph: BlockGraph }) => ObjectType);
  /** Return type for introspection; absent: the empty object. */
  returns?: TypeRef;
  doc: string;
  /** QAPI features shown by query-qmp-schema ('deprecated', 'unstable'). */
  features?: string[];
  /** Usable before qmp_capabilities (only qmp_capabilities itself in QEMU). */
  allowedBeforeNegotiation?: boolean;
  /** May be run with exec-oob (none of blockd's commands are). */
  allowOob?: boolean;
  /** Gets the validated arguments; what it returns (undefined: {}) becomes "return". */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  handler(args: any, ctx: CommandContext): unknown;
  /**
   * The command as a `transaction` action: its prepare step, taking the
   * same (validated) arguments. Such a command's handler is runAlone(action).
   */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  action?(args: any, ctx: ActionContext): Promise<PreparedAction>;
}

/** A command that is also a transaction action: run alone, it is a transaction of one (as QEMU's blockdev_do_action). */
export function actionCommand<A>(def: Omit<CommandDef, 'handler' | 'action'> & { action(args: A, ctx: ActionContext): Promise<PreparedAction> }): CommandDef {
  return { ...def, handler: (args: A, ctx: CommandContext) => runAlone(def.action, args, ctx) };
}

async function runAlone<A>(prepare: (args: A, ctx: ActionContext) => Promise<PreparedAction>, args: A, ctx: CommandContext): Promise<void> {
  const done = await prepare(args, { ...ctx, completionMode: 'individual' });
  try {
    await done.commit?.();
  } finally {
    await done.clean?.();
  }
}

export interface EventDef {
  name: string;
  data?: ObjectType;
  doc: string;
}

export interface CommandTable {
  readonly commands: readonly CommandDef[];
  readonly events: readonly EventDef[];
  get(name: string): CommandDef | undefined;
}

export function makeTable(commands: readonly CommandDef[], events: readonly EventDef[]): CommandTable {
  const byName = new Map<string, CommandDef>();
  for (const c of commands) {
    if (byName.has(c.name)) throw new Error(`assertion failed: QMP command '${c.name}' is defined twice`);
    byName.set(c.name, c);
  }
  return { commands, events, get: (name) => byName.get(name) };
}

/** The argument type of a command (the empty object when it takes none). */
export function argsType(def: CommandDef, graph: BlockGraph): ObjectType {
  if (!def.args) return EMPTY;
  return typeof def.args === 'function' ? def.args({ graph }) : def.args;
}

export const EMPTY: ObjectType = { kind: 'object', name: 'q_empty', members: [] };
