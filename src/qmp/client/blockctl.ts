/**
 * blockctl: QMP for people. Runs one command against a blockd (or qsd)
 * monitor socket, with key=value or JSON arguments checked against the same
 * command table the daemon uses; shows query results as tables (--json for
 * scripts), streams events, and watches jobs with progress bars.
 *
 *   blockctl -s ./var/qmp.sock query-named-block-nodes
 *   blockctl -s SOCK blockdev-add driver=file node-name=f1 filename=x.img
 *   blockctl -s SOCK blockdev-create job-id=c0 options.driver=file options.filename=x.img options.size=1073741824 --watch
 *   blockctl -s SOCK events
 *   blockctl -s SOCK stats [--json]     (query-blockstats of every node)
 *   blockctl -s SOCK top [--metrics M]  (a live view; q quits)
 *   blockctl help [COMMAND]
 */
import yargs from 'yargs';
import { BlockGraph } from '../../blockdev/graph.ts';
import { registerDrivers } from '../../blockdev/drivers/index.ts';
import { commandTable } from '../commands/index.ts';
import { FuseExportDriver } from '../../fuse/export.ts';
import { ExportDriverTable } from '../../export/drivers.ts';
import { NbdExportDriver } from '../../nbd/exports.ts';
import { argsType } from '../command.ts';
import { commandHelp, commandList } from '../help.ts';
import { parseKeyval } from '../../qapi/keyval.ts';
import { fromJson, fromKeyval } from '../../qapi/visit.ts';
import { QmpClient, QmpCommandError, type QmpEvent } from './qmp-client.ts';
import { formatReturn, formatStats, progress } from './tables.ts';
import { runTop } from './top.ts';

const USAGE = `Usage: blockctl [-s SOCKET] [--json] [--watch] COMMAND [key=value ...|JSON]
       blockctl [-s SOCKET] [--json] events
       blockctl [-s SOCKET] [--json] stats
       blockctl [-s SOCKET] [--metrics M] top
       blockctl [-s SOCKET] --watch
       blockctl help [COMMAND]

  COMMAND       a QMP command (blockctl help lists them), its arguments as key=value words or one JSON object
  events        stream QMP events until the daemon closes the connection
  stats         query-blockstats of every node: a table, or JSON with --json
  top           a live view of exports, nodes (IOPS, MiB/s, latency p50/p99) and jobs, every second; q quits
  help          this text and the command list; help COMMAND: its arguments

  -s, --socket  QMP monitor: a Unix socket path or host:port (default $BLOCKD_QMP or ./var/qmp.sock)
  --json        print the raw QMP return value (or events) as JSON
  --watch       show running jobs with progress bars until they finish
  --metrics     top: the daemon's --metrics endpoint (a Unix socket path or host:port), for clients per export
  -h, --help    this text`;

const DEFAULT_SOCKET = process.env.BLOCKD_QMP ?? './var/qmp.sock';

/** The daemon's command table, for checking arguments: its export types as the daemon composes them (src/daemon/daemon.ts). */
const daemonTable = () => commandTable(new ExportDriverTable([new NbdExportDriver(), new FuseExportDriver()]));

class UsageError extends Error {}

/** Builds the arguments object from `key=value ...` words or one JSON object, validated by the command's schema. */
export function buildArguments(command: string, words: string[]): Record<string, unknown> | undefined {
  const table = daemonTable();
  const def = table.get(command);
  if (!def) throw new UsageError(`unknown command '${command}' (see: blockctl help)`);
  if (words.length === 0) return undefined;
  const graph = new BlockGraph();
  registerDrivers(graph);
  const type = argsType(def, graph);
  if (words.length === 1 && words[0].trim().startsWith('{')) {
    const value = JSON.parse(words[0]) as Record<string, unknown>;
    fromJson(type, value); // validate only: the daemon gets the arguments as written
    return value;
  }
  for (const w of words) if (!w.includes('=')) throw new UsageError(`argument '${w}' is not key=value`);
  // Each word is one key=value pair, so commas inside values need no escaping.
  const text = words.map((w) => w.replaceAll(',', ',,')).join(',');
  return fromKeyval(type, parseKeyval(text)) as Record<string, unknown>;
}

