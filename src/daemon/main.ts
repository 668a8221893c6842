/** blockd's entry point: parse the command line, start the daemon, wire signals. */
import { readFileSync } from 'node:fs';
import { parseCli, CliError, USAGE, type StartupConfig } from './cli.ts';
import { mergeConfigFile } from './config-file.ts';
import { embeddedDefault } from './embedded-default.ts';
import { Daemon, StartupError } from './daemon.ts';
import { createLogger, LOG_LEVELS } from './logger.ts';
import { writePidfile, removePidfile } from './pidfile.ts';
import { daemonizeParent, isDaemonChild, reportToParent } from './daemonize.ts';
import { takeInheritedSockets } from './socket-activation.ts';
import { sdNotify } from './sd-notify.ts';
import { objectHelp } from './object-help.ts';
import { loopPollingFromEnv, startLoopPolling, type LoopPolling } from './loop-polling.ts';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

function fail(line: string): never {
  if (isDaemonChild()) reportToParent(line);
  process.stderr.write(`${line}\n`);
  process.exit(1);
}

export async function main(argv: string[]): Promise<void> {
  let config: StartupConfig;
  let banner: string | undefined;
  let polling: LoopPolling;
  try {
    polling = loopPollingFromEnv(process.env);
    const cli = parseCli(argv);
    if (cli.kind === 'help') { process.stdout.write(USAGE); return; }
    if (cli.kind === 'version') {
      process.stdout.write(`blockd version ${pkg.version} (qemu-storage-daemon 7.2 compatible)\n`);
      return;
    }
    if (cli.kind === 'default') ({ config, banner } = await embeddedDefault(cli.logLevel));
    else config = cli.configFile ? mergeConfigFile(cli.configFile, cli.config) : cli.config;
    if (!(LOG_LEVELS as readonly string[]).includes(config.logLevel)) {
      throw new CliError(`--log-level: '${config.logLevel}' is not one of ${LOG_LEVELS.join(', ')}`);
    }
  } catch (e) {
    if (e instanceof CliError) fail(`blockd: ${e.message}`);
    throw e;
  }

  for (const item of config.objects) {
    const help = typeof item.value === 'string' ? objectHelp(item.value) : undefined;
    if (help) { process.stdout.write(help); return; }
  }
  if (config.daemonize && !isDaemonChild()) await daemonizeParent(argv);
  try {
    for (const s of takeInheritedSockets()) {
      const item = { option: s.role === 'nbd' ? 'nbd-server' : 'monitor', value: {} as Record<string, unknown> };
      if (s.role === 'nbd') item.value = { addr: { type: 'fd', str: String(s.fd) } };
      else item.value = { chardev: `fd:${s.fd}` };
      (s.role === 'nbd' ? config.nbdServers : config.monitors).push(item);
    }
  } catch (e) {
    fail(`blockd: ${(e as Error).message}`);
  }

  const log = createLogger(config.logLevel);
  startLoopPolling(polling);
  const daemon = new Daemon(log);
  // As qsd, the daemon runs until a signal or QMP quit even when nothing
  // listens (only --blockdev given): node would exit once its loop is empty.
  const keepAlive = setInterval(() => undefined, 2 ** 31 - 1);
  const stop = (signal: string) => {
    clearInterval(keepAlive);
    log.info({ signal }, 'shutting down');
    sdNotify('STOPPING=1');
    daemon.shutdown().then(
      () => {
        if (config.pidfile) removePidfile(config.pidfile);
        log.info('bye');
        process.exit(0);
      },
      (err) => { log.error({ err }, 'shutdown failed'); process.exit(1); },
    );
  };
  // As qsd (its signal handlers are set before its options are processed):
  // a SIGINT or SIGTERM during start-up is kept and acted on once the start
  // has finished, so what the start made (a FUSE mount) is taken down
  // rather than left behind by a process killed half-way.
  let signalled: string | undefined;
  let started = false;
  const onSignal = (signal: string) => {
    if (signalled) return;
    signalled = signal;
    if (started) stop(signal);
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));

  try {
    await daemon.start(config);
  } catch (e) {
    if (e instanceof StartupError) fail(e.line());
    fail(`blockd: ${(e as Error).message}`);
  }
  try {
    if (config.pidfile) writePidfile(config.pidfile);
  } catch (e) {
    await daemon.shutdown();
    fail(`blockd: ${(e as Error).message}`);
  }
  if (banner) process.stdout.write(banner);
  log.info({ version: pkg.version }, 'blockd started');
  if (isDaemonChild()) reportToParent('ready');
  sdNotify(`READY=1\nMAINPID=${process.pid}`);
  started = true;
  if (signalled) stop(signalled);
}
