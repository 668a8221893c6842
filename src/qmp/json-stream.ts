/**
 * QMP's input side: a streaming JSON parser that behaves like QEMU's
 * (json-lexer / json-streamer / json-parser), byte for byte where a client
 * can see it:
 *
 * - No framing: a message ends when its brackets balance, so
 *   `{"execute":"a"}{"execute":"b"}` is two messages and newlines are optional.
 *   A scalar or a stray closing bracket at the top level is a message of its own.
 * - QEMU's dialect: single-quoted strings, \' escapes, modified UTF-8 (C0 80 is NUL).
 * - A lexical error ("stray '@'") drops the message being gathered; the lexer
 *   then skips input up to the next structural character or control byte and
 *   carries on, so the connection stays usable.
 * - The same error texts ("JSON parse error, ...", "JSON nesting depth limit
 *   exceeded", ...).
 *
 * It consumes input only as far as the caller asks (`next()` returns one
 * message), so a session can stop reading while its output is backed up.
 * Memory is bounded by `maxMessageBytes`: unlike QEMU (64 MiB), a string token
 * is cut off as soon as it crosses the limit.
 */
import { JsonNumber } from '../qapi/keyval.ts';

export type JsonMessage = { value: unknown } | { error: string };

export interface JsonLimits {
  /** Bytes of tokens in one message (QEMU: 64 MiB). */
  maxMessageBytes: number;
  /** Tokens in one message (QEMU: 2 Mi). */
  maxTokens: number;
  /** Open brackets and braces (QEMU: 1024). */
  maxNesting: number;
}

export const DEFAULT_LIMITS: JsonLimits = { maxMessageBytes: 1 << 20, maxTokens: 128 * 1024, maxNesting: 1024 };

type TokType = '{' | '}' | '[' | ']' | ',' | ':' | 'str' | 'int' | 'float' | 'kw';
interface Token { type: TokType; raw: Buffer }

const enum L {
  Start, Str, StrEsc, Zero, Neg, Int, FracStart, Frac, ExpStart, ExpSign, Exp, Keyword, Recovery,
}

const STRUCTURAL: Record<number, TokType> = { 0x7b: '{', 0x7d: '}', 0x5b: '[', 0x5d: ']', 0x2c: ',', 0x3a: ':' };
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isWs = (b: number) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;

class ParseError extends Error {}
const fail = (msg: string): never => { throw new ParseError(`JSON parse error, ${msg}`); };

export class JsonStreamParser {
  private chunks: Buffer[] = [];
  private pos = 0;
  private buffered = 0;
  private state = L.Start;
  private quote = 0;
  private tok: number[] = [];
  private tokens: Token[] = [];
  private braces = 0;
  private brackets = 0;
  private size = 0;
  private readonly out: JsonMessage[] = [];

  constructor(private readonly limits: JsonLimits = DEFAULT_LIMITS) {}

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** Raw input bytes not yet looked at. */
  get bufferedBytes(): number { return this.buffered; }

  /** The next message (or error), or undefined when more input is needed. */
  next(): JsonMessage | undefined {
    while (this.out.length === 0 && this.chunks.length > 0) {
      const c = this.chunks[0]!;
      while (this.pos < c.length && this.out.length === 0) {
        this.feed(c[this.pos]!);
        this.pos++;
        this.buffered--;
      }
      if (this.pos >= c.length) {
        this.chunks.shift();
        this.pos = 0;
      }
    }
    return this.out.shift();
  }

  // ---- lexer ----

