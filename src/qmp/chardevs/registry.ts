/**
 * Every chardev the daemon has, by id: the monitors' (from --chardev and
 * --monitor), the other --chardev sockets, and the ones chardev-add made.
 * qom-list's /chardevs, query-chardev and the chardev commands read it.
 */
import type { Chardev } from './chardev.ts';

export class ChardevRegistry {
  private readonly all = new Map<string, Chardev>();

  has(id: string): boolean { return this.all.has(id); }
  get(id: string): Chardev | undefined { return this.all.get(id); }
  ids(): string[] { return [...this.all.keys()]; }
  list(): Chardev[] { return [...this.all.values()]; }

  add(chr: Chardev): void {
    if (this.all.has(chr.id)) throw new Error(`Chardev with id '${chr.id}' already exists`);
    this.all.set(chr.id, chr);
  }

  /** Forgets `id` and closes it. */
  async remove(id: string): Promise<void> {
    const chr = this.all.get(id);
    this.all.delete(id);
    await chr?.close();
  }

  async closeAll(): Promise<void> {
    const all = this.list();
    this.all.clear();
    await Promise.all(all.map((c) => c.close()));
  }
}
