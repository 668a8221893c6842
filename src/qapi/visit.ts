/**
 * The input visitor: checks a value against a schema type (src/qmp/types.ts)
 * and returns a clean JS value, failing with QEMU's texts (qapi's
 * qobject-input-visitor) as qemu-storage-daemon 7.2 prints them.
 *
 * Two modes, as in QEMU:
 * - fromJson: QMP / JSON input, JSON types must match exactly.
 * - fromKeyval: the output of parseKeyval, where every scalar is a string
 *   converted per schema (integers in C syntax, sizes with suffixes, on/off).
 *
 * The visit order is QEMU's, which decides the message when several things
 * are wrong: members in declaration order (base members, then the variant's),
 * each nested object checked for unexpected members as soon as it is done,
 * the enclosing object's unexpected members last.
 *
 * Messages name members by their full dotted path ('addr.port',
 * 'file.file.filename'), except where QEMU uses the bare member name: enum
 * values, alternates, and the range checks of sized integers.
 */
import { BlockError } from '../util/errors.ts';
import { JsonNumber, parseOptionText } from './keyval.ts';
import type { AlternateType, BuiltinName, ObjectType, TypeDef, TypeRef } from './types.ts';

export interface VisitOptions {
  /** Named types for 'ref' types that are neither self-resolving nor enclosing. */
  types?: Record<string, TypeDef>;
}

/** Validates a QMP/JSON value. */
export function fromJson(type: TypeRef, value: unknown, options?: VisitOptions): unknown {
  return new InputVisitor(value, false, options?.types).visit(type, null);
}

/** Validates the result of parseKeyval, converting its strings per schema. */
export function fromKeyval(type: TypeRef, value: unknown, options?: VisitOptions): unknown {
  return new InputVisitor(value, true, options?.types).visit(type, null);
}

/**
 * Parses and validates a command-line option's text the way qsd does:
 * QEMU JSON if it starts with '{', else key=value (with an implied first key).
 */
export function fromOptionText(type: TypeRef, text: string, impliedKey?: string, options?: VisitOptions): unknown {
  const parsed = parseOptionText(text, impliedKey);
  return parsed.json ? fromJson(type, parsed.value, options) : fromKeyval(type, parsed.value, options);
}

const fail = (msg: string): never => { throw new BlockError('EINVAL', msg); };
const invalidType = (name: string, expected: string): never => fail(`Invalid parameter type for '${name}', expected: ${expected}`);
const invalidValue = (name: string, expected: string): never => fail(`Parameter '${name}' expects ${expected}`);

type Dict = Record<string, unknown>;
const isDict = (v: unknown): v is Dict =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof JsonNumber);

type Frame =
  | { kind: 'dict'; name: string | null; obj: Dict; unvisited: Set<string> }
  | { kind: 'list'; name: string | null; obj: unknown[]; next: number };

const INT_RANGES: Partial<Record<BuiltinName, [bigint, bigint, string]>> = {
  int8: [-(2n ** 7n), 2n ** 7n - 1n, 'int8_t'],
  int16: [-(2n ** 15n), 2n ** 15n - 1n, 'int16_t'],
  int32: [-(2n ** 31n), 2n ** 31n - 1n, 'int32_t'],
  uint8: [0n, 2n ** 8n - 1n, 'uint8_t'],
  uint16: [0n, 2n ** 16n - 1n, 'uint16_t'],
  uint32: [0n, 2n ** 32n - 1n, 'uint32_t'],
};
const SIGNED = new Set<string>(['int', 'int8', 'int16', 'int32', 'int64']);
const UNSIGNED = new Set<string>(['uint8', 'uint16', 'uint32', 'uint64', 'size']);

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;
const TWO64 = 2n ** 64n;