  private feed(b: number): void {
    for (;;) {
      switch (this.state) {
        case L.Start:
          if (isWs(b)) return;
          if (STRUCTURAL[b] !== undefined) { this.tok.push(b); return this.emit(STRUCTURAL[b]!); }
          this.tok.push(b);
          if (b === 0x22 || b === 0x27) { this.quote = b; this.state = L.Str; return; }
          if (b === 0x30) { this.state = L.Zero; return; }
          if (b >= 0x31 && b <= 0x39) { this.state = L.Int; return; }
          if (b === 0x2d) { this.state = L.Neg; return; }
          if (b >= 0x61 && b <= 0x7a) { this.state = L.Keyword; return; }
          return this.lexError();
        case L.Str:
          this.tok.push(b);
          if (b === this.quote) return this.emit('str');
          if (b === 0x5c) { this.state = L.StrEsc; return this.checkTokenSize(); }
          if (b < 0x20 || b > 0xfd) return this.lexError();
          return this.checkTokenSize();
        case L.StrEsc:
          this.tok.push(b);
          if (b < 0x20 || b > 0xfd) return this.lexError();
          this.state = L.Str;
          return this.checkTokenSize();
        case L.Zero:
          if (b === 0x2e) { this.tok.push(b); this.state = L.FracStart; return; }
          if (isDigit(b)) { this.tok.push(b); return this.lexError(); }
          this.emit('int');
          continue; // b starts the next token
        case L.Neg:
          this.tok.push(b);
          if (b === 0x30) { this.state = L.Zero; return; }
          if (b >= 0x31 && b <= 0x39) { this.state = L.Int; return; }
          return this.lexError();
        case L.Int:
          if (isDigit(b)) { this.tok.push(b); return this.checkTokenSize(); }
          if (b === 0x2e) { this.tok.push(b); this.state = L.FracStart; return; }
          if (b === 0x65 || b === 0x45) { this.tok.push(b); this.state = L.ExpStart; return; }
          this.emit('int');
          continue;
        case L.FracStart:
          this.tok.push(b);
          if (isDigit(b)) { this.state = L.Frac; return; }
          return this.lexError();
        case L.Frac:
          if (isDigit(b)) { this.tok.push(b); return this.checkTokenSize(); }
          if (b === 0x65 || b === 0x45) { this.tok.push(b); this.state = L.ExpStart; return; }
          this.emit('float');
          continue;
        case L.ExpStart:
          this.tok.push(b);
          if (b === 0x2b || b === 0x2d) { this.state = L.ExpSign; return; }
          if (isDigit(b)) { this.state = L.Exp; return; }
          return this.lexError();
        case L.ExpSign:
          this.tok.push(b);
          if (isDigit(b)) { this.state = L.Exp; return; }
          return this.lexError();
        case L.Exp:
          if (isDigit(b)) { this.tok.push(b); return this.checkTokenSize(); }
          this.emit('float');
          continue;
        case L.Keyword:
          if (b >= 0x61 && b <= 0x7a) { this.tok.push(b); return this.checkTokenSize(); }
          this.emit('kw');
          continue;
        case L.Recovery:
          // Resynchronise at a structural character or a control byte (which then count normally).
          if ((b < 0x20 && b !== 0x09) || b >= 0xfe || STRUCTURAL[b] !== undefined) {
            this.state = L.Start;
            continue;
          }
          return;
      }
    }
  }

  private lexError(): void {
    const text = Buffer.from(this.tok).toString('utf8');
    this.tok = [];
    this.state = L.Recovery;
    this.finish({ error: `JSON parse error, stray '${text}'` });
  }

  /** A token growing past the message limit is cut off here rather than buffered whole. */
  private checkTokenSize(): void {
    if (this.size + this.tok.length + 1 <= this.limits.maxMessageBytes) return;
    this.tok = [];
    this.state = L.Recovery;
    this.finish({ error: 'JSON token size limit exceeded' });
  }

  // ---- streamer: gathers tokens until brackets balance ----

  private emit(type: TokType): void {
    const raw = Buffer.from(this.tok);
    this.tok = [];
    this.state = L.Start;
    if (type === '{') this.braces++;
    else if (type === '}') this.braces--;
    else if (type === '[') this.brackets++;
    else if (type === ']') this.brackets--;
    if (this.size + raw.length + 1 > this.limits.maxMessageBytes) return this.finish({ error: 'JSON token size limit exceeded' });
    if (this.tokens.length + 1 > this.limits.maxTokens) return this.finish({ error: 'JSON token count limit exceeded' });
    if (this.braces + this.brackets > this.limits.maxNesting) return this.finish({ error: 'JSON nesting depth limit exceeded' });
    this.tokens.push({ type, raw });
    this.size += raw.length;
    if ((this.braces > 0 || this.brackets > 0) && this.braces >= 0 && this.brackets >= 0) return;
    let msg: JsonMessage;
    try {
      msg = { value: new TokenParser(this.tokens).parse() };
    } catch (e) {
      if (!(e instanceof ParseError)) throw e;
      msg = { error: e.message };
    }
    this.finish(msg);
  }

  private finish(msg: JsonMessage): void {
    this.tokens = [];
    this.braces = this.brackets = 0;
    this.size = 0;
    this.out.push(msg);
  }
}

// ---- parser: one balanced run of tokens ----

class TokenParser {
  private i = 0;
  constructor(private readonly toks: Token[]) {}

  parse(): unknown { return this.value(); }

  private peek(): Token { return this.toks[this.i] ?? fail('premature EOI'); }
  private pop(): Token { return this.toks[this.i++] ?? fail('premature EOI'); }

  private value(): unknown {
    const t = this.peek();
    switch (t.type) {
      case '{': return this.object();
      case '[': return this.array();
      case 'str': this.i++; return parseString(t.raw);
      case 'int': this.i++; return intValue(t.raw.toString('latin1'));
      case 'float': this.i++; return floatValue(t.raw.toString('latin1'));
      case 'kw': {
        this.i++;
        const k = t.raw.toString('latin1');
        if (k === 'true') return true;
        if (k === 'false') return false;
        if (k === 'null') return null;
        return fail(`invalid keyword '${k}'`);
      }
      default: return fail('expecting value');
    }
  }

  private object(): Record<string, unknown> {
    this.i++;
    const out: Record<string, unknown> = {};
    if (this.peek().type === '}') { this.i++; return out; }
    for (;;) {
      this.peek();
      const key = this.value();
      if (typeof key !== 'string') fail('key is not a string in object');
      if (this.pop().type !== ':') fail('missing : in object pair');
      const v = this.value();
      if (Object.hasOwn(out, key as string)) fail('duplicate key');
      Object.defineProperty(out, key as string, { value: v, enumerable: true, writable: true, configurable: true });
      const sep = this.pop();
      if (sep.type === '}') return out;
      if (sep.type !== ',') fail('expected separator in dict');
    }
  }

