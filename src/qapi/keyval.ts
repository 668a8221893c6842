/**
 * QEMU's command-line option syntaxes, as qemu-storage-daemon 7.2 reads them:
 *
 * - KEY=VALUE,... (util/keyval.c): dotted keys build nested objects, numeric
 *   fragments build arrays, ",," is a literal comma, the last of several
 *   equal keys wins, and an option may have an implied first key
 *   ("nbd,id=e" for --export means type=nbd).
 * - JSON (when the text starts with '{'): QEMU's dialect, which also takes
 *   single-quoted strings, refuses duplicate keys and keeps integers apart
 *   from floats (so {"size":1.0} is not an integer).
 *
 * Errors are BlockError('EINVAL') with QEMU's exact texts; the CLI prefixes
 * them with "blockd: --option text: ".
 */
import { BlockError } from '../util/errors.ts';

export type KeyvalValue = string | KeyvalDict | KeyvalValue[];
export interface KeyvalDict { [key: string]: KeyvalValue }

const fail = (msg: string): never => { throw new BlockError('EINVAL', msg); };

const INT_MAX = 2 ** 31 - 1;
const MAX_FRAGMENT = 127;

const isDigit = (c: string | undefined) => c !== undefined && c >= '0' && c <= '9';
const isAlpha = (c: string | undefined) => c !== undefined && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
const isAlnum = (c: string | undefined) => isAlpha(c) || isDigit(c);

/**
 * Length of the QAPI name at s[i...] (a letter, then letters, digits, '-',
 * '_'; optionally after a downstream "__RFQDN_" prefix), or 0 if none.
 */
function qapiNameLength(s: string, i: number): number {
  let p = i;
  if (s[p] === '_') {
    if (s[++p] !== '_') return 0;
    p++;
    while (isAlnum(s[p]) || s[p] === '-' || s[p] === '.') p++;
    if (s[p] !== '_') return 0;
    p++;
  }
  if (!isAlpha(s[p])) return 0;
  p++;
  while (isAlnum(s[p]) || s[p] === '-' || s[p] === '_') p++;
  return p - i;
}

/** Length of the run of decimal digits at s[i...] (a list index fragment). */
function digitsLength(s: string, i: number): number {
  let p = i;
  while (isDigit(s[p])) p++;
  return p - i;
}

/** A list index as QEMU computes it: the digits' value, capped at INT_MAX. */
function indexOf(key: string): number {
  const n = Number(key);
  return n > INT_MAX ? INT_MAX : n;
}

const isIndexKey = (key: string) => key.length > 0 && digitsLength(key, 0) === key.length;

/** "help" and "?" ask for help when they stand alone as a parameter. */
const isHelp = (word: string) => word === 'help' || word === '?';

type Tree = Map<string, Tree | string>;

/** Puts a string (value) or an object (undefined value) at `tree[key]`, enforcing consistent use. */
function put(tree: Tree, key: string, value: string | undefined, keyForError: string): Tree | undefined {
  const old = tree.get(key);
  if (old !== undefined && (typeof old === 'string') !== (value !== undefined)) {
    fail(`Parameters '${keyForError}.*' used inconsistently`);
  }
  if (value === undefined) {
    if (old instanceof Map) return old;
    const child: Tree = new Map();
    tree.set(key, child);
    return child;
  }
  tree.set(key, value);
  return undefined;
}