/** The JSON kind ("QType") of a value, as QEMU's alternates dispatch on it. */
type QType = 'string' | 'number' | 'bool' | 'null' | 'dict' | 'list' | 'none';
function qtypeOf(v: unknown): QType {
  if (v === undefined) return 'none';
  if (v === null) return 'null';
  if (typeof v === 'string') return 'string';
  if (typeof v === 'number' || typeof v === 'bigint' || v instanceof JsonNumber) return 'number';
  if (typeof v === 'boolean') return 'bool';
  if (Array.isArray(v)) return 'list';
  return 'dict';
}

/** A JSON number as QEMU's QNum sees it: an int64, a uint64 beyond int64, or a double. */
function qnum(v: unknown): { kind: 'int' | 'uint' | 'double'; big?: bigint; value: number } | undefined {
  if (v instanceof JsonNumber) return v;
  if (typeof v === 'bigint') {
    if (v >= INT64_MIN && v <= INT64_MAX) return { kind: 'int', big: v, value: Number(v) };
    if (v > 0n && v <= UINT64_MAX) return { kind: 'uint', big: v, value: Number(v) };
    return { kind: 'double', value: Number(v) };
  }
  if (typeof v !== 'number') return undefined;
  if (!Number.isInteger(v)) return { kind: 'double', value: v };
  const big = BigInt(v);
  if (big >= INT64_MIN && big <= INT64_MAX) return { kind: 'int', big, value: v };
  if (big > 0n && big <= UINT64_MAX) return { kind: 'uint', big, value: v };
  return { kind: 'double', value: v };
}

/** Replaces JsonNumber wrappers by plain numbers (for 'any'). */
function plain(v: unknown): unknown {
  if (v instanceof JsonNumber) return v.value;
  if (typeof v === 'bigint') return Number(v);
  if (Array.isArray(v)) return v.map(plain);
  if (isDict(v)) {
    const out: Dict = {};
    for (const [k, x] of Object.entries(v)) Object.defineProperty(out, k, { value: plain(x), enumerable: true, writable: true, configurable: true });
    return out;
  }
  return v;
}

class InputVisitor {
  private readonly stack: Frame[] = [];
  /** Object types being visited, innermost last: what a 'ref' resolves to first. */
  private readonly scope: ObjectType[] = [];

  constructor(
    private readonly root: unknown,
    private readonly keyval: boolean,
    private readonly types?: Record<string, TypeDef>,
  ) {}

  visit(type: TypeRef, name: string | null): unknown {
    if (typeof type === 'string') return this.scalar(type, name);
    switch (type.kind) {
      case 'object': return this.struct(type, name);
      case 'array': return this.list(type.element, name);
      case 'alternate': return this.alternate(type, name);
      case 'enum': {
        const s = this.str(name);
        if (!type.values.includes(s)) fail(`Parameter '${name ?? 'null'}' does not accept value '${s}'`);
        return s;
      }
      case 'ref': return this.visit(this.resolve(type.name, type.resolve), name);
    }
  }

  // ---- names and lookup (QEMU's full_name and get_object) ----

  /** The dotted path of `name` in the current container, or of the n-th container up. */
  private fullName(name: string | null, n = 0): string {
    let out = '';
    for (let i = this.stack.length - 1; i >= 0; i--) {
      const f = this.stack[i]!;
      if (n > 0) n--;
      else if (f.kind === 'dict') out = `.${name ?? '<anonymous>'}${out}`;
      else out = (this.keyval ? `.${f.next - 1}` : `[${f.next - 1}]`) + out;
      name = f.name;
    }
    if (name !== null) return name + out;
    if (out.startsWith('.')) return out.slice(1);
    return out || '<anonymous>';
  }

  private tryGet(name: string | null, consume: boolean): unknown {
    const top = this.stack[this.stack.length - 1];
    if (!top) return this.root;
    if (top.kind === 'dict') {
      const v = name !== null && Object.hasOwn(top.obj, name) ? top.obj[name] : undefined;
      if (consume && v !== undefined) top.unvisited.delete(name!);
      return v;
    }
    const v = top.obj[top.next];
    if (consume) top.next++;
    return v;
  }

