/**
 * Write-back cache of metadata tables (L2 slices, refcount blocks), LRU with
 * pinning. Ordering between caches is by dependency, as QEMU does it: before
 * a cache writes any dirty entry, the cache it depends on is written and the
 * file flushed (a barrier), so e.g. an L2 entry never reaches the disk before
 * the refcount that makes its cluster allocated.
 */
export interface CacheIo {
  read(offset: number, buf: Buffer): Promise<void>;
  write(offset: number, buf: Buffer): Promise<void>;
  /** Makes everything written so far stable. */
  barrier(): Promise<void>;
}

export interface CacheEntry {
  readonly offset: number;
  readonly buf: Buffer;
  dirty: boolean;
  pins: number;
  used: boolean;
  /** The cache's use counter when this entry last moved to the recent end of the LRU order. */
  stamp?: number;
  /**
   * Write-backs of this entry still in flight. Such an entry is clean but must
   * stay cached: dropping it now and re-reading the table could read the old
   * contents from the file before the write has landed.
   */
  writes?: number;
}

export class MetaCache {
  private readonly entries = new Map<number, CacheEntry>();
  private readonly loading = new Map<number, Promise<CacheEntry>>();
  /** Flushed (with a barrier) before this cache writes a dirty entry. */
  dependsOn?: MetaCache;
  /** Set when something other than a cache (guest data) must be stable before this cache writes. */
  needsBarrier = false;
  private writing: Promise<void> = Promise.resolve();
  private uses = 0;

  constructor(
    readonly name: string,
    readonly entrySize: number,
    /** Capacity in entries (at least 2). */
    public capacity: number,
    private readonly io: CacheIo,
    /** Called to validate freshly loaded content (throws to refuse it). */
    private readonly onLoad?: (offset: number, buf: Buffer) => void,
  ) {}

  get size(): number { return this.entries.size; }

  /** The entry at `offset` (loaded if needed), pinned until release(). */
  async get(offset: number): Promise<CacheEntry> {
    const e = this.entries.get(offset);
    if (e) return this.touch(e);
    let p = this.loading.get(offset);
    if (!p) {
      p = this.load(offset);
      this.loading.set(offset, p);
      p.finally(() => this.loading.delete(offset)).catch(() => undefined);
    }
    const loaded = await p;
    // It may have been evicted between loading and now; reinsert the same object.
    if (!this.entries.has(offset)) this.entries.set(offset, loaded);
    return this.touch(loaded);
  }

  /**
   * The cached entry at `offset`, or undefined: no I/O and no promise, for the
   * hot paths. Not pinned, so it is valid only until the caller next awaits.
   */
  peek(offset: number): CacheEntry | undefined {
    const e = this.entries.get(offset);
    if (e) this.markUsed(e);
    return e;
  }

  /** A new entry with the given contents (a freshly allocated table), pinned and dirty. */
  async create(offset: number, buf: Buffer): Promise<CacheEntry> {
    await this.makeRoom();
    const old = this.entries.get(offset);
    if (old) { buf.copy(old.buf); old.dirty = true; return this.touch(old); }
    const e: CacheEntry = { offset, buf, dirty: true, pins: 0, used: true };
    this.entries.set(offset, e);
    return this.touch(e);
  }

  release(e: CacheEntry): void { e.pins--; }

  markDirty(e: CacheEntry): void { e.dirty = true; }

  /** Drops the entries inside a freed or reused cluster range (their contents no longer matter). */
  forget(offset: number, length = this.entrySize): void {
    for (const e of [...this.entries.values()]) {
      if (e.offset < offset || e.offset >= offset + length) continue;
      if (e.pins === 0) this.entries.delete(e.offset);
      else e.dirty = false;
    }
  }

  /** Makes `this` depend on `dep` (QEMU's qcow2_cache_set_dependency), flushing to break cycles. */
  async setDependency(dep: MetaCache): Promise<void> {
    if (dep.dependsOn) await dep.flushDependency();
    if (this.dependsOn && this.dependsOn !== dep) await this.flushDependency();
    this.dependsOn = dep;
  }

