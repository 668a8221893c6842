/**
 * SparseBitmap: a set of bit indices (granules) over [0, size), stored as
 * pages of 2^15 bits that exist only where something is set. A page that is
 * entirely set keeps no words at all, so a disk that is mostly clean or
 * mostly dirty costs little memory, and finding the next set or clear bit
 * skips absent and full pages without looking at them. Indices are JS
 * numbers (granule counts of any real disk fit below 2^53).
 */

const PAGE_SHIFT = 15;
export const PAGE_BITS = 1 << PAGE_SHIFT;
const PAGE_WORDS = PAGE_BITS / 32;

interface Page {
  /** Set bits in the page. */
  count: number;
  /** The bits, 32 per word, least significant first; null: every bit is set. */
  words: Uint32Array | null;
}

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

/** Bits [a, b) of a word, 0 <= a < b <= 32. */
function mask(a: number, b: number): number {
  const hi = b === 32 ? 0xffffffff : ((1 << b) - 1) >>> 0;
  const lo = ((1 << a) - 1) >>> 0;
  return (hi & ~lo) >>> 0;
}

/** Index of the lowest set bit of a non-zero word. */
function lowestBit(x: number): number {
  return 31 - Math.clz32(x & -x);
}

export class SparseBitmap {
  private readonly pages = new Map<number, Page>();
  /** Page numbers present, ascending. */
  private keys: number[] = [];
  private total = 0;

