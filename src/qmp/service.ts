/**
 * The daemon's QMP side in one object: the command table, the dispatcher,
 * the monitors (--chardev/--monitor) and the start-up commands of a config
 * file. src/daemon/daemon.ts owns one.
 */
import { bindErrorText } from '../platform/bind-error.ts';
import { BlockError } from '../util/errors.ts';
import { checkAuthzUsable, findTlsCreds } from '../objects/tls/lookup.ts';
import { Dispatcher } from './dispatcher.ts';
import { QmpMonitor } from './monitor.ts';
import { parseChardev, parseMonitor, type ChardevSpec, type MonitorSpec } from './chardev.ts';
import { commandTable } from './commands/index.ts';
import { greeting } from './version.ts';
import { ChardevRegistry } from './chardevs/registry.ts';
import { MonitorChardev } from './chardevs/monitor-chardev.ts';
import { FileChardev } from './chardevs/chardev.ts';
import { SocketChardev, type SocketTarget } from './chardevs/socket-chardev.ts';
import { openChardev } from './chardevs/open.ts';
import type { QmpHost, CommandTable } from './command.ts';

export class QmpService {
  readonly table: CommandTable;
  readonly dispatcher: Dispatcher;
  readonly monitors: QmpMonitor[] = [];
  /** Every chardev, once started (monitors' and others'), and the ones chardev-add makes. */
  readonly chardevs = new ChardevRegistry();
  private readonly specs = new Map<string, ChardevSpec>();
  private readonly pending: MonitorSpec[] = [];
  /** Each chardev's option text, for error messages. */
  private readonly texts = new Map<string, string>();

  constructor(private readonly host: QmpHost) {
    this.table = commandTable(host.exports.drivers);
    this.dispatcher = new Dispatcher(host, this.table);
  }

  /** The chardevs' ids, in the order given. */
  chardevIds(): string[] { return this.chardevs.ids(); }

  /** Checks and records a --chardev (nothing listens until startMonitors). */
  async addChardev(value: string | Record<string, unknown>): Promise<void> {
    const spec = parseChardev(value);
    // qsd's texts: a second socket of an id fails on its yank instance, anything else on the /chardevs child.
    if (this.specs.has(spec.id) && !('backend' in spec)) throw new BlockError('EINVAL', 'duplicate yank instance');
    if (this.specs.has(spec.id) || this.chardevs.has(spec.id)) throw new BlockError('EINVAL', `attempt to add duplicate property '${spec.id}' to object (type 'container')`);
    this.texts.set(spec.id, typeof value === 'string' ? value : JSON.stringify(value));
    if ('backend' in spec) {
      // Opened at once, as qsd opens them (a file chardev's file exists from here on).
      this.chardevs.add(await openChardev(spec.id, spec.backend, { objects: this.host.objects, report: (line) => process.stderr.write(`blockd: ${line}\n`) }));
      return;
    }
    // As qsd: the credentials must exist, be TLS credentials, and suit the mode, when the chardev is made.
    if (spec.tls) checkAuthzUsable(findTlsCreds(this.host.objects, spec.tls.creds, spec.client ? 'client' : 'server'), spec.tls.authz);
    this.specs.set(spec.id, spec);
  }

  /** Checks and records a --monitor. */
  addMonitor(value: string | Record<string, unknown>): void {
    const spec = parseMonitor(value);
    const fd = /^fd:(\d+)$/.exec(spec.chardev);
    if (fd) {
      this.specs.set(spec.chardev, { id: spec.chardev, addr: { type: 'fd', fd: Number(fd[1]) }, wait: false });
    } else if (this.chardevs.has(spec.chardev)) {
      throw new BlockError('EINVAL', `a QMP monitor needs a socket or stdio chardev; blockd does not serve one on '${this.chardevs.get(spec.chardev)!.qomType}'`);
    } else if (!this.specs.has(spec.chardev)) {
      throw new BlockError('EINVAL', `chardev "${spec.chardev}" not found`);
    }
    if (this.pending.some((m) => m.chardev === spec.chardev)) throw new BlockError('EINVAL', `Device '${spec.chardev}' is in use`);
    this.pending.push(spec);
  }