  async flushDependency(): Promise<void> {
    const dep = this.dependsOn;
    if (!dep) return;
    await dep.flush();
    this.dependsOn = undefined;
  }

  /** Writes every dirty entry (after dependencies) and issues a barrier. */
  async flush(): Promise<void> {
    await this.writeDirty([...this.entries.values()].filter((e) => e.dirty));
    await this.io.barrier();
  }

  /** Drops clean, unpinned entries not used since the last call (cache-clean-interval). */
  clean(): void {
    for (const e of [...this.entries.values()]) {
      if (!e.dirty && e.pins === 0 && !e.used && !e.writes) this.entries.delete(e.offset);
      e.used = false;
    }
  }

  /** Drops every clean entry (after an error, or to re-read). */
  dropClean(): void {
    for (const e of [...this.entries.values()]) if (!e.dirty && e.pins === 0 && !e.writes) this.entries.delete(e.offset);
  }

  hasDirty(): boolean {
    for (const e of this.entries.values()) if (e.dirty) return true;
    return false;
  }

  /** Offsets currently cached (for overlap checks). */
  offsets(): IterableIterator<number> { return this.entries.keys(); }

  private touch(e: CacheEntry): CacheEntry {
    e.pins++;
    this.markUsed(e);
    return e;
  }

  /**
   * Moves the entry to the recent end of the LRU order (the Map's insertion
   * order), unless it got there within the last quarter of the capacity's worth
   * of uses: a hot entry then costs no Map delete and insert per lookup, and
   * the eviction order is off by at most that quarter.
   */
  private markUsed(e: CacheEntry): void {
    e.used = true;
    const now = ++this.uses;
    if (e.stamp !== undefined && now - e.stamp <= this.capacity >> 2) return;
    e.stamp = now;
    this.entries.delete(e.offset);
    this.entries.set(e.offset, e);
  }

  private async load(offset: number): Promise<CacheEntry> {
    await this.makeRoom();
    const buf = Buffer.alloc(this.entrySize);
    await this.io.read(offset, buf);
    this.onLoad?.(offset, buf);
    return { offset, buf, dirty: false, pins: 0, used: true };
  }

  private async makeRoom(): Promise<void> {
    while (this.entries.size >= this.capacity) {
      let victim: CacheEntry | undefined;
      for (const e of this.entries.values()) if (e.pins === 0 && !e.dirty && !e.writes) { victim = e; break; }
      if (victim) { this.entries.delete(victim.offset); continue; }
      let dirty: CacheEntry | undefined;
      for (const e of this.entries.values()) if (e.pins === 0) { dirty = e; break; }
      if (!dirty) return; // everything pinned: grow past capacity for now
      await this.writeDirty([dirty]);
      if (!dirty.dirty && dirty.pins === 0) this.entries.delete(dirty.offset);
    }
  }

  private writeDirty(list: CacheEntry[]): Promise<void> {
    // Serialised so that two writers never interleave dependency flushes.
    const run = this.writing.then(async () => {
      const dirtyEntries = list.filter((e) => e.dirty);
      if (dirtyEntries.length === 0) return;
      await this.flushDependency();
      if (this.needsBarrier) { this.needsBarrier = false; await this.io.barrier(); }
      dirtyEntries.sort((a, b) => a.offset - b.offset);
      for (const e of dirtyEntries) {
        if (!e.dirty) continue;
        e.dirty = false;
        e.writes = (e.writes ?? 0) + 1;
        const copy = Buffer.from(e.buf);
        try {
          await this.io.write(e.offset, copy);
        } catch (err) {
          e.dirty = true;
          throw err;
        } finally {
          e.writes--;
        }
      }
    });
    this.writing = run.catch(() => undefined);
    return run;
  }
}
