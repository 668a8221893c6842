/**
 * --config FILE: the same objects the command line takes, as JSON. Each list
 * entry is either a key=value string (exactly as on the command line) or the
 * JSON object form, so a config file and a command line are interchangeable:
 *
 *   { "blockdev": [ "driver=file,node-name=f0,filename=disk.img", {"driver":"raw","node-name":"d0","file":"f0"} ],
 *     "nbd-server": { "addr": { "type": "unix", "path": "/run/blockd/nbd.sock" } },
 *     "export": [ { "type": "nbd", "id": "e0", "node-name": "d0", "writable": true } ],
 *     "qmp": [ { "execute": "block-dirty-bitmap-add", "arguments": { ... } } ] }
 */
import { readFileSync } from 'node:fs';
import { CliError, type Item, type StartupConfig } from './cli.ts';

const LISTS: Record<string, keyof StartupConfig> = {
  object: 'objects', blockdev: 'blockdevs', chardev: 'chardevs', monitor: 'monitors', 'nbd-server': 'nbdServers', export: 'exports',
};
const SCALARS = new Set(['pidfile', 'daemonize', 'log-level', 'qmp', 'metrics']);

/** Reads FILE and appends its items to `config` (config-file items come before command-line ones). */
export function mergeConfigFile(file: string, config: StartupConfig): StartupConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new CliError(`--config ${file}: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new CliError(`--config ${file}: invalid JSON: ${(e as Error).message}`);
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new CliError(`--config ${file}: the top level must be a JSON object`);
  const out: StartupConfig = { ...config };
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    const field = LISTS[key];
    if (field) {
      const list = Array.isArray(value) ? value : [value];
      const items: Item[] = list.map((v) => {
        if (typeof v !== 'string' && (typeof v !== 'object' || v === null || Array.isArray(v))) {
          throw new CliError(`--config ${file}: entries of '${key}' must be key=value strings or JSON objects`);
        }
        return { option: key, value: v as Item['value'] };
      });
      (out[field] as Item[]) = [...items, ...(config[field] as Item[])];
    } else if (SCALARS.has(key)) {
      if (key === 'pidfile') out.pidfile = config.pidfile ?? expectString(file, key, value);
      if (key === 'daemonize') out.daemonize = config.daemonize || value === true;
      if (key === 'log-level') out.logLevel = expectString(file, key, value);
      if (key === 'metrics') {
        if (typeof value !== 'string' && (!value || typeof value !== 'object' || Array.isArray(value))) {
          throw new CliError(`--config ${file}: 'metrics' must be a key=value string or a JSON object`);
        }
        out.metrics = config.metrics ?? { option: 'metrics', value: value as Item['value'] };
      }
      if (key === 'qmp') {
        if (!Array.isArray(value) || value.some((c) => !c || typeof c !== 'object' || Array.isArray(c))) {
          throw new CliError(`--config ${file}: 'qmp' must be a list of QMP command objects`);
        }
        out.commands = [...config.commands, ...(value as Record<string, unknown>[])];
      }
    } else {
      throw new CliError(`--config ${file}: unknown key '${key}'`);
    }
  }
  return out;
}

function expectString(file: string, key: string, v: unknown): string {
  if (typeof v !== 'string') throw new CliError(`--config ${file}: '${key}' must be a string`);
  return v;
}
