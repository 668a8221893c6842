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
import type { QmpHost, CommandTable } from './command.ts';

export class QmpService {
  readonly table: CommandTable;
  readonly dispatcher: Dispatcher;
  readonly monitors: QmpMonitor[] = [];
  private readonly chardevs = new Map<string, ChardevSpec>();
  private readonly pending: MonitorSpec[] = [];
  /** Each chardev's option text, for error messages. */
  private readonly texts = new Map<string, string>();

  constructor(private readonly host: QmpHost) {
    this.table = commandTable(host.exports.drivers);
    this.dispatcher = new Dispatcher(host, this.table);
  }

  /** The chardevs' ids, in the order given. */
  chardevIds(): string[] { return [...this.chardevs.keys()]; }

  /** Checks and records a --chardev (nothing listens until startMonitors). */
  addChardev(value: string | Record<string, unknown>): void {
    const spec = parseChardev(value);
    this.texts.set(spec.id, typeof value === 'string' ? value : JSON.stringify(value));
    if (this.chardevs.has(spec.id)) throw new BlockError('EINVAL', 'duplicate yank instance');
    // As qsd: the credentials must exist, be TLS credentials, and suit the mode, when the chardev is made.
    if (spec.tls) checkAuthzUsable(findTlsCreds(this.host.objects, spec.tls.creds, spec.client ? 'client' : 'server'), spec.tls.authz);
    this.chardevs.set(spec.id, spec);
  }

  /** Checks and records a --monitor. */
  addMonitor(value: string | Record<string, unknown>): void {
    const spec = parseMonitor(value);
    const fd = /^fd:(\d+)$/.exec(spec.chardev);
    if (fd) {
      this.chardevs.set(spec.chardev, { id: spec.chardev, addr: { type: 'fd', fd: Number(fd[1]) }, wait: false });
    } else if (!this.chardevs.has(spec.chardev)) {
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
    for (const spec of this.pending.splice(0)) {
      const chardev = this.chardevs.get(spec.chardev)!;
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
      this.host.log.info({ chardev: spec.chardev, addr: chardev.addr }, chardev.client ? 'QMP monitor connecting out' : 'QMP monitor listening');
      if (chardev.wait && chardev.addr.type !== 'stdio') {
        this.host.log.info({ chardev: spec.chardev }, 'waiting for a QMP client to connect (wait=on)');
        await mon.waitForClient();
      }
    }
  }

  /** Runs a config file's QMP command; throws with the error's desc. */
  async runStartupCommand(msg: Record<string, unknown>): Promise<void> {
    const r = await this.dispatcher.handle(msg, { negotiated: true, oob: false });
    const err = r.error as { desc: string } | undefined;
    if (err) throw new BlockError('EINVAL', err.desc);
  }

  /** Stops every monitor (after their pending replies). */
  async close(): Promise<void> {
    await Promise.all(this.monitors.splice(0).map((m) => m.close()));
  }
}

function listenError(c: ChardevSpec, e: unknown): string {
  if (c.addr.type === 'fd') return `File descriptor '${c.addr.fd}' is not a socket`;
  return bindErrorText(e, c.addr.type === 'unix' ? c.addr.path : undefined);
}
