/**
 * The VMDK text descriptor (VMware's Virtual Disk Format 1.1, as QEMU's
 * block/vmdk.c reads and writes it): probing, the createType, extent lines,
 * CID/parentCID, parentFileNameHint, the CID rewrite on a first write and
 * the descriptor a new image gets. QEMU reads it as a C string with
 * strstr/sscanf; the same rules are followed here (a first "CID" may be the
 * one inside "parentCID", an extent line's fields may run on into the next
 * line), so what QEMU accepts or refuses, blockd does too. Pure: no I/O.
 * Text is latin1 so that every byte stays one character.
 */
import { BlockError } from '../../../util/errors.ts';

/** QEMU's DESC_SIZE: the bytes of an embedded descriptor read for the CIDs. */
export const DESC_SIZE = 20 * 512;

/** The buffer as QEMU's C string: up to its first NUL, one character per byte. */
export function cString(buf: Buffer): string {
  const nul = buf.indexOf(0);
  return buf.toString('latin1', 0, nul < 0 ? buf.length : nul);
}

const isSpace = (c: string | undefined) => c === ' ' || c === '\t' || c === '\n' || c === '\v' || c === '\f' || c === '\r';

/** QEMU's vmdk_probe: a sparse magic, or a text descriptor whose first non-comment, non-blank line is version=1..3. */
export function probeVmdk(head: Buffer): number {
  if (head.length < 4) return 0;
  const magic = head.readUInt32BE(0);
  if (magic === 0x434f5744 || magic === 0x4b444d56) return 100;
  const s = head.toString('latin1');
  let p = 0;
  const end = s.length;
  while (p < end) {
    if (s[p] === '#') {
      while (p < end && s[p] !== '\n') p++;
      p++;
      continue;
    }
    if (s[p] === ' ') {
      while (p < end && s[p] === ' ') p++;
      if (p < end && s[p] === '\r') p++;
      if (p === end || s[p] !== '\n') return 0;
      p++;
      continue;
    }
    for (const v of ['1', '2', '3']) {
      if (s.startsWith(`version=${v}\n`, p) || s.startsWith(`version=${v}\r\n`, p)) return 100;
    }
    return 0;
  }
  return 0;
}

/** QEMU's vmdk_parse_description: the value of `name="..."` at its first occurrence (undefined: none, or longer than buf). */
export function descriptionValue(desc: string, name: string, bufSize = 128): string | undefined {
  const at = desc.indexOf(name);
  if (at < 0) return undefined;
  const start = at + name.length + 2;
  if (start >= desc.length) return undefined;
  const close = desc.indexOf('"', start);
  if (close < 0 || bufSize < close - start + 1) return undefined;
  return desc.slice(start, close);
}

/** A minimal sscanf over `s` from `pos`: the conversions the extent line uses. */
class Scanner {
  constructor(private readonly s: string, public pos: number) {}
  private skipSpace(): void { while (this.pos < this.s.length && isSpace(this.s[this.pos])) this.pos++; }
  get atEnd(): boolean { return this.pos >= this.s.length; }
  /** %Ns: undefined on input failure. */
  word(max: number): string | undefined {
    this.skipSpace();
    if (this.atEnd) return undefined;
    const start = this.pos;
    while (this.pos < this.s.length && this.pos - start < max && !isSpace(this.s[this.pos])) this.pos++;
    return this.s.slice(start, this.pos);
  }
  /** %SCNd64 (glibc: saturates on overflow). */
  int64(): bigint | undefined {
    this.skipSpace();
    let p = this.pos;
    let neg = false;
    if (this.s[p] === '+' || this.s[p] === '-') { neg = this.s[p] === '-'; p++; }
    const start = p;
    while (p < this.s.length && this.s[p] >= '0' && this.s[p] <= '9') p++;
    if (p === start) return undefined;
    this.pos = p;
    let v = BigInt(this.s.slice(start, p));
    if (neg) v = -v;
    const max = (1n << 63n) - 1n;
    return v > max ? max : v < -max - 1n ? -max - 1n : v;
  }
  /** A literal character (no whitespace skipped). */
  literal(c: string): boolean {
    if (this.s[this.pos] !== c) return false;
    this.pos++;
    return true;
  }
  spaces(): void { this.skipSpace(); }
  /** %N[^...]: at least one character not in `stop`. */
  until(stop: string, max: number): string | undefined {
    const start = this.pos;
    while (this.pos < this.s.length && this.pos - start < max && !stop.includes(this.s[this.pos])) this.pos++;
    return this.pos === start ? undefined : this.s.slice(start, this.pos);
  }
}

