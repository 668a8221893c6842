/**
 * The chardev of a QMP monitor, as query-chardev shows it: its frontend
 * (the monitor) is open, and its filename is qsd's for the socket's state
 * (blockd serves many clients at once on a monitor; the first connected one
 * names it).
 */
import type { Chardev } from './chardev.ts';
import type { QmpMonitor } from '../monitor.ts';
import type { ChardevSpec } from '../chardev.ts';
import { addressProperty, connectedFilename, disconnectedFilename, type ChardevAddress } from './socket-filename.ts';

export class MonitorChardev implements Chardev {
  readonly qomType: string;
  readonly frontend = true;

  constructor(readonly id: string, private readonly monitor: QmpMonitor, private readonly spec: ChardevSpec) {
    this.qomType = spec.addr.type === 'stdio' ? 'chardev-stdio' : 'chardev-socket';
  }

  filename(): string {
    const a = this.spec.addr;
    if (a.type === 'stdio') return 'stdio';
    const listen = !this.spec.client;
    const peer = this.monitor.firstSocket();
    const bound = this.monitor.address();
    const unixPath = typeof bound === 'string' ? bound : a.type === 'unix' ? a.path : '';
    if (peer) return connectedFilename(peer, listen, listen ? unixPath : '');
    return disconnectedFilename(this.address(), listen);
  }

  /** Its socket's address: the one bound when listening, else the one given. */
  private address(): ChardevAddress {
    const a = this.spec.addr;
    const bound = this.monitor.address();
    let addr: ChardevAddress;
    if (bound && typeof bound === 'object') addr = { type: 'inet', host: bound.address, port: String(bound.port) };
    else if (typeof bound === 'string') addr = { type: 'unix', path: bound };
    else if (a.type === 'unix') addr = { type: 'unix', path: a.path };
    else if (a.type === 'inet') addr = { type: 'inet', host: a.host, port: String(a.port) };
    else addr = { type: 'fd', str: a.type === 'fd' ? String(a.fd) : '' };
    return addr;
  }

  socketProperties(): { connected: boolean; addr: Record<string, unknown> } | undefined {
    if (this.spec.addr.type === 'stdio') return undefined;
    return { connected: this.monitor.firstSocket() !== undefined, addr: addressProperty(this.address(), !this.spec.client && this.monitor.address() !== undefined) };
  }

  /** A monitor's chardev lives as long as the monitor (QmpService closes it). */
  close(): Promise<void> { return Promise.resolve(); }
}
