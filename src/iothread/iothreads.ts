/**
 * Every iothread the daemon runs, and when exports move between them and
 * the main loop. The rule, QEMU's in spirit (a graph change happens with
 * the AioContexts drained): nothing in the main loop changes the graph,
 * starts a job or touches a node's requests while an iothread serves it.
 * So before every QMP command but the pure queries (QUERY_COMMANDS) every
 * export is recalled to the main loop, and after it (and after a job ends)
 * each export with iothread= whose nodes can move (subtree.ts) is leased to
 * its iothread again. Queries see the main loop's graph, which stays right
 * while an export is away; their statistics are brought up to date first.
 *
 * An export whose nodes cannot move is served in the main loop, as qsd
 * serves one whose node cannot change AioContext with fixed-iothread=false;
 * with fixed-iothread=true, block-export-add refuses it.
 */
import type { Logger } from 'pino';
import type { BlockExport } from '../export/export.ts';
import { NbdExport } from '../nbd/exports.ts';
import { Iothread } from './iothread.ts';
import { moveBlocker } from './subtree.ts';

export interface IothreadsOptions {
  log: Logger;
  /** Every export, oldest first. */
  exports: () => BlockExport[];
  /** The qom-type of the object with this id. */
  objectType: (id: string) => string | undefined;
  /** An iothread object's properties (poll-max-ns...). */
  iothreadProperties: (id: string) => Record<string, unknown> | undefined;
}

/** QEMU's default poll-max-ns for an iothread (IOTHREAD_POLL_MAX_NS_DEFAULT). */
export const DEFAULT_IOTHREAD_POLL_MAX_NS = 32768;

/** Commands that change nothing and read no statistics an iothread keeps: no recall before them. */
const HARMLESS = new Set(['qmp_capabilities', 'qom-list', 'qom-get', 'qom-list-types', 'qom-list-properties', 'device-list-properties']);

/** Whether a command only reads (query-*, the introspection commands): it runs with the exports where they are. */
export function isQuery(command: string): boolean {
  return command.startsWith('query-') || command.startsWith('x-query-') || HARMLESS.has(command);
}

export class Iothreads {
  private readonly threads = new Map<string, Iothread>();
  /** Recalls and leases, one at a time, in order. */
  private tail: Promise<void> = Promise.resolve();
  /** After stop(): no export leaves the main loop again. */
  private stopped = false;

  constructor(private readonly opts: IothreadsOptions) {}

  /** block-export-add's check for fixed-iothread exports: why this one cannot run in its iothread, or undefined. */
  placementRefusal(exp: BlockExport): string | undefined {
    if (exp.iothread === undefined || !exp.fixedIothread) return undefined;
    const why = exp instanceof NbdExport ? moveBlocker(exp) : `blockd runs ${exp.type} exports in the main loop`;
    return why === undefined ? undefined : `Cannot move export '${exp.id}' to iothread '${exp.iothread}': ${why}`;
  }

  /** The QMP command gate: recall before a command that may change things, statistics before a query. */
  async before(command: string): Promise<void> {
    if (isQuery(command)) return this.syncStats();
    await this.recallAll();
  }

  after(): void {
    void this.reconsider();
  }

  /** Brings every export back into the main loop. */
  recallAll(): Promise<void> {
    return this.queue(async () => {
      for (const t of this.threads.values()) {
        for (const exp of this.opts.exports()) if (t.serves(exp.id)) await t.recall(exp.id);
      }
    });
  }

  /** Leases each export with iothread= that can move and is not yet in its iothread; ends iothreads whose object is gone. */
  reconsider(): Promise<void> {
    return this.queue(async () => {
      if (this.stopped) return;
      for (const exp of this.opts.exports()) {
        if (exp.iothread === undefined || exp.shuttingDown || !(exp instanceof NbdExport)) continue;
        if (this.opts.objectType(exp.iothread) !== 'iothread') continue;
        const t = this.thread(exp.iothread);
        if (t.serves(exp.id)) continue;
        const why = moveBlocker(exp);
        if (why !== undefined) {
          this.opts.log.debug({ export: exp.id, iothread: exp.iothread, why }, 'export served in the main loop');
          continue;
        }
        try {
          await t.lease(exp);
        } catch (err) {
          this.opts.log.error({ err, export: exp.id }, `iothread '${exp.iothread}' cannot serve exports`);
        }
      }
      for (const [id, t] of this.threads) {
        if (this.opts.objectType(id) === 'iothread') continue;
        this.threads.delete(id);
        await t.stop();
      }
    });
  }

  /** Brings the main loop's statistics up to date with what the iothreads counted. */
  syncStats(): void {
    for (const t of this.threads.values()) t.syncStats();
  }

  /** Each iothread's event-loop polling counters (as of the last syncStats). */
  polling(): { loop: string; polls: number; hits: number }[] {
    return [...this.threads].map(([id, t]) => ({ loop: id, ...t.poll }));
  }

  /** The iothread serving the export now, or undefined (the main loop). */
  servedBy(exportId: string): string | undefined {
    for (const [id, t] of this.threads) if (t.serves(exportId)) return id;
    return undefined;
  }

  /** Shutdown: every export back, every worker ended. */
  stop(): Promise<void> {
    this.stopped = true;
    return this.queue(async () => {
      for (const t of this.threads.values()) await t.stop();
      this.threads.clear();
    });
  }

  private thread(id: string): Iothread {
    let t = this.threads.get(id);
    if (!t) {
      const pollMaxNs = this.opts.iothreadProperties(id)?.['poll-max-ns'];
      t = new Iothread(id, this.opts.log, typeof pollMaxNs === 'number' ? pollMaxNs : DEFAULT_IOTHREAD_POLL_MAX_NS);
      this.threads.set(id, t);
    }
    return t;
  }

  private queue(fn: () => Promise<void>): Promise<void> {
    const run = this.tail.then(fn);
    this.tail = run.catch((err: unknown) => this.opts.log.error({ err }, 'iothread placement failed'));
    return run;
  }
}
