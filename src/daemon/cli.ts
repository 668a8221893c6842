/**
 * The command line, as qemu-storage-daemon has it, plus blockd's own
 * --config and --log-level. yargs collects repeated options into lists; the
 * daemon then starts them in dependency order (objects, blockdevs, chardevs,
 * monitors, NBD server, exports), so unlike qsd an --export may come before
 * the --blockdev it names.
 */
import yargs from 'yargs';
import { DEFAULT_LOG_LEVEL } from './logger.ts';

/** One startup item: the option it came from (for error messages) and its text or JSON value. */
export interface Item { option: string; value: string | Record<string, unknown> }

export interface StartupConfig {
  objects: Item[];
  blockdevs: Item[];
  chardevs: Item[];
  monitors: Item[];
  nbdServers: Item[];
  exports: Item[];
  /** --metrics: the OpenMetrics/Prometheus endpoint's address (beyond qsd). */
  metrics?: Item;
  /** QMP commands run once everything above is up (config files only). */
  commands: Record<string, unknown>[];
  pidfile?: string;
  daemonize: boolean;
  logLevel: string;
}

export const USAGE = `Usage: blockd [options]
blockd: a qemu-storage-daemon compatible block storage daemon

  -h, --help                display this help and exit
  -V, --version             output version information and exit
  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]
             [,cache.direct=on|off][,cache.no-flush=on|off]
             [,read-only=on|off][,auto-read-only=on|off]
             [,force-share=on|off][,detect-zeroes=on|off|unmap]
             [,driver specific parameters...]
                            configure a block backend (also JSON: --blockdev '{"driver":...}')
  --chardev <options>       configure a character device backend
                            (QMP monitors: socket,id=ID,path=P,server=on,wait=off
                             or socket,id=ID,host=H,port=N,server=on,wait=off)
  --daemonize               daemonize the process, and have the parent exit
                            once startup is complete
  --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]
           [,writable=on|off][,bitmap=<name>][,description=<text>]
           [,allocation-depth=on|off]
                            export the specified block node over NBD
                            (requires --nbd-server)
  --monitor [chardev=]name[,mode=control][,pretty[=on|off]]
                            configure a QMP monitor
  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>
               [,tls-creds=<id>][,tls-authz=<id>][,max-connections=<n>]
               [,handshake-max-seconds=<n>]
  --nbd-server addr.type=unix,addr.path=<path>
               [,tls-creds=<id>][,tls-authz=<id>][,max-connections=<n>]
                            start an NBD server for exporting block nodes
                            (may be given several times: one listener each)
  --object help             list object types that can be added
  --object <type>,help      list properties for the given object type
  --object <type>[,<property>=<value>...]
                            create a new object of type <type>
  --pidfile <path>          write process ID to a file after startup
  --config <file>           read blockdevs, objects, chardevs, monitors, the NBD
                            server, exports and start-up QMP commands from a JSON file
  --log-level <level>       fatal, error, warn (default), info, debug, trace, silent
  --metrics addr.type=inet,addr.host=<host>,addr.port=<port>
  --metrics addr.type=unix,addr.path=<path>
                            serve GET /metrics (Prometheus text format): nodes,
                            exports, NBD connections, jobs, throttle queues, process

Without any option, blockd serves its embedded default: a qcow2 disk under
./var exported as 'disk0' on 127.0.0.1:10809 and ./var/nbd.sock.
`;

const LIST_OPTIONS = ['blockdev', 'chardev', 'export', 'monitor', 'nbd-server', 'object'] as const;

export class CliError extends Error {}

export type ParsedCli =
  | { kind: 'help' }
  | { kind: 'version' }
  | { kind: 'default'; logLevel: string }
  | { kind: 'run'; config: StartupConfig; configFile?: string };

/** Parses argv (without node and script). Throws CliError with a one-line message. */
export function parseCli(argv: string[]): ParsedCli {
  let failure: string | undefined;
  const y = yargs(argv)
    .help(false)
    .version(false)
    .strict()
    .parserConfiguration({ 'camel-case-expansion': false, 'dot-notation': false, 'duplicate-arguments-array': true, 'short-option-groups': false, 'boolean-negation': false })
    .option('h', { alias: 'help', type: 'boolean' })
    .option('V', { alias: 'version', type: 'boolean' })
    .option('T', { alias: 'trace', type: 'string', array: true })
    .option('daemonize', { type: 'boolean' })
    .option('pidfile', { type: 'string' })
    .option('config', { type: 'string' })
    .option('log-level', { type: 'string' })
    .option('metrics', { type: 'string', requiresArg: true })
    .fail((msg) => { failure = msg; });
  for (const o of LIST_OPTIONS) y.option(o, { type: 'string', array: true, requiresArg: true });
  const args = y.parseSync() as Record<string, unknown>;
  if (failure) throw new CliError(translateYargsError(failure, argv));
  if (args.h) return { kind: 'help' };
  if (args.V) return { kind: 'version' };
  const positional = (args._ as unknown[]) ?? [];
  if (positional.length > 0) throw new CliError(`Unexpected argument: ${String(positional[0])}`);
  // Quiet by default, as qsd: only warnings and errors reach stderr.
  const logLevel = single(args['log-level'], 'log-level') ?? DEFAULT_LOG_LEVEL;
  if (args.T) throw new CliError('-T/--trace: tracing is not supported by blockd; use --log-level=trace');
  const items = (o: string): Item[] => ((args[o] as string[] | undefined) ?? []).map((value) => ({ option: o, value }));
  const config: StartupConfig = {
    objects: items('object'), blockdevs: items('blockdev'), chardevs: items('chardev'), monitors: items('monitor'),
    nbdServers: items('nbd-server'), exports: items('export'), commands: [],
    pidfile: single(args.pidfile, 'pidfile'), daemonize: args.daemonize === true, logLevel,
  };
  const metrics = single(args.metrics, 'metrics');
  if (metrics !== undefined) config.metrics = { option: 'metrics', value: metrics };
  const configFile = single(args.config, 'config');
  // Nothing to serve was named (at most a log level): the embedded default.
  const empty = !configFile && !config.pidfile && !config.daemonize && !config.metrics &&
    [config.objects, config.blockdevs, config.chardevs, config.monitors, config.nbdServers, config.exports].every((l) => l.length === 0);
  if (empty) return { kind: 'default', logLevel };
  return { kind: 'run', config, configFile };
}

function single(v: unknown, name: string): string | undefined {
  if (Array.isArray(v)) {
    if (v.length > 1) throw new CliError(`--${name} may be given only once`);
    return v[0] as string | undefined;
  }
  return v as string | undefined;
}

function translateYargsError(msg: string, argv: string[]): string {
  const unknown = /Unknown arguments?: (.*)/.exec(msg);
  if (unknown) {
    const name = unknown[1].split(',')[0].trim();
    const raw = argv.find((a) => a.replace(/^-+/, '').split('=')[0] === name) ?? `--${name}`;
    return `unrecognized option '${raw.split('=')[0]}'`;
  }
  const missing = /Not enough arguments following: (.*)/.exec(msg);
  if (missing) return `option '--${missing[1]}' requires an argument`;
  return msg;
}
