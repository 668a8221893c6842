/**
 * authz-listfile (QEMU's authz/listfile.c): an authz-list whose policy and
 * rules are a JSON object in `filename` (AuthZListProperties). With
 * `refresh` (default on, as QEMU built with inotify) the file is watched
 * and reloaded when it changes; a reload that fails denies everyone until
 * the file loads again, as in QEMU (the reason is kept for the refusal's
 * message).
 */
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { BlockError } from '../../util/errors.ts';
import { errorText } from '../../platform/native.ts';
import { obj, opt, req } from '../../qapi/types.ts';
import { fromJson } from '../../qapi/visit.ts';
import type { ObjectTypeDef } from '../object-type.ts';
import type { Authz } from './authz.ts';
import { AuthZListProperties, evaluate, listFromOptions, type RuleList } from './rules.ts';

const AuthZListFileProperties = obj('AuthZListFileProperties', [
  req('filename', 'str', 'File name to load the configuration from. The file must contain valid JSON for AuthZListProperties.'),
  opt('refresh', 'bool', 'If true, inotify is used to monitor the file, automatically reloading changes. If an error occurs during reloading, all authorizations will fail until the file is next successfully loaded. (default: true if the binary was built with CONFIG_INOTIFY1, false otherwise)'),
]);

interface ListFile extends Authz {
  filename: string;
  refresh: boolean;
  list?: RuleList;
  /** Why the last reload failed (then everyone is denied). */
  loadError?: string;
  watcher?: FSWatcher;
}

const fail = (text: string) => new BlockError('EINVAL', text);

export function loadListFile(filename: string): RuleList {
  let content: string;
  try {
    content = readFileSync(filename, 'utf8');
  } catch (e) {
    throw fail(`Unable to read '${filename}': Failed to open file \u201C${filename}\u201D: ${errorText(e)}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(content);
  } catch (e) {
    throw fail(`JSON parse error, ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw fail(`File '${filename}' must contain a JSON object`);
  return listFromOptions(fromJson(AuthZListProperties, value) as Record<string, unknown>);
}

export const authzListFileType: ObjectTypeDef<ListFile> = {
  qomType: 'authz-list-file',
  properties: AuthZListFileProperties,
  create(options) {
    const filename = options.filename as string;
    const a: ListFile = {
      filename,
      refresh: options.refresh !== false,
      list: loadListFile(filename),
      isAllowed: (id) => (a.list ? evaluate(a.list, id) : false),
    };
    if (!a.refresh) return a;
    const dir = dirname(filename);
    if (dir === '.') throw fail('Filename must be an absolute path');
    const file = basename(filename);
    if (file === '.' || file === '') throw fail('Path has no trailing filename component');
    const reload = () => {
      try {
        a.list = loadListFile(filename);
        a.loadError = undefined;
      } catch (e) {
        a.list = undefined;
        a.loadError = (e as Error).message;
      }
    };
    // The directory is watched (the file may be replaced by a rename, as editors save).
    a.watcher = watch(dir, { persistent: false }, (_event, name) => { if (name === file) reload(); });
    a.watcher.on('error', () => undefined);
    return a;
  },
  delete: (a) => a.watcher?.close(),
  getProperty(a, name) {
    if (name === 'filename') return { value: a.filename };
    if (name === 'refresh') return { value: a.refresh };
    return undefined;
  },
};