export interface ScannedLine { matches: number; access?: string; sectors?: bigint; type?: string; fname?: string; flatOffset?: bigint }

/** sscanf(p, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\" %" SCNd64, ...) as glibc does it. */
export function scanExtentLine(desc: string, pos: number): ScannedLine {
  const sc = new Scanner(desc, pos);
  const out: ScannedLine = { matches: 0 };
  const access = sc.word(10);
  if (access === undefined) return { matches: -1 };
  out.access = access; out.matches = 1;
  const sectors = sc.int64();
  if (sectors === undefined) return out;
  out.sectors = sectors; out.matches = 2;
  const type = sc.word(10);
  if (type === undefined) return out;
  out.type = type; out.matches = 3;
  sc.spaces();
  if (!sc.literal('"')) return out;
  const fname = sc.until('\n\r"', 511);
  if (fname === undefined) return out;
  out.fname = fname; out.matches = 4;
  if (!sc.literal('"')) return out;
  const flat = sc.int64();
  if (flat === undefined) return out;
  out.flatOffset = flat; out.matches = 5;
  return out;
}

export type ExtentType = 'FLAT' | 'SPARSE' | 'VMFS' | 'VMFSSPARSE' | 'SESPARSE';

export interface ExtentLine {
  type: ExtentType;
  /** Sectors the line gives (sparse extents take theirs from their header). */
  sectors: bigint;
  fname: string;
  /** FLAT: the extent's start in its file, in sectors (VMFS: 0). */
  flatOffset: bigint;
}

const TYPES = new Set(['FLAT', 'SPARSE', 'VMFS', 'VMFSSPARSE', 'SESPARSE']);

const nextLine = (s: string, p: number) => {
  const nl = s.indexOf('\n', p);
  return nl < 0 ? s.length : nl + 1;
};

/** QEMU's vmdk_parse_extents, its line scan: the extents in order, or its "Invalid extent line" error. */
export function parseExtentLines(desc: string): ExtentLine[] {
  const out: ExtentLine[] = [];
  for (let p = 0; p < desc.length; p = nextLine(desc, p)) {
    const l = scanExtentLine(desc, p);
    if (l.matches < 4 || l.access !== 'RW') continue;
    let flatOffset = l.flatOffset ?? -1n;
    let invalid = false;
    if (l.type === 'FLAT') invalid = l.matches !== 5 || flatOffset < 0n;
    else if (l.type === 'VMFS') { if (l.matches === 4) flatOffset = 0n; else invalid = true; } else invalid = l.matches !== 4;
    if (invalid) {
      let np = nextLine(desc, p);
      if (desc[np - 1] === '\n') np--;
      throw new BlockError('EINVAL', `Invalid extent line: ${desc.slice(p, np)}`);
    }
    if (l.sectors! <= 0n || !TYPES.has(l.type!)) continue;
    out.push({ type: l.type as ExtentType, sectors: l.sectors!, fname: l.fname!, flatOffset });
  }
  return out;
}