  private array(): unknown[] {
    this.i++;
    const out: unknown[] = [];
    if (this.peek().type === ']') { this.i++; return out; }
    for (;;) {
      out.push(this.value());
      const sep = this.pop();
      if (sep.type === ']') return out;
      if (sep.type !== ',') fail('expected separator in list');
    }
  }
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;

/** As QEMU: int64 if it fits, else uint64, else a double. Plain numbers where they are exact. */
function intValue(raw: string): unknown {
  const big = BigInt(raw);
  if (big >= INT64_MIN && big <= INT64_MAX) {
    const n = Number(big);
    return Number.isSafeInteger(n) ? n : new JsonNumber('int', n, big);
  }
  if (big > 0n && big <= UINT64_MAX) return new JsonNumber('uint', Number(big), big);
  return floatValue(raw);
}

function floatValue(raw: string): unknown {
  const v = Number(raw);
  return Number.isInteger(v) || !Number.isFinite(v) ? new JsonNumber('double', v) : v;
}

/** A code point QEMU accepts in a string: no surrogates, no noncharacters, within Unicode. */
function validCodePoint(cp: number): boolean {
  if (cp < 0 || cp > 0x10ffff) return false;
  if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe) return false;
  return !(cp >= 0xd800 && cp <= 0xdfff);
}

function hex4(raw: Buffer, at: number): number {
  let cp = 0;
  for (let k = 0; k < 4; k++) {
    const c = raw[at + k];
    if (c === undefined) return -1;
    const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1;
    if (d < 0) return -1;
    cp = (cp << 4) | d;
  }
  return cp;
}

const SIMPLE_ESCAPES: Record<number, string> = {
  0x22: '"', 0x27: "'", 0x5c: '\\', 0x2f: '/', 0x62: '\b', 0x66: '\f', 0x6e: '\n', 0x72: '\r', 0x74: '\t',
};

/** A string token (quotes included) to its value, validating escapes and modified UTF-8 as QEMU does. */
function parseString(raw: Buffer): string {
  const quote = raw[0]!;
  const parts: number[] = [];
  let p = 1;
  while (raw[p] !== quote) {
    const c = raw[p]!;
    if (c === 0x5c) {
      const beg = p;
      const e = raw[p + 1]!;
      p += 2;
      if (SIMPLE_ESCAPES[e] !== undefined) { parts.push(SIMPLE_ESCAPES[e]!.charCodeAt(0)); continue; }
      if (e !== 0x75) fail('invalid escape sequence in string');
      let cp = hex4(raw, p);
      p += 4;
      if (cp >= 0xd800 && cp <= 0xdbff && raw[p] === 0x5c && raw[p + 1] === 0x75) {
        const low = hex4(raw, p + 2);
        if (low >= 0xdc00 && low <= 0xdfff) {
          cp = 0x10000 + ((cp & 0x3ff) << 10) + (low & 0x3ff);
          p += 6;
        } else {
          cp = -1;
        }
      }
      if (!validCodePoint(cp)) fail(`${raw.subarray(beg, Math.min(p, raw.length)).toString('latin1')} is not a valid Unicode character`);
      parts.push(cp);
      continue;
    }
    const r = decodeUtf8(raw, p);
    if (r.cp < 0) fail('invalid UTF-8 sequence in string');
    parts.push(r.cp);
    p = r.end;
  }
  let s = '';
  for (let k = 0; k < parts.length; k += 4096) s += String.fromCodePoint(...parts.slice(k, k + 4096));
  return s;
}

/** One modified-UTF-8 code point at raw[p]: overlong forms are invalid except C0 80 (NUL). */
function decodeUtf8(raw: Buffer, p: number): { cp: number; end: number } {
  const b = raw[p]!;
  if (b < 0x80) return { cp: b, end: p + 1 };
  let len: number;
  let cp: number;
  if (b >= 0xc0 && b <= 0xdf) { len = 2; cp = b & 0x1f; }
  else if (b >= 0xe0 && b <= 0xef) { len = 3; cp = b & 0x0f; }
  else if (b >= 0xf0 && b <= 0xf7) { len = 4; cp = b & 0x07; }
  else if (b >= 0xf8 && b <= 0xfb) { len = 5; cp = b & 0x03; }
  else if (b >= 0xfc && b <= 0xfd) { len = 6; cp = b & 0x01; }
  else return { cp: -1, end: p + 1 };
  for (let k = 1; k < len; k++) {
    const c = raw[p + k];
    if (c === undefined || (c & 0xc0) !== 0x80) return { cp: -1, end: p + k };
    cp = cp * 64 + (c & 0x3f);
  }
  const min = [0, 0, 0x80, 0x800, 0x10000, 0x200000, 0x4000000][len]!;
  if (cp < min) return len === 2 && cp === 0 ? { cp: 0, end: p + 2 } : { cp: -1, end: p + len };
  return validCodePoint(cp) ? { cp, end: p + len } : { cp: -1, end: p + len };
}
