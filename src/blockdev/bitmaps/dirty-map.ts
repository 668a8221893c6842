/**
 * The in-memory dirty map a mirror (and a backup's copy map) keeps: one bit
 * per granule of a node's address space. Pure; counts are kept up to date so
 * the job's remaining work is O(1) to read.
 */
export class DirtyMap {
  private readonly bits: Uint8Array;
  private dirty = 0;
  readonly granules: number;

  constructor(readonly length: number, readonly granularity: number) {
    this.granules = Math.ceil(length / granularity);
    this.bits = new Uint8Array(this.granules);
  }

  /** Marks every granule touching [offset, offset+len). */
  set(offset: number, len: number): void {
    if (len <= 0) return;
    const a = Math.floor(offset / this.granularity);
    const b = Math.min(this.granules, Math.ceil((offset + len) / this.granularity));
    for (let i = a; i < b; i++) if (!this.bits[i]) { this.bits[i] = 1; this.dirty++; }
  }

  /** Clears every granule that lies within [offset, offset+len) (touching granules when `touching`). */
  clear(offset: number, len: number, touching = true): void {
    const a = touching ? Math.floor(offset / this.granularity) : Math.ceil(offset / this.granularity);
    const b = Math.min(this.granules, touching ? Math.ceil((offset + len) / this.granularity) : Math.floor((offset + len) / this.granularity));
    for (let i = a; i < b; i++) if (this.bits[i]) { this.bits[i] = 0; this.dirty--; }
  }

  get(offset: number): boolean { return this.bits[Math.floor(offset / this.granularity)] === 1; }

  /** Any granule touching [offset, offset+len) is set. */
  any(offset: number, len: number): boolean {
    const a = Math.floor(offset / this.granularity);
    const b = Math.min(this.granules, Math.ceil((offset + len) / this.granularity));
    for (let i = a; i < b; i++) if (this.bits[i]) return true;
    return false;
  }

  /** Number of set granules. */
  get count(): number { return this.dirty; }

  /** Bytes covered by set granules (the last granule may be short). */
  get bytes(): number {
    if (this.dirty === 0) return 0;
    const tail = this.length - (this.granules - 1) * this.granularity;
    return this.dirty * this.granularity - (this.bits[this.granules - 1] ? this.granularity - tail : 0);
  }

  /**
   * The first run of set granules at or after `from` (wrapping to the start),
   * at most `max` bytes, as a byte range clipped to the length; undefined if clean.
   */
  nextRun(from: number, max: number): { offset: number; length: number } | undefined {
    if (this.dirty === 0) return undefined;
    const start = Math.min(Math.floor(from / this.granularity), this.granules);
    let i = this.bits.indexOf(1, start);
    if (i < 0) i = this.bits.indexOf(1);
    if (i < 0) return undefined;
    const maxG = Math.max(1, Math.floor(max / this.granularity));
    let j = i + 1;
    while (j < this.granules && j - i < maxG && this.bits[j]) j++;
    const offset = i * this.granularity;
    return { offset, length: Math.min(this.length, j * this.granularity) - offset };
  }
}