/** Parses one KEY=VALUE at `pos`; returns the position of the next one. */
function parseOne(root: Tree, text: string, pos: number, impliedKey: string | undefined, state: { help: boolean }): number {
  let len = 0;
  while (pos + len < text.length && text[pos + len] !== '=' && text[pos + len] !== ',') len++;
  let key = text;
  let keyStart = pos;
  let keyEnd = pos + len;
  let impliedValue: string | undefined;
  if (len > 0 && text[pos + len] !== '=') {
    if (isHelp(text.slice(pos, pos + len))) {
      state.help = true;
      const next = pos + len;
      return text[next] === ',' ? next + 1 : next;
    }
    if (impliedKey !== undefined) {
      impliedValue = text.slice(pos, pos + len);
      key = impliedKey;
      keyStart = 0;
      keyEnd = impliedKey.length;
    }
  }

  let cur = root;
  let inCur = '';
  let s = keyStart;
  for (;;) {
    const n = s !== keyStart && isDigit(key[s]) ? digitsLength(key, s) : qapiNameLength(key, s);
    if (n === 0 || (s + n < keyEnd && key[s + n] !== '.') || s + n > keyEnd) {
      fail(`Invalid parameter '${key.slice(keyStart, keyEnd)}'`);
    }
    if (n > MAX_FRAGMENT) {
      const fragment = s !== keyStart || s + n !== keyEnd ? ' fragment' : '';
      fail(`Parameter${fragment} '${key.slice(s, s + n)}' is too long`);
    }
    if (s !== keyStart) cur = put(cur, inCur, undefined, key.slice(keyStart, s - 1))!;
    inCur = key.slice(s, s + n);
    s += n;
    if (key[s] !== '.' || s >= keyEnd) break;
    s++;
  }

  let value: string;
  let next: number;
  if (impliedValue !== undefined) {
    value = impliedValue;
    next = pos + len;
    if (text[next] === ',') next++;
  } else {
    if (text[s] !== '=') fail(`Expected '=' after parameter '${text.slice(pos, s)}'`);
    let p = s + 1;
    value = '';
    for (;;) {
      if (p >= text.length) break;
      if (text[p] === ',') {
        p++;
        if (text[p] !== ',') break;
      }
      value += text[p++];
    }
    next = p;
  }
  put(cur, inCur, value, key.slice(keyStart, keyEnd));
  return next;
}

/** Turns objects whose keys are all list indexes into arrays, depth first. */
function listify(tree: Tree, path: string): KeyvalValue {
  let hasIndex = false;
  let hasMember = false;
  const out = new Map<string, KeyvalValue>();
  for (const [k, v] of tree) {
    if (isIndexKey(k)) hasIndex = true;
    else hasMember = true;
    out.set(k, typeof v === 'string' ? v : listify(v, `${path}${k}.`));
  }
  if (hasIndex && hasMember) fail(`Parameters '${path}*' used inconsistently`);
  if (!hasIndex) {
    const obj: KeyvalDict = {};
    for (const [k, v] of out) obj[k] = v;
    return obj;
  }
  // Indexes need not arrive in order, but there must be no gaps.
  const slots = out.size + 1;
  const elements: (KeyvalValue | undefined)[] = new Array(slots).fill(undefined);
  let max = -1;
  for (const [k, v] of out) {
    const i = indexOf(k);
    if (i > max) max = i;
    if (i < slots - 1) elements[i] = v;
  }
  const list: KeyvalValue[] = [];
  for (let i = 0; i < Math.min(slots, max + 1); i++) {
    if (elements[i] === undefined) fail(`Parameter '${path}${i}' missing`);
    list.push(elements[i]!);
  }
  return list;
}

/**
 * Parses KEY=VALUE,... text. With `impliedKey`, a first parameter without '='
 * is that key's value. A help request ("help" or "?") is returned in `help`.
 */
export function parseKeyvalHelp(text: string, impliedKey?: string): { dict: KeyvalDict; help: boolean } {
  const root: Tree = new Map();
  const state = { help: false };
  let pos = 0;
  let implied = impliedKey;
  while (pos < text.length) {
    pos = parseOne(root, text, pos, implied, state);
    implied = undefined;
  }
  if (state.help) return { dict: {}, help: true };
  return { dict: listify(root, '') as KeyvalDict, help: false };
}

/** Parses KEY=VALUE,... text for an option that offers no help. */
export function parseKeyval(text: string, impliedKey?: string): KeyvalDict {
  const { dict, help } = parseKeyvalHelp(text, impliedKey);
  if (help) fail('Help is not available for this option');
  return dict;
}

// ---------------------------------------------------------------------------
// QEMU's JSON dialect

/**
 * A JSON number that a plain JS number cannot describe faithfully: a float
 * whose value happens to be integral (1.0, 1e3: not an 'int' to QEMU), or an
 * integer beyond 2^53. Plain numbers are used for everything else.
 */
export class JsonNumber {
  constructor(
    readonly kind: 'int' | 'uint' | 'double',
    readonly value: number,
    /** Exact value of an 'int' or 'uint'. */
    readonly big?: bigint,
  ) {}
  toJSON(): number { return this.value; }
}

