/** A FIFO async mutex for metadata updates (held across metadata I/O, never across guest data I/O). */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();
  private held = false;

  async lock(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((r) => (release = r));
    const prev = this.tail;
    this.tail = prev.then(() => next);
    await prev;
    this.held = true;
    return () => { this.held = false; release(); };
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.lock();
    try { return await fn(); } finally { release(); }
  }

  get locked(): boolean { return this.held; }
}
