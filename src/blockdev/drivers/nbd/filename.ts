/**
 * An NBD filename as QEMU's nbd_parse_filename reads it (for drive-mirror
 * and drive-backup targets given by name): nbd[+tcp]://host[:port]/export,
 * nbd+unix:///export?socket=path, and the legacy nbd:host:port and
 * nbd:unix:path, each with an optional :exportname=NAME. The result is the
 * node's options (server, export).
 */
import { BlockError } from '../../../util/errors.ts';

const DEFAULT_PORT = '10809';
const EXPORT_NAME = ':exportname=';

function invalidUrl(): never {
  throw new BlockError('EINVAL', 'No valid URL specified');
}

function parseUri(filename: string): Record<string, unknown> {
  let u: URL;
  try {
    u = new URL(filename);
  } catch {
    invalidUrl();
  }
  const scheme = u.protocol.replace(/:$/, '');
  if (scheme !== 'nbd' && scheme !== 'nbd+tcp' && scheme !== 'nbd+unix') invalidUrl();
  const out: Record<string, unknown> = {};
  const path = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (path) out.export = path;
  const params = [...u.searchParams];
  const unix = scheme === 'nbd+unix';
  if (params.length > 1 || (unix && params.length === 0) || (!unix && params.length > 0)) invalidUrl();
  if (unix) {
    if (u.host !== '' || params[0]![0] !== 'socket') invalidUrl();
    out.server = { type: 'unix', path: params[0]![1] };
  } else {
    if (!u.hostname) invalidUrl();
    out.server = { type: 'inet', host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port: u.port || DEFAULT_PORT };
  }
  return out;
}

export function parseNbdFilename(filename: string): Record<string, unknown> {
  if (filename.includes('://')) return parseUri(filename);
  let file = filename;
  const out: Record<string, unknown> = {};
  const at = file.indexOf(EXPORT_NAME);
  if (at >= 0) {
    if (at + EXPORT_NAME.length === file.length) return out;
    out.export = file.slice(at + EXPORT_NAME.length);
    file = file.slice(0, at);
  }
  if (!file.startsWith('nbd:')) throw new BlockError('EINVAL', "File name string for NBD must start with 'nbd:'");
  const spec = file.slice(4);
  if (!spec) return out;
  if (spec.startsWith('unix:')) out.server = { type: 'unix', path: spec.slice(5) };
  else {
    const colon = spec.lastIndexOf(':');
    if (colon < 0) throw new BlockError('EINVAL', `error parsing address '${spec}'`);
    out.server = { type: 'inet', host: spec.slice(0, colon).replace(/^\[(.*)\]$/, '$1'), port: spec.slice(colon + 1) };
  }
  return out;
}