type Tok =
  | { t: '{' | '}' | '[' | ']' | ':' | ',' }
  | { t: 'str'; raw: string }
  | { t: 'int' | 'float' | 'kw'; raw: string };

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;
const MAX_NESTING = 1024;

/** Scans one token at `i`; returns it with the next position, or the text of a stray (invalid) token. */
function lexOne(s: string, i: number): { tok: Tok; next: number } | { stray: string } {
  const c = s[i]!;
  if ('{}[]:,'.includes(c)) return { tok: { t: c as '{' }, next: i + 1 };
  if (c === '"' || c === "'") {
    let p = i + 1;
    while (p < s.length && s[p] !== c) {
      if (s[p]! < ' ') return { stray: s.slice(i, p + 1) };
      if (s[p] === '\\') {
        p++;
        if (p >= s.length) break;
        if (s[p]! < ' ') return { stray: s.slice(i, p + 1) };
      }
      p++;
    }
    if (p >= s.length) return { stray: s.slice(i) };
    return { tok: { t: 'str', raw: s.slice(i, p + 1) }, next: p + 1 };
  }
  if (c >= 'a' && c <= 'z') {
    let p = i;
    while (p < s.length && s[p]! >= 'a' && s[p]! <= 'z') p++;
    return { tok: { t: 'kw', raw: s.slice(i, p) }, next: p };
  }
  if (c === '-' || isDigit(c)) {
    let p = i;
    let float = false;
    const bad = () => ({ stray: s.slice(i, Math.min(p + 1, s.length)) });
    if (s[p] === '-') p++;
    if (s[p] === '0') {
      p++;
      if (isDigit(s[p])) return bad();
    } else if (isDigit(s[p])) {
      while (isDigit(s[p])) p++;
    } else {
      return bad();
    }
    if (s[p] === '.') {
      float = true;
      p++;
      if (!isDigit(s[p])) return bad();
      while (isDigit(s[p])) p++;
    }
    if (s[p] === 'e' || s[p] === 'E') {
      float = true;
      p++;
      if (s[p] === '+' || s[p] === '-') p++;
      if (!isDigit(s[p])) return bad();
      while (isDigit(s[p])) p++;
    }
    return { tok: { t: float ? 'float' : 'int', raw: s.slice(i, p) }, next: p };
  }
  return { stray: c };
}

function numberValue(tok: { t: 'int' | 'float'; raw: string }): number | JsonNumber {
  if (tok.t === 'int') {
    const big = BigInt(tok.raw);
    if (big >= INT64_MIN && big <= INT64_MAX) {
      return Number.isSafeInteger(Number(big)) ? Number(big) : new JsonNumber('int', Number(big), big);
    }
    if (big > 0n && big <= UINT64_MAX) return new JsonNumber('uint', Number(big), big);
  }
  const v = Number(tok.raw);
  return Number.isInteger(v) ? new JsonNumber('double', v) : v;
}