  private get(name: string | null, consume: boolean): unknown {
    const v = this.tryGet(name, consume);
    if (v === undefined) fail(`Parameter '${this.fullName(name)}' is missing`);
    return v;
  }

  private resolve(refName: string, resolver?: () => TypeDef): TypeDef {
    if (resolver) return resolver();
    for (let i = this.scope.length - 1; i >= 0; i--) if (this.scope[i]!.name === refName) return this.scope[i]!;
    const t = this.types?.[refName];
    if (!t) throw new Error(`assertion failed: schema type '${refName}' cannot be resolved`);
    return t;
  }

  // ---- containers ----

  private struct(type: ObjectType, name: string | null): Dict {
    const v = this.get(name, true);
    if (!isDict(v)) invalidType(this.fullName(name), 'object');
    const frame: Frame = { kind: 'dict', name, obj: v as Dict, unvisited: new Set(Object.keys(v as Dict)) };
    this.stack.push(frame);
    this.scope.push(type);
    const out: Dict = {};
    this.members(type, out);
    for (const key of frame.unvisited) {
      if ((v as Dict)[key] !== undefined) fail(`Parameter '${this.fullName(key)}' is unexpected`);
    }
    this.scope.pop();
    this.stack.pop();
    return out;
  }

  /** Base members in order, then those of the variant the discriminator selects. */
  private members(type: ObjectType, out: Dict): void {
    for (const m of type.members) {
      if (m.optional && this.tryGet(m.name, false) === undefined) continue;
      out[m.name] = this.visit(m.type, m.name);
    }
    if (type.union) {
      const tag = out[type.union.discriminator];
      const variant = typeof tag === 'string' && Object.hasOwn(type.union.variants, tag) ? type.union.variants[tag] : undefined;
      if (variant) this.members(variant, out);
    }
  }

  private list(element: TypeRef, name: string | null): unknown[] {
    const v = this.get(name, true);
    if (!Array.isArray(v)) invalidType(this.fullName(name), 'array');
    this.stack.push({ kind: 'list', name, obj: v as unknown[], next: 0 });
    const out: unknown[] = [];
    for (let i = 0; i < (v as unknown[]).length; i++) out.push(this.visit(element, null));
    this.stack.pop();
    return out;
  }

  /** Picks the choice whose JSON kind matches the value (with keyval, a string may also be a number or bool). */
  private alternate(type: AlternateType, name: string | null): unknown {
    const v = this.get(name, false);
    const qt = qtypeOf(v);
    const kinds = type.choices.map((c) => [c, this.kindOf(c)] as const);
    let choice = kinds.find(([, k]) => k === qt)?.[0];
    if (choice === undefined && this.keyval && qt === 'string') {
      choice = kinds.find(([, k]) => k === 'number' || k === 'bool')?.[0];
    }
    if (choice === undefined) invalidType(name ?? 'null', type.name);
    return this.visit(choice!, name);
  }

  private kindOf(t: TypeRef): QType {
    if (typeof t === 'string') {
      if (t === 'str') return 'string';
      if (t === 'bool') return 'bool';
      if (t === 'null') return 'null';
      if (t === 'any') return 'none';
      return 'number';
    }
    switch (t.kind) {
      case 'enum': return 'string';
      case 'object': return 'dict';
      case 'array': return 'list';
      case 'ref': return this.kindOf(this.resolve(t.name, t.resolve));
      default: return 'none';
    }
  }

  // ---- scalars ----

  /** A keyval scalar: always a string; an object or list here has members nobody asked for. */
  private keyvalString(name: string | null): string {
    const v = this.get(name, true);
    if (typeof v === 'string') return v;
    if (isDict(v) || Array.isArray(v)) return fail(`Parameters '${this.fullName(name)}.*' are unexpected`);
    return fail(`Internal error: parameter ${this.fullName(name)} invalid`);
  }

  private str(name: string | null): string {
    if (this.keyval) return this.keyvalString(name);
    const v = this.get(name, true);
    if (typeof v !== 'string') invalidType(this.fullName(name), 'string');
    return v as string;
  }

