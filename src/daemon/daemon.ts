/**
 * The daemon's life: build everything from a StartupConfig in dependency
 * order, fail as a whole if any piece fails (nothing half-started), and shut
 * down gracefully on SIGINT/SIGTERM or QMP quit.
 */
import { BlockGraph } from '../blockdev/graph.ts';
import { registerDrivers } from '../blockdev/drivers/index.ts';
import { blockdevOptionsType } from '../blockdev/options.ts';
import { fromJson, fromOptionText } from '../qapi/visit.ts';
import type { TypeRef } from '../qapi/types.ts';
import { ExportDriverTable } from '../export/drivers.ts';
import { BlockExports } from '../export/registry.ts';
import { NbdExportDriver } from '../nbd/exports.ts';
import { FuseExportDriver } from '../fuse/export.ts';
import { findBitmapForExport } from '../blockdev/bitmaps/registry.ts';
import type { NbdServer } from '../nbd/server.ts';
import { startNbdServer, type NbdServerStart } from '../nbd/start.ts';
import { NbdServerOptions, type BlockExportOptionsValue } from '../qapi/block-export.ts';
import { JobManager } from '../blockdev/jobs/manager.ts';
import { QmpEventBus } from '../qmp/events.ts';
import { ObjectRegistry } from '../objects/registry.ts';
import { ObjectOptions } from '../objects/table.ts';
import { QmpService } from '../qmp/service.ts';
import type { ChardevRegistry } from '../qmp/chardevs/registry.ts';
import type { Item, StartupConfig } from './cli.ts';
import { metricsRegistry } from './metrics/collectors.ts';
import { MetricsOptions, type MetricsOptionsValue } from './metrics/options.ts';
import { MetricsServer } from './metrics/server.ts';
import { Iothreads } from '../iothread/iothreads.ts';
import { native } from '../platform/native.ts';
import type { Logger } from './logger.ts';

/** An error from one startup item, printed as "blockd: --option value: message". */
export class StartupError extends Error {
  constructor(readonly item: Item | undefined, message: string) { super(message); }
  line(): string {
    if (!this.item) return `blockd: ${this.message}`;
    const v = typeof this.item.value === 'string' ? this.item.value : JSON.stringify(this.item.value);
    return `blockd: --${this.item.option} ${v}: ${this.message}`;
  }
}

/** Validates one item against a schema type, from either its key=value text or its JSON form. */
export function parseItem<T>(type: TypeRef, item: Item, implicitKey?: string): T {
  if (typeof item.value !== 'string') return fromJson(type, item.value) as T;
  return fromOptionText(type, item.value, implicitKey) as T;
}

export class Daemon {
  readonly events = new QmpEventBus();
  readonly objects = new ObjectRegistry();
  /** Drivers reach the objects, the log and the QMP event bus through the graph's environment. */
  readonly graph: BlockGraph;
  readonly nbdServers: NbdServer[] = [];
  /** The NBD entry of the export table: NBD exports need a running server, as in qsd. */
  readonly nbdExports = new NbdExportDriver({ findBitmap: findBitmapForExport, serverRunning: () => this.nbdServers.length > 0 });
  /** Export types, in the order BlockExportType lists them; a new type is one more entry here. */
  readonly fuseExports = new FuseExportDriver({ log: () => this.log });
  readonly exports = new BlockExports(new ExportDriverTable([this.nbdExports, this.fuseExports]), {
    objectType: (id) => this.objects.type(id),
    placementRefusal: (exp) => this.iothreads.placementRefusal(exp),
    onError: (err, id) => this.log.error({ err, id }, 'removing export failed'),
  });
  /** The iothreads' worker threads, and which exports they serve (the QMP command gate). */
  readonly iothreads: Iothreads;
  get commandGate(): Iothreads { return this.iothreads; }
  readonly jobs = new JobManager((event, data) => this.events.emit(event, data));
  readonly qmp: QmpService;
  /** The /metrics endpoint, with --metrics. */
  metrics?: MetricsServer;
  /**
   * What QMP quit does: main.ts's SIGTERM path, and quit's reply waits until
   * the block side is down, so it follows the shutdown's events as in qsd
   * (tests replace it).
   */
  onQuit: () => Promise<void> | void = () => {
    process.kill(process.pid, 'SIGTERM');
    return this.stopBlockSide();
  };
  private stopping?: Promise<void>;
  private blockSideStopping?: Promise<void>;

  constructor(readonly log: Logger) {
    this.graph = new BlockGraph({ objects: this.objects, log, events: this.events });
    this.iothreads = new Iothreads({
      log, exports: () => this.exports.list(), objectType: (id) => this.objects.type(id),
      iothreadProperties: (id) => this.objects.lookup<Record<string, unknown>>(id, 'iothread'),
    });
    // A job that ended gave its nodes back: their exports may go to their iothreads again.
    this.events.subscribe((e) => {
      if (e.event === 'JOB_STATUS_CHANGE' && e.data?.status === 'null') this.iothreads.after();
    });
    registerDrivers(this.graph);
    this.exports.on('deleted', (id) => this.events.emit('BLOCK_EXPORT_DELETED', { id }));
    this.qmp = new QmpService(this);
  }