function unescape(raw: string): string {
  let out = '';
  const body = raw.slice(1, -1);
  // QEMU quotes six characters from the backslash, the closing quote included.
  const bad = (at: number): never => fail(`JSON parse error, ${raw.slice(at + 1, at + 7)} is not a valid Unicode character`);
  const hex4 = (at: number): number => {
    const h = body.slice(at + 2, at + 6);
    return /^[0-9a-fA-F]{4}$/.test(h) ? parseInt(h, 16) : -1;
  };
  for (let i = 0; i < body.length; i++) {
    const c = body[i]!;
    if (c !== '\\') { out += c; continue; }
    const e = body[++i];
    const simple: Record<string, string> = { '"': '"', "'": "'", '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
    if (e !== undefined && e in simple) { out += simple[e]; continue; }
    if (e !== 'u') fail('JSON parse error, invalid escape sequence in string');
    const at = i - 1;
    const cp = hex4(at);
    if (cp < 0 || (cp >= 0xdc00 && cp <= 0xdfff)) bad(at);
    if (cp >= 0xd800 && cp <= 0xdbff) {
      const low = body[at + 6] === '\\' && body[at + 7] === 'u' ? hex4(at + 6) : -1;
      if (low < 0xdc00 || low > 0xdfff) bad(at);
      out += String.fromCharCode(cp, low);
      i = at + 11;
    } else {
      out += String.fromCharCode(cp);
      i = at + 5;
    }
  }
  return out;
}

/** Recursive-descent parser over one balanced run of tokens. */
class TokenParser {
  private i = 0;
  constructor(private readonly toks: Tok[]) {}

  value(): unknown {
    const tok = this.toks[this.i];
    if (!tok) return fail('JSON parse error, premature EOI');
    switch (tok.t) {
      case '{': return this.object();
      case '[': return this.array();
      case 'str': this.i++; return unescape(tok.raw);
      case 'int': case 'float': this.i++; return numberValue(tok as { t: 'int' | 'float'; raw: string });
      case 'kw':
        this.i++;
        if (tok.raw === 'true') return true;
        if (tok.raw === 'false') return false;
        if (tok.raw === 'null') return null;
        return fail(`JSON parse error, invalid keyword '${tok.raw}'`);
      default: return fail('JSON parse error, expecting value');
    }
  }

  private next(): Tok {
    const tok = this.toks[this.i++];
    return tok ?? fail('JSON parse error, premature EOI');
  }

  private object(): Record<string, unknown> {
    this.i++;
    const out: Record<string, unknown> = {};
    if (!this.toks[this.i]) fail('JSON parse error, premature EOI');
    if (this.toks[this.i]!.t === '}') { this.i++; return out; }
    for (;;) {
      const key = this.value();
      if (typeof key !== 'string') fail('JSON parse error, key is not a string in object');
      if (this.next().t !== ':') fail('JSON parse error, missing : in object pair');
      const v = this.value();
      if (Object.hasOwn(out, key as string)) fail('JSON parse error, duplicate key');
      Object.defineProperty(out, key as string, { value: v, enumerable: true, writable: true, configurable: true });
      const sep = this.next();
      if (sep.t === '}') return out;
      if (sep.t !== ',') fail('JSON parse error, expected separator in dict');
    }
  }

  private array(): unknown[] {
    this.i++;
    const out: unknown[] = [];
    if (!this.toks[this.i]) fail('JSON parse error, premature EOI');
    if (this.toks[this.i]!.t === ']') { this.i++; return out; }
    for (;;) {
      out.push(this.value());
      const sep = this.next();
      if (sep.t === ']') return out;
      if (sep.t !== ',') fail('JSON parse error, expected separator in list');
    }
  }
}

/**
 * Parses exactly one JSON value in QEMU's dialect, with QEMU's error texts.
 * Like QEMU's streamer, tokens are gathered until brackets balance, then
 * parsed; anything after the first value is an error.
 */
export function parseQemuJson(text: string): unknown {
  let toks: Tok[] = [];
  let braces = 0;
  let brackets = 0;
  let result: { value: unknown } | undefined;
  const flush = () => {
    if (result) fail('Expecting at most one JSON value');
    const value = new TokenParser(toks).value();
    toks = [];
    braces = brackets = 0;
    result = { value };
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r') { i++; continue; }
    const r = lexOne(text, i);
    if ('stray' in r) {
      if (result) fail('Expecting at most one JSON value');
      fail(`JSON parse error, stray '${r.stray}'`);
    }
    const { tok, next } = r as { tok: Tok; next: number };
    i = next;
    toks.push(tok);
    if (tok.t === '{') braces++;
    else if (tok.t === '}') braces--;
    else if (tok.t === '[') brackets++;
    else if (tok.t === ']') brackets--;
    if (braces + brackets > MAX_NESTING) fail(result ? 'Expecting at most one JSON value' : 'JSON nesting depth limit exceeded');
    if ((braces > 0 || brackets > 0) && braces >= 0 && brackets >= 0) continue;
    flush();
  }
  if (toks.length > 0) flush();
  if (!result) fail('Expecting a JSON value');
  return result!.value;
}

/** A command-line option's value: QEMU's JSON form when it starts with '{', else key=value. */
export function parseOptionText(text: string, impliedKey?: string): { json: boolean; value: unknown } {
  if (text.startsWith('{')) return { json: true, value: parseQemuJson(text) };
  return { json: false, value: parseKeyval(text, impliedKey) };
}