  private scalar(type: BuiltinName, name: string | null): unknown {
    switch (type) {
      case 'str': return this.str(name);
      case 'bool': return this.bool(name);
      case 'number': return this.number(name);
      case 'any': return plain(this.get(name, true));
      case 'null': {
        const v = this.get(name, true);
        if (v !== null) invalidType(this.fullName(name), 'null');
        return null;
      }
    }
    if (SIGNED.has(type)) return this.checkRange(type, name, this.int64(name));
    if (UNSIGNED.has(type)) return this.checkRange(type, name, type === 'size' ? this.size(name) : this.uint64(name));
    throw new Error(`assertion failed: unknown builtin type '${type}'`);
  }

  /** Sized integers are read as 64-bit and then range-checked; QEMU names only the member here. */
  private checkRange(type: BuiltinName, name: string | null, v: bigint): number {
    const range = INT_RANGES[type];
    if (range && (v < range[0] || v > range[1])) invalidValue(name ?? 'null', range[2]);
    return Number(v);
  }

  private int64(name: string | null): bigint {
    if (this.keyval) {
      const s = this.keyvalString(name);
      const r = strtoint(s);
      if (!r || r.value < INT64_MIN || r.value > INT64_MAX) invalidValue(this.fullName(name), 'integer');
      return r!.value;
    }
    const q = qnum(this.get(name, true));
    if (!q || q.kind !== 'int') invalidType(this.fullName(name), 'integer');
    return q!.big!;
  }

  private uint64(name: string | null): bigint {
    if (this.keyval) {
      const s = this.keyvalString(name);
      const r = strtoint(s);
      // Like strtoull, a negative number wraps around.
      if (!r || r.magnitude > UINT64_MAX) invalidValue(this.fullName(name), 'integer');
      return r!.value < 0n ? r!.value + TWO64 : r!.value;
    }
    const q = qnum(this.get(name, true));
    if (!q || q.kind === 'double') invalidValue(this.fullName(name), 'uint64');
    // Negative integers are accepted for backward compatibility, as QEMU does.
    return q!.big! < 0n ? q!.big! + TWO64 : q!.big!;
  }

  private size(name: string | null): bigint {
    if (!this.keyval) return this.uint64(name);
    const r = strtosz(this.keyvalString(name));
    if (r === undefined) invalidValue(this.fullName(name), 'size');
    return r!;
  }

  private bool(name: string | null): boolean {
    if (this.keyval) {
      const s = this.keyvalString(name);
      if (s === 'on' || s === 'yes' || s === 'true' || s === 'y') return true;
      if (s === 'off' || s === 'no' || s === 'false' || s === 'n') return false;
      return invalidValue(this.fullName(name), "'on' or 'off'");
    }
    const v = this.get(name, true);
    if (typeof v !== 'boolean') invalidType(this.fullName(name), 'boolean');
    return v as boolean;
  }

  private number(name: string | null): number {
    if (this.keyval) {
      const d = strtod(this.keyvalString(name));
      if (d === undefined) invalidType(this.fullName(name), 'number');
      return d!;
    }
    const q = qnum(this.get(name, true));
    if (!q) invalidType(this.fullName(name), 'number');
    return q!.value;
  }
}

// ---- C-style number parsing (strtoll/strtoull base 0, strtod, qemu_strtosz) ----

const isSpace = (c: string | undefined) => c === ' ' || c === '\t' || c === '\n' || c === '\v' || c === '\f' || c === '\r';

function skipSpace(s: string, i = 0): number {
  while (isSpace(s[i])) i++;
  return i;
}

const DIGITS: Record<number, RegExp> = { 8: /[0-7]/, 10: /[0-9]/, 16: /[0-9a-fA-F]/ };

/** Digits of `base` at s[i...]: their value and where they end (end === i: none). */
function digits(s: string, i: number, base: 8 | 10 | 16): { value: bigint; end: number } {
  let value = 0n;
  let p = i;
  while (p < s.length && DIGITS[base]!.test(s[p]!)) {
    value = value * BigInt(base) + BigInt(parseInt(s[p]!, 16));
    p++;
  }
  return { value, end: p };
}

