/**
 * blkdebug's config file (`config=FILE`): QEMU's ini-like -readconfig syntax
 * (util/qemu-config.c), parsed as QEMU parses it, sscanf quirks included:
 *
 *     # a comment (in the first column only)
 *     [inject-error]
 *     event = "read_aio"
 *     errno = "5"
 *     [set-state "s1"]
 *     event = "flush_to_disk"
 *     new_state = "2"
 *
 * A section is `[group]` or `[group "id"]`; a line inside is `key = "value"`,
 * and a line that is not (even `key=value`) is the key made of its first word
 * with an empty value, so it fails later as an unknown parameter. Values are
 * strings typed by the group's option list (QemuOpts: numbers in C's bases,
 * booleans as on/off/yes/no/true/false/y/n), QEMU's texts for each failure.
 * The result is the sections in file order with typed values.
 */
export type OptType = 'string' | 'number' | 'bool';
export type GroupSchema = Record<string, Record<string, OptType>>;
export interface Section { group: string; values: Record<string, string | number | boolean> }

export class ConfigFileError extends Error {}

export function parseConfig(text: string, groups: GroupSchema): Section[] {
  const out: Section[] = [];
  const ids = new Map<string, Set<string>>();
  let current: { group: string; raw: [string, string][]; id?: string } | undefined;
  const finish = () => {
    if (!current) return;
    out.push(typed(current.group, current.raw, current.id, groups, ids));
  };
  // fgets() keeps the newline; a last line without one is still a line.
  const lines = text.split(/(?<=\n)/);
  for (const line of lines) {
    if (line === '' || line[0] === '\n' || line[0] === '#') continue;
    if (line[0] === '[') {
      const withId = /^\[(\S{1,63})\s*"([^"]{1,63})"/.exec(line);
      const plain = withId ? undefined : /^\[([^\]]{1,63})\]/.exec(line);
      if (withId || plain) {
        finish();
        current = withId ? { group: withId[1], raw: [], id: withId[2] } : { group: plain![1], raw: [] };
        continue;
      }
    }
    const token = /^\s*(\S+)/.exec(line);
    if (!token) throw new ConfigFileError('parse error');
    const arg = token[1].slice(0, 63);
    const rest = line.slice(token[0].length - token[1].length + arg.length);
    const value = /^\s*=\s*"([^"]{1,1023})/.exec(rest)?.[1] ?? '';
    if (!current) throw new ConfigFileError('no group defined');
    current.raw.push([arg, value]);
  }
  finish();
  return out;
}

function typed(group: string, raw: [string, string][], id: string | undefined, groups: GroupSchema, ids: Map<string, Set<string>>): Section {
  const schema = groups[group];
  if (!schema) throw new ConfigFileError(`There is no option group '${group}'`);
  const seen = ids.get(group) ?? new Set<string>();
  ids.set(group, seen);
  if (id !== undefined) {
    if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(id)) throw new ConfigFileError("Parameter 'id' expects an identifier");
    if (seen.has(id)) throw new ConfigFileError(`Duplicate ID '${id}' for ${group}`);
    seen.add(id);
  }
  const values: Section['values'] = {};
  for (const [k, v] of raw) {
    // A key given twice: QemuOpts keeps both and the getters read the last.
    const t = schema[k];
    if (!t) throw new ConfigFileError(`Invalid parameter '${k}'`);
    values[k] = t === 'string' ? v : t === 'bool' ? parseBool(k, v) : parseNumber(k, v);
  }
  return { group, values };
}

function parseBool(name: string, v: string): boolean {
  if (['on', 'yes', 'true', 'y'].includes(v)) return true;
  if (['off', 'no', 'false', 'n'].includes(v)) return false;
  throw new ConfigFileError(`Parameter '${name}' expects 'on' or 'off'`);
}

/** qemu_strtou64(value, NULL, 0): C's bases (0x hex, leading 0 octal), a minus wraps. */
function parseNumber(name: string, v: string): number {
  const m = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(v);
  if (!m) throw new ConfigFileError(`Parameter '${name}' expects a number`);
  const digits = m[2];
  const big = digits.length > 1 && digits[0] === '0' && /[xX]/.test(digits[1]) ? BigInt(digits)
    : digits.length > 1 && digits[0] === '0' ? BigInt('0o' + digits.slice(1)) : BigInt(digits);
  if (big >= 1n << 64n) throw new ConfigFileError(`Value '${v}' is too large for parameter '${name}'`);
  // As the uint64 read as int64 (C ints are cut further by the caller).
  return Number(BigInt.asIntN(64, m[1] === "-" ? -big : big));
}