  /**
   * Starts listening on every recorded monitor; with wait=on, until its first
   * client arrives. Errors name the chardev ("--chardev TEXT: message").
   */
  async startMonitors(): Promise<void> {
    const monitored = new Set(this.pending.map((m) => m.chardev));
    for (const spec of this.pending.splice(0)) {
      const chardev = this.specs.get(spec.chardev)!;
      const mon = new QmpMonitor(spec.id ?? spec.chardev, this.dispatcher, this.host.events, {
        pretty: spec.pretty, greeting: greeting(), log: this.host.log.child({ component: 'qmp', monitor: spec.chardev }),
        tls: chardev.tls
          ? { creds: findTlsCreds(this.host.objects, chardev.tls.creds, chardev.client ? 'client' : 'server'), authz: chardev.tls.authz, objects: this.host.objects }
          : undefined,
      });
      const client = chardev.client && (chardev.addr.type === 'unix' || chardev.addr.type === 'inet') ? chardev.addr : undefined;
      try {
        // Client mode: qsd reports a later failure as one plain line on stderr, as its start-up errors.
        if (client) await mon.connectOut(client, chardev.client!.reconnect, (line) => process.stderr.write(`blockd: ${line}\n`));
        else if (chardev.client && chardev.addr.type === 'fd') await mon.serveConnected(chardev.addr.fd);
        else await mon.listen(chardev.addr);
      } catch (e) {
        const text = this.texts.get(spec.chardev);
        const message = client ? (e as Error).message : listenError(chardev, e);
        throw new BlockError('EINVAL', `${text !== undefined ? `--chardev ${text}: ` : ''}${message}`);
      }
      this.monitors.push(mon);
      this.chardevs.add(new MonitorChardev(spec.chardev, mon, chardev));
      this.host.log.info({ chardev: spec.chardev, addr: chardev.addr }, chardev.client ? 'QMP monitor connecting out' : 'QMP monitor listening');
      if (chardev.wait && chardev.addr.type !== 'stdio') {
        this.host.log.info({ chardev: spec.chardev }, 'waiting for a QMP client to connect (wait=on)');
        await mon.waitForClient();
      }
    }
    for (const [id, spec] of this.specs) if (!monitored.has(id) && !this.chardevs.has(id)) await this.startPlainChardev(id, spec);
  }

  /** A --chardev no --monitor uses: a socket chardev with no frontend, as in qsd (it listens or connects, and that is all). */
  private async startPlainChardev(id: string, spec: ChardevSpec): Promise<void> {
    if (spec.addr.type === 'stdio') return void this.chardevs.add(new FileChardev(id, 'chardev-stdio', 'stdio', []));
    if (spec.addr.type === 'fd') return; // an inherited socket no monitor serves: left alone
    const addr: SocketTarget = spec.addr.type === 'unix' ? { type: 'unix', path: spec.addr.path } : { type: 'inet', host: spec.addr.host, port: String(spec.addr.port) };
    const chr = new SocketChardev(id, {
      addr, listen: !spec.client, wait: spec.wait, nodelay: false, reconnect: spec.client?.reconnect ?? 0,
      tls: spec.tls ? { creds: findTlsCreds(this.host.objects, spec.tls.creds, spec.client ? 'client' : 'server'), authz: spec.tls.authz, objects: this.host.objects } : undefined,
      report: (line) => process.stderr.write(`blockd: ${line}\n`),
    });
    try {
      await chr.open();
    } catch (e) {
      await chr.close();
      const text = this.texts.get(id);
      throw new BlockError('EINVAL', `${text !== undefined ? `--chardev ${text}: ` : ''}${(e as Error).message}`);
    }
    this.chardevs.add(chr);
  }

  /** Runs a config file's QMP command; throws with the error's desc. */
  async runStartupCommand(msg: Record<string, unknown>): Promise<void> {
    const r = await this.dispatcher.handle(msg, { negotiated: true, oob: false });
    const err = r.error as { desc: string } | undefined;
    if (err) throw new BlockError('EINVAL', err.desc);
  }

  /** Stops every monitor (after their pending replies). */
  async close(): Promise<void> {
    await this.chardevs.closeAll();
    await Promise.all(this.monitors.splice(0).map((m) => m.close()));
  }
}

function listenError(c: ChardevSpec, e: unknown): string {
  if (c.addr.type === 'fd') return `File descriptor '${c.addr.fd}' is not a socket`;
  return bindErrorText(e, c.addr.type === 'unix' ? c.addr.path : undefined);
}