/**
 * The whole string as a C integer literal (strtoll with base 0): leading
 * white space, a sign, then decimal, 0x hex or 0 octal; nothing may follow.
 */
function strtoint(s: string): { value: bigint; magnitude: bigint } | undefined {
  let i = skipSpace(s);
  let neg = false;
  if (s[i] === '+' || s[i] === '-') neg = s[i++] === '-';
  let r: { value: bigint; end: number };
  if (s[i] === '0' && (s[i + 1] === 'x' || s[i + 1] === 'X') && DIGITS[16]!.test(s[i + 2] ?? '')) r = digits(s, i + 2, 16);
  else if (s[i] === '0') r = digits(s, i, 8);
  else r = digits(s, i, 10);
  if (r.end === i || r.end !== s.length) return undefined;
  return { value: neg ? -r.value : r.value, magnitude: r.value };
}

const DECIMAL_FLOAT = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
const HEX_FLOAT = /^([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?\d+))?$/;

/** The whole string as a finite C double (strtod), or undefined. */
function strtod(s: string): number | undefined {
  const t = s.slice(skipSpace(s));
  let v: number;
  const hex = HEX_FLOAT.exec(t);
  if (DECIMAL_FLOAT.test(t)) {
    v = Number(t);
  } else if (hex && (hex[2]! + (hex[3] ?? '')).length > 0) {
    const mant = parseInt((hex[2]! + (hex[3] ?? '')) || '0', 16);
    v = mant * 2 ** (Number(hex[4] ?? 0) - 4 * (hex[3] ?? '').length) * (hex[1] === '-' ? -1 : 1);
  } else {
    return undefined;
  }
  return Number.isFinite(v) ? v : undefined;
}

const SUFFIXES: Record<string, bigint> = { b: 1n, k: 1n << 10n, m: 1n << 20n, g: 1n << 30n, t: 1n << 40n, p: 1n << 50n, e: 1n << 60n };

/**
 * qemu_strtosz: a decimal (or 0x hex) byte count with an optional B/K/M/G/T/P/E
 * suffix (powers of 1024, either case); a decimal fraction needs a suffix
 * ("1.5G"); no exponent, no sign. Undefined if invalid or above 2^64-1.
 */
export function strtosz(s: string): bigint | undefined {
  let i = skipSpace(s);
  const start = i;
  if (s[i] === '+' || s[i] === '-') i++;
  const int = digits(s, i, 10);
  if (int.end === i || s.slice(start, int.end).includes('-')) return undefined;
  let val = int.value;
  let end = int.end;
  let fraction = 0;
  if (s.slice(i, end) === '0' && (s[end] === 'x' || s[end] === 'X')) {
    const hex = digits(s, end + 1, 16);
    if (hex.end === end + 1) return undefined;
    val = hex.value;
    end = hex.end;
    if (s[end] === '.') return undefined;
  } else if (s[end] === '.') {
    const m = /^\.\d*(?:[eE][+-]?\d+)?/.exec(s.slice(end))!;
    if (/[eE]/.test(m[0])) return undefined;
    fraction = Number(`0${m[0]}`);
    end += m[0].length;
  }
  if (val > UINT64_MAX) return undefined;
  const mul = SUFFIXES[(s[end] ?? '').toLowerCase()];
  if (mul !== undefined) end++;
  if (end !== s.length) return undefined;
  // The fraction as 64.64 fixed point, scaled and rounded half up, as QEMU computes it.
  const frac = BigInt(Math.floor(fraction * 2 ** 64)) % TWO64;
  if ((mul ?? 1n) === 1n) return frac === 0n ? val : undefined;
  const scaledFrac = frac * mul!;
  const result = val * mul! + (scaledFrac >> 64n) + ((scaledFrac & (TWO64 - 1n)) >> 63n);
  return result > UINT64_MAX ? undefined : result;
}