  constructor(public size: number) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad bitmap size ${size}`);
  }

  /** Number of set bits. */
  count(): number { return this.total; }

  get(i: number): boolean {
    const p = this.pages.get(Math.floor(i / PAGE_BITS));
    if (!p) return false;
    if (!p.words) return true;
    const b = i % PAGE_BITS;
    return ((p.words[b >>> 5]! >>> (b & 31)) & 1) === 1;
  }

  /** Sets bits [start, end) (clipped to the size). */
  set(start: number, end: number): void {
    this.apply(start, end, true);
  }

  /** Clears bits [start, end) (clipped to the size). */
  reset(start: number, end: number): void {
    this.apply(start, end, false);
  }

  clear(): void {
    this.pages.clear();
    this.keys = [];
    this.total = 0;
  }

  /** Changes the size; bits past a smaller size are dropped. */
  resize(size: number): void {
    if (size < this.size) this.reset(size, this.size);
    this.size = size;
  }

  /** First set bit in [from, limit), or -1. */
  nextSet(from: number, limit = this.size): number {
    limit = Math.min(limit, this.size);
    if (from >= limit) return -1;
    const first = Math.floor(from / PAGE_BITS);
    for (let k = this.lowerBound(first); k < this.keys.length; k++) {
      const pn = this.keys[k]!;
      const base = pn * PAGE_BITS;
      if (base >= limit) return -1;
      const page = this.pages.get(pn)!;
      const startBit = pn === first ? from - base : 0;
      if (!page.words) return base + startBit < limit ? base + startBit : -1;
      let w = startBit >>> 5;
      let word = page.words[w]! & mask(startBit & 31, 32);
      for (;;) {
        if (word !== 0) {
          const i = base + w * 32 + lowestBit(word);
          return i < limit ? i : -1;
        }
        if (++w >= PAGE_WORDS) break;
        word = page.words[w]!;
      }
    }
    return -1;
  }

  /** First clear bit in [from, limit), or limit if all are set. */
  nextClear(from: number, limit = this.size): number {
    limit = Math.min(limit, this.size);
    let pos = from;
    let k = this.lowerBound(Math.floor(pos / PAGE_BITS));
    while (pos < limit) {
      const pn = Math.floor(pos / PAGE_BITS);
      while (k < this.keys.length && this.keys[k]! < pn) k++;
      if (k >= this.keys.length || this.keys[k] !== pn) return pos;
      const page = this.pages.get(pn)!;
      const base = pn * PAGE_BITS;
      if (page.words) {
        const startBit = pos - base;
        let w = startBit >>> 5;
        let inv = ~page.words[w]! & mask(startBit & 31, 32);
        for (;;) {
          if (inv !== 0) return Math.min(limit, base + w * 32 + lowestBit(inv >>> 0));
          if (++w >= PAGE_WORDS) break;
          inv = ~page.words[w]! >>> 0;
        }
      }
      pos = base + PAGE_BITS;
      k++;
    }
    return limit;
  }

  /** Calls fn(start, end) for each maximal run of set bits within [from, limit). */
  forEachRun(fn: (start: number, end: number) => void, from = 0, limit = this.size): void {
    let pos = from;
    while (pos < limit) {
      const s = this.nextSet(pos, limit);
      if (s < 0) return;
      const e = this.nextClear(s, limit);
      fn(s, e);
      pos = e;
    }
  }

  /** Sets every bit set in `other` (which has the same size). */
  or(other: SparseBitmap): void {
    other.forEachRun((s, e) => this.set(s, e));
  }

  clone(): SparseBitmap {
    const c = new SparseBitmap(this.size);
    for (const k of this.keys) {
      const p = this.pages.get(k)!;
      c.pages.set(k, { count: p.count, words: p.words ? p.words.slice() : null });
    }
    c.keys = this.keys.slice();
    c.total = this.total;
    return c;
  }

  equals(other: SparseBitmap): boolean {
    if (other.size !== this.size || other.total !== this.total) return false;
    let same = true;
    const runs: number[] = [];
    this.forEachRun((s, e) => runs.push(s, e));
    let i = 0;
    other.forEachRun((s, e) => { if (runs[i++] !== s || runs[i++] !== e) same = false; });
    return same && i === runs.length;
  }

  /**
   * Bits [start, start + n) as bytes, bit i in byte i >> 3 at position i & 7
   * (QEMU's serialisation: little-endian bit order).
   */
  toBytes(start: number, n: number): Buffer {
    const out = Buffer.alloc(Math.ceil(n / 8));
    this.forEachRun((s, e) => setBits(out, s - start, e - start), start, start + n);
    return out;
  }

  /** ORs bytes in toBytes' layout into bits from `start` (a multiple of 32) on; bits past the size are ignored. */
  orBytes(start: number, buf: Buffer): void {
    if (start % 32 !== 0) throw new RangeError('orBytes: start must be a multiple of 32');
    for (let i = 0; i < buf.length; i += 4) {
      let word = 0;
      for (let j = 0; j < 4 && i + j < buf.length; j++) word |= buf[i + j]! << (8 * j);
      word >>>= 0;
      if (word === 0) continue;
      if (word === 0xffffffff) { this.set(start + i * 8, start + i * 8 + 32); continue; }
      while (word !== 0) {
        const b = lowestBit(word);
        // A run of ones from b.
        const rest = ~(word >>> b) >>> 0;
        const len = rest === 0 ? 32 - b : lowestBit(rest);
        this.set(start + i * 8 + b, start + i * 8 + b + len);
        word = (word & ~mask(b, b + len)) >>> 0;
      }
    }
  }

  /** Memory-ish cost: pages with words. For tests and diagnostics. */
  pageCount(): number { return this.keys.length; }

  // ---- internals ----

  private lowerBound(pn: number): number {
    let lo = 0;
    let hi = this.keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.keys[mid]! < pn) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private addPage(pn: number, page: Page): void {
    this.pages.set(pn, page);
    const n = this.keys.length;
    if (n === 0 || this.keys[n - 1]! < pn) this.keys.push(pn);
    else this.keys.splice(this.lowerBound(pn), 0, pn);
  }

  private dropPage(pn: number): void {
    this.pages.delete(pn);
    const i = this.lowerBound(pn);
    if (this.keys[i] === pn) this.keys.splice(i, 1);
  }

  private apply(start: number, end: number, value: boolean): void {
    end = Math.min(end, this.size);
    if (start >= end) return;
    const p0 = Math.floor(start / PAGE_BITS);
    const p1 = Math.floor((end - 1) / PAGE_BITS);
    for (let pn = p0; pn <= p1; pn++) {
      const base = pn * PAGE_BITS;
      const a = Math.max(start, base) - base;
      const b = Math.min(end, base + PAGE_BITS) - base;
      const page = this.pages.get(pn);
      if (!value && !page) {
        // Clearing a run of absent pages: jump to the next present one.
        const k = this.lowerBound(pn);
        const next = this.keys[k];
        if (next === undefined || next > p1) return;
        pn = next - 1;
        continue;
      }
      if (a === 0 && b === PAGE_BITS) {
        if (value) {
          if (page) { this.total += PAGE_BITS - page.count; page.count = PAGE_BITS; page.words = null; }
          else { this.addPage(pn, { count: PAGE_BITS, words: null }); this.total += PAGE_BITS; }
        } else if (page) {
          this.total -= page.count;
          this.dropPage(pn);
        }
        continue;
      }
      this.applyPartial(pn, page, a, b, value);
    }
  }

  private applyPartial(pn: number, page: Page | undefined, a: number, b: number, value: boolean): void {
    if (value && page && !page.words) return;
    if (!page) {
      page = { count: 0, words: new Uint32Array(PAGE_WORDS) };
      this.addPage(pn, page);
    } else if (!page.words) {
      page.words = new Uint32Array(PAGE_WORDS).fill(0xffffffff);
    }
    const words = page.words!;
    let delta = 0;
    for (let w = a >>> 5; w <= (b - 1) >>> 5; w++) {
      const lo = w === a >>> 5 ? a & 31 : 0;
      const hi = w === (b - 1) >>> 5 ? ((b - 1) & 31) + 1 : 32;
      const m = mask(lo, hi);
      const old = words[w]!;
      const next = value ? (old | m) >>> 0 : (old & ~m) >>> 0;
      if (next !== old) {
        delta += popcount(next) - popcount(old);
        words[w] = next;
      }
    }
    page.count += delta;
    this.total += delta;
    if (page.count === 0) this.dropPage(pn);
    else if (page.count === PAGE_BITS) page.words = null;
  }
}

/** Sets bits [a, b) of a byte buffer in little-endian bit order. */
function setBits(buf: Buffer, a: number, b: number): void {
  while (a < b && a & 7) { buf[a >>> 3] = buf[a >>> 3]! | (1 << (a & 7)); a++; }
  const fullEnd = b - (b & 7);
  if (a < fullEnd) { buf.fill(0xff, a >>> 3, fullEnd >>> 3); a = fullEnd; }
  while (a < b) { buf[a >>> 3] = buf[a >>> 3]! | (1 << (a & 7)); a++; }
}
