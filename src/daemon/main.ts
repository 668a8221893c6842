/** blockd's entry point: parse the command line, start the daemon, wire signals. */
import { readFileSync } from 'node:fs';
import { parseCli, CliError, USAGE, type StartupConfig } from './cli.ts';
import { mergeConfigFile } from './config-file.ts';
import { embeddedDefault } from './embedded-default.ts';
import { Daemon, StartupError } from './daemon.ts';
import { createLogger, LOG_LEVELS } from './logger.ts';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

function fail(line: string): never {
  process.stderr.write(`${line}\n`);
  process.exit(1);
}

export async function main(argv: string[]): Promise<void> {
  let config: StartupConfig;
  let banner: string | undefined;
  try {
    const cli = parseCli(argv);
    if (cli.kind === 'help') { process.stdout.write(USAGE); return; }
    if (cli.kind === 'version') {
      process.stdout.write(`blockd version ${pkg.version} (qemu-storage-daemon 7.2 compatible)\n`);
      return;
    }
    if (cli.kind === 'default') ({ config, banner } = embeddedDefault(cli.logLevel));
    else config = cli.configFile ? mergeConfigFile(cli.configFile, cli.config) : cli.config;
    if (!(LOG_LEVELS as readonly string[]).includes(config.logLevel)) {
      throw new CliError(`--log-level: '${config.logLevel}' is not one of ${LOG_LEVELS.join(', ')}`);
    }
  } catch (e) {
    if (e instanceof CliError) fail(`blockd: ${e.message}`);
    throw e;
  }

  const log = createLogger(config.logLevel);
  const daemon = new Daemon(log);
  try {
    await daemon.start(config);
  } catch (e) {
    if (e instanceof StartupError) fail(e.line());
    fail(`blockd: ${(e as Error).message}`);
  }
  if (banner) process.stdout.write(banner);
  log.info({ version: pkg.version }, 'blockd started');

  let signalled = false;
  const stop = (signal: string) => {
    if (signalled) return;
    signalled = true;
    log.info({ signal }, 'shutting down');
    daemon.shutdown().then(
      () => { log.info('bye'); process.exit(0); },
      (err) => { log.error({ err }, 'shutdown failed'); process.exit(1); },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}