async function watchJobs(client: QmpClient, out: NodeJS.WriteStream): Promise<boolean> {
  let lines = 0;
  let failed = false;
  for (;;) {
    const jobs = await client.execute<{ id: string; type: string; status: string; 'current-progress': number; 'total-progress': number; error?: string }[]>('query-jobs');
    if (out.isTTY && lines > 0) out.write(`\x1b[${lines}A\x1b[J`);
    const text = jobs.map((j) => `${j.id.padEnd(16)} ${j.type.padEnd(16)} ${j.status.padEnd(10)} ${progress(j['current-progress'], j['total-progress'])}${j.error ? `  error: ${j.error}` : ''}`);
    if (out.isTTY || jobs.every((j) => j.status === 'concluded' || j.status === 'null')) {
      out.write(text.length ? `${text.join('\n')}\n` : '');
      lines = text.length;
    }
    if (jobs.some((j) => j.error)) failed = true;
    const active = jobs.filter((j) => !['concluded', 'null', 'pending'].includes(j.status));
    if (active.length === 0) {
      if (!out.isTTY) out.write(text.length ? '' : 'no jobs\n');
      return !failed;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

function formatEvent(e: QmpEvent): string {
  const t = new Date(e.timestamp.seconds * 1000 + Math.floor(e.timestamp.microseconds / 1000)).toISOString();
  return `${t} ${e.event}${e.data ? ` ${JSON.stringify(e.data)}` : ''}`;
}

export async function blockctl(argv: string[]): Promise<number> {
  const args = await yargs(argv)
    .scriptName('blockctl')
    .usage('$0 [-s SOCKET] [--json] COMMAND [key=value ...|JSON]\n$0 [-s SOCKET] events\n$0 help [COMMAND]')
    .option('s', { alias: 'socket', type: 'string', default: DEFAULT_SOCKET, describe: 'QMP monitor: a Unix socket path or host:port' })
    .option('json', { type: 'boolean', default: false, describe: 'print the raw QMP return value as JSON' })
    .option('watch', { type: 'boolean', default: false, describe: 'after the command, show running jobs with progress until they finish' })
    .option('metrics', { type: 'string', describe: 'top: the /metrics endpoint, for clients per export' })
    .parserConfiguration({ 'unknown-options-as-args': true, 'dot-notation': false, 'camel-case-expansion': false })
    .option('h', { alias: 'help', type: 'boolean', describe: 'show this help' })
    .help(false).version(false).strict(false)
    .parseAsync();
  const words = (args._ as (string | number)[]).map(String);
  const out = process.stdout;
  const [command, ...rest] = words;
  // -h/--help alone is the usage; after a command it is that command's help.
  if (args.h && (!command || command === 'help')) { out.write(`${USAGE}\n`); return 0; }
  if (args.h && command !== 'events' && command !== 'stats' && command !== 'top') return blockctl(['help', command]);
  if (args.h) { out.write(`${USAGE}\n`); return 0; }
  if (!command && !args.watch) throw new UsageError('no command given (see: blockctl help)');
  if (command === 'help') {
    const table = daemonTable();
    if (!rest[0]) { out.write(`${USAGE}\n\nQMP commands:\n${commandList(table)}\n`); return 0; }
    const graph = new BlockGraph();
    registerDrivers(graph);
    const text = commandHelp(table, graph, rest[0]);
    if (!text) throw new UsageError(`unknown command '${rest[0]}'`);
    out.write(`${text}\n`);
    return 0;
  }
  const local = command === 'events' || command === 'stats' || command === 'top';
  if (local && rest.length > 0) throw new UsageError(`${command} takes no arguments (got '${rest[0]}')`);
  const cmdArgs = command && !local ? buildArguments(command, rest) : undefined;
  const client = await QmpClient.connect(String(args.s)).catch((e: Error) => {
    throw new UsageError(`cannot connect to ${args.s}: ${e.message}`);
  });
  try {
    if (command === 'events') {
      client.on('event', (e: QmpEvent) => out.write(`${args.json ? JSON.stringify(e) : formatEvent(e)}\n`));
      await new Promise((r) => client.once('close', r));
      return 0;
    }
    if (command === 'stats') {
      const ret = await client.execute('query-blockstats', { 'query-nodes': true });
      out.write(`${args.json ? JSON.stringify(ret) : formatStats(ret)}\n`);
      return 0;
    }
    if (command === 'top') {
      await runTop(client, { title: `blockctl top: ${args.s}`, metrics: args.metrics });
      return 0;
    }
    if (command) {
      const ret = await client.execute(command, cmdArgs);
      const text = args.json ? JSON.stringify(ret) : formatReturn(command, ret);
      if (text) out.write(`${text}\n`);
    }
    if (args.watch) return (await watchJobs(client, out)) ? 0 : 1;
    return 0;
  } finally {
    client.close();
  }
}

export async function main(argv: string[]): Promise<void> {
  try {
    process.exitCode = await blockctl(argv);
  } catch (e) {
    if (e instanceof QmpCommandError) process.stderr.write(`blockctl: ${e.desc} (${e.errorClass})\n`);
    else process.stderr.write(`blockctl: ${(e as Error).message}\n`);
    process.exitCode = e instanceof UsageError ? 2 : 1;
  }
}
