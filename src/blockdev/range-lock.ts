/**
 * Serialises overlapping byte ranges: a holder of [start, end) waits for every
 * earlier overlapping holder to release. Used for read-modify-write of
 * unaligned writes and, in format drivers, for allocating writes that touch
 * the same cluster.
 */
interface Held { start: number; end: number; done: Promise<void>; release: () => void }

export class RangeLock {
  private held: Held[] = [];

  /** Resolves to a release function once no earlier holder overlaps [start, end). */
  async acquire(start: number, end: number): Promise<() => void> {
    const blockers = this.held.filter((h) => h.start < end && start < h.end).map((h) => h.done);
    let release!: () => void;
    const done = new Promise<void>((r) => (release = r));
    const entry: Held = { start, end, done, release };
    this.held.push(entry);
    await Promise.all(blockers);
    return () => {
      const i = this.held.indexOf(entry);
      if (i >= 0) this.held.splice(i, 1);
      entry.release();
    };
  }

  get size(): number { return this.held.length; }
}
