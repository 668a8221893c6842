/**
 * QMP's output side: JSON exactly as QEMU writes it.
 *
 * QEMU's dictionaries are hash tables (512 buckets, the tdb hash), and they are
 * written in bucket order, the most recently inserted key first within a
 * bucket. So `{"return": ..., "id": ...}` but `{"id": ..., "error": ...}`.
 * Writing our objects in that order makes blockd's output byte-identical to
 * qsd's, which keeps differential tests simple and clients that (wrongly)
 * depend on key order happy.
 *
 * Other details: ", " and ": " separators; pretty mode indents by four
 * spaces and puts even an empty object's closing brace on its own line;
 * strings escape control characters and everything outside printable ASCII
 * as a backslash-u escape with four upper-case hex digits (UTF-16 pairs); doubles print as C's "%.17g".
 */
import { JsonNumber } from '../qapi/keyval.ts';

export { qdictBucket, qdictOrder } from '../qapi/qdict-order.ts';
import { qdictOrder } from '../qapi/qdict-order.ts';

/** C's printf("%.17g"), as QEMU prints a double. */
export function formatDouble(v: number): string {
  if (Number.isNaN(v)) return 'nan';
  if (!Number.isFinite(v)) return v < 0 ? '-inf' : 'inf';
  if (v === 0) return Object.is(v, -0) ? '-0' : '0';
  const [mant, expText] = v.toExponential(16).split('e') as [string, string];
  const exp = Number(expText);
  const strip = (s: string) => (s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s);
  if (exp < -4 || exp >= 17) {
    return `${strip(mant)}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  return strip(v.toFixed(Math.max(0, 16 - exp)));
}

function quote(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    switch (c) {
      case 0x22: out += '\\"'; break;
      case 0x5c: out += '\\\\'; break;
      case 0x08: out += '\\b'; break;
      case 0x0c: out += '\\f'; break;
      case 0x0a: out += '\\n'; break;
      case 0x0d: out += '\\r'; break;
      case 0x09: out += '\\t'; break;
      default:
        if (c >= 0x20 && c < 0x7f) out += s[i];
        else out += `\\u${c.toString(16).toUpperCase().padStart(4, '0')}`;
    }
  }
  return `${out}"`;
}

function scalar(v: unknown): string | undefined {
  if (v === null) return 'null';
  switch (typeof v) {
    case 'boolean': return v ? 'true' : 'false';
    case 'string': return quote(v);
    case 'bigint': return v.toString();
    case 'number':
      if (Number.isInteger(v) && Math.abs(v) <= Number.MAX_SAFE_INTEGER) return Object.is(v, -0) ? '0' : String(v);
      return formatDouble(v);
  }
  if (v instanceof JsonNumber) return v.kind === 'double' ? formatDouble(v.value) : (v.big ?? BigInt(v.value)).toString();
  return undefined;
}

/** Serialises a value as QEMU does (without the trailing newline). Undefined members are left out. */
export function toQmpJson(value: unknown, pretty = false): string {
  const parts: string[] = [];
  write(value, 0);
  return parts.join('');

  function newline(depth: number): void {
    if (pretty) parts.push(`\n${'    '.repeat(depth)}`);
  }

  function write(v: unknown, depth: number): void {
    const s = scalar(v);
    if (s !== undefined) { parts.push(s); return; }
    if (Array.isArray(v)) {
      parts.push('[');
      v.forEach((x, i) => {
        if (i > 0) parts.push(pretty ? ',' : ', ');
        newline(depth + 1);
        write(x === undefined ? null : x, depth + 1);
      });
      newline(depth);
      parts.push(']');
      return;
    }
    if (typeof v === 'object') {
      const o = v as Record<string, unknown>;
      const keys = qdictOrder(Object.keys(o).filter((k) => o[k] !== undefined));
      parts.push('{');
      keys.forEach((k, i) => {
        if (i > 0) parts.push(pretty ? ',' : ', ');
        newline(depth + 1);
        parts.push(quote(k), ': ');
        write(o[k], depth + 1);
      });
      newline(depth);
      parts.push('}');
      return;
    }
    throw new Error(`assertion failed: cannot serialise a ${typeof v} as QMP JSON`);
  }
}
