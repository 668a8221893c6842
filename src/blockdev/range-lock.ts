/**
 * Serialises overlapping byte ranges: a holder of [start, end) waits for every
 * earlier overlapping holder to release. Used for read-modify-write of
 * unaligned writes and, in format drivers, for allocating writes that touch
 * the same cluster. An uncontended range costs no promise (tryAcquire) or one
 * (acquire): this sits on every qcow2 write.
 */
interface Held { start: number; end: number; waiters?: (() => void)[] }

export class RangeLock {
  private held: Held[] = [];

  /** Resolves to a release function once no earlier holder overlaps [start, end). */
  acquire(start: number, end: number): Promise<() => void> {
    let blockers: Promise<void>[] | undefined;
    for (const h of this.held) {
      if (h.start < end && start < h.end) (blockers ??= []).push(new Promise<void>((r) => (h.waiters ??= []).push(r)));
    }
    const release = this.hold(start, end);
    return blockers ? Promise.all(blockers).then(() => release) : Promise.resolve(release);
  }

  /** The release function if nothing overlaps [start, end) now (the range is then held), else undefined. */
  tryAcquire(start: number, end: number): (() => void) | undefined {
    for (const h of this.held) if (h.start < end && start < h.end) return undefined;
    return this.hold(start, end);
  }

  private hold(start: number, end: number): () => void {
    const entry: Held = { start, end };
    this.held.push(entry);
    return () => {
      const i = this.held.indexOf(entry);
      if (i < 0) return;
      this.held.splice(i, 1);
      if (entry.waiters) for (const w of entry.waiters) w();
    };
  }

  get size(): number { return this.held.length; }
}