/** glibc's %x into a uint32: optional sign and 0x, hex digits, saturating at 64 bits, then truncated. */
function scanHex32(s: string, pos: number): number | undefined {
  let p = pos;
  while (p < s.length && isSpace(s[p])) p++;
  let neg = false;
  if (s[p] === '+' || s[p] === '-') { neg = s[p] === '-'; p++; }
  const hex = (c: string | undefined) => c !== undefined && /^[0-9a-fA-F]$/.test(c);
  if (s[p] === '0' && (s[p + 1] === 'x' || s[p + 1] === 'X') && hex(s[p + 2])) p += 2;
  const start = p;
  while (hex(s[p])) p++;
  if (p === start) return undefined;
  let v = BigInt('0x' + s.slice(start, p));
  if (v > (1n << 64n) - 1n) v = (1n << 64n) - 1n;
  if (neg) v = (1n << 64n) - v;
  return Number(v & 0xffffffffn);
}

/** QEMU's vmdk_read_cid on the descriptor text: the first "CID" (or "parentCID"), four characters on, in hex. */
export function readCid(desc: string, parent: boolean): number | undefined {
  const name = parent ? 'parentCID' : 'CID';
  const at = desc.indexOf(name);
  if (at < 0) return undefined;
  return scanHex32(desc, at + name.length + 1);
}

/** QEMU's vmdk_parent_open: parentFileNameHint's value; undefined if none; EINVAL if unterminated or too long. */
export function parentFileNameHint(desc: string): string | undefined {
  const at = desc.indexOf('parentFileNameHint');
  if (at < 0) return undefined;
  const start = at + 'parentFileNameHint'.length + 2;
  const close = start <= desc.length ? desc.indexOf('"', start) : -1;
  if (close < 0 || close - start > 4095) throw new BlockError('EINVAL', 'Invalid argument');
  return desc.slice(start, close);
}

/**
 * QEMU's vmdk_write_cid: `buf` is the descriptor area as read (DESC_SIZE
 * bytes, or the whole descriptor file); its last byte becomes NUL, the text
 * from the first "CID" on is replaced by the new value and what followed
 * from "parentCID", and the rest of the buffer is left as read. Undefined
 * when there is no "parentCID" (QEMU's EINVAL).
 */
export function rewriteCid(buf: Buffer, cid: number): Buffer | undefined {
  const out = Buffer.from(buf);
  if (out.length === 0) return undefined;
  out[out.length - 1] = 0;
  const desc = cString(out);
  const pAt = desc.indexOf('parentCID');
  if (pAt < 0) return undefined;
  const tail = desc.slice(pAt);
  const cAt = desc.indexOf('CID');
  const cap = out.length - 1;
  const head = desc.slice(0, cAt + 4) + `${(cid >>> 0).toString(16)}\n`;
  // snprintf into the rest of the buffer, then pstrcat: both stop one byte short of its end, with a NUL.
  let text = head.slice(0, cap);
  out.write(text, 0, 'latin1');
  out[text.length] = 0;
  text = (text + tail).slice(0, cap);
  out.write(text, 0, 'latin1');
  out[text.length] = 0;
  return out;
}

export interface DescriptorFields {
  cid: number;
  parentCid: number;
  createType: string;
  parentHint?: string;
  extentLines: string;
  hwVersion: string;
  size: number;
  heads: number;
  adapterType: string;
  toolsVersion: string;
}

/** The descriptor QEMU's vmdk_co_do_create writes. */
export function descriptorText(f: DescriptorFields): string {
  const cyl = Math.trunc(f.size / (63 * f.heads * 512));
  return '# Disk DescriptorFile\n' + 'version=1\n' + `CID=${(f.cid >>> 0).toString(16)}\n` + `parentCID=${(f.parentCid >>> 0).toString(16)}\n` +
    `createType="${f.createType}"\n` + (f.parentHint !== undefined ? `parentFileNameHint="${f.parentHint}"` : '') + '\n' +
    '# Extent description\n' + f.extentLines + '\n' + '# The Disk Data Base\n' + '#DDB\n' + '\n' +
    `ddb.virtualHWVersion = "${f.hwVersion}"\n` + `ddb.geometry.cylinders = "${cyl}"\n` + `ddb.geometry.heads = "${f.heads}"\n` +
    'ddb.geometry.sectors = "63"\n' + `ddb.adapterType = "${f.adapterType}"\n` + `ddb.toolsVersion = "${f.toolsVersion}"\n`;
}