  requestQuit(): Promise<void> | void { return this.onQuit(); }
  chardevs(): ChardevRegistry { return this.qmp.chardevs; }

  /** Brings up everything in `config`. On failure, tears down what was started and throws StartupError. */
  async start(config: StartupConfig): Promise<void> {
    try {
      for (const item of config.objects) {
        await this.step(item, async () => this.objects.add(parseItem(ObjectOptions, item, 'qom-type')));
      }
      for (const item of config.chardevs) await this.step(item, async () => this.qmp.addChardev(item.value));
      for (const item of config.monitors) await this.step(item, async () => this.qmp.addMonitor(item.value));
      for (const item of config.blockdevs) await this.step(item, () => this.addBlockdev(item));
      for (const item of config.nbdServers) await this.step(item, () => this.startNbdServer(item));
      for (const item of config.exports) await this.step(item, () => this.addExport(item));
      if (config.metrics) await this.step(config.metrics, () => this.startMetrics(config.metrics!));
      for (const cmd of config.commands) {
        await this.step({ option: 'config qmp', value: cmd }, () => this.qmp.runStartupCommand(cmd));
      }
      await this.iothreads.reconsider();
      // Monitors come up last, so a client that can connect sees everything above.
      await this.qmp.startMonitors().catch((e: Error) => { throw new StartupError(undefined, e.message); });
    } catch (e) {
      await this.shutdown();
      throw e;
    }
  }

  private async step(item: Item, fn: () => Promise<unknown>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      if (e instanceof StartupError) throw e;
      throw new StartupError(item, (e as Error).message);
    }
  }

  async addBlockdev(item: Item): Promise<void> {
    const opts = parseItem<Record<string, unknown>>(blockdevOptionsType(this.graph), item, 'driver');
    const node = await this.graph.add(opts);
    this.log.debug({ node: node.nodeName, driver: node.driver.name }, 'blockdev added');
  }

  async startNbdServer(item: Item): Promise<void> {
    this.nbdServers.push(await startNbdServer(this.nbdExports, parseItem<NbdServerStart>(NbdServerOptions, item), this.log, this.objects));
  }

  async startMetrics(item: Item): Promise<void> {
    const opts = parseItem<MetricsOptionsValue>(MetricsOptions, item);
    const registry = metricsRegistry({
      graph: this.graph, exports: this.exports, nbdServers: this.nbdServers, jobs: this.jobs, objects: this.objects,
      servedBy: (id) => this.iothreads.servedBy(id),
      polling: () => {
        const { polls, hits } = native().loopPollStats();
        return [{ loop: 'main', polls, hits }, ...this.iothreads.polling()];
      },
    });
    this.metrics = await MetricsServer.start(opts, registry, (err) => this.log.error({ err }, 'metrics endpoint error'), () => this.iothreads.syncStats());
    this.log.info({ addr: opts.addr, port: this.metrics.port }, 'metrics endpoint listening');
  }

  async addExport(item: Item): Promise<void> {
    const exp = this.exports.add(this.graph, parseItem<BlockExportOptionsValue>(this.exports.drivers.optionsType(), item, 'type'));
    this.log.debug({ id: exp.id, type: exp.type, node: exp.node.nodeName }, 'export added');
  }

  /**
   * SIGINT, SIGTERM and quit: the block side stops (see stopBlockSide), then
   * the monitors close once their pending output (quit's reply) is written.
   * Idempotent.
   */
  shutdown(): Promise<void> {
    this.stopping ??= (async () => {
      await this.metrics?.close();
      await this.stopBlockSide();
      await this.qmp.close();
    })();
    return this.stopping;
  }

  /**
   * qsd's order at exit (blk_exports_kill_all, job_cancel_sync_all,
   * bdrv_close_all), with the monitors still open so their clients see the
   * events: NBD listeners close and every client is cut off at once (its
   * requests still in the block layer finish; their replies are dropped),
   * each export is deleted (BLOCK_EXPORT_DELETED), running jobs are cancelled
   * (their JOB_STATUS_CHANGE sequence and BLOCK_JOB_CANCELLED), then every
   * node is flushed and closed. Idempotent.
   */
  stopBlockSide(): Promise<void> {
    this.blockSideStopping ??= (async () => {
      // Every export back in the main loop first: what follows runs there.
      await this.iothreads.stop();
      await Promise.all(this.nbdServers.map((s) => s.destroy()));
      await this.exports.closeAll();
      // As qsd: running jobs are cancelled (and end consistently) before their nodes close.
      await this.jobs.cancelAll().catch((err: Error) => this.log.error({ err }, 'cancelling jobs at shutdown failed'));
      for (const err of await this.graph.flushAll()) this.log.error({ err }, 'flush at shutdown failed');
      await this.graph.closeAll();
    })();
    return this.blockSideStopping;
  }
}
