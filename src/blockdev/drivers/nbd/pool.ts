/**
 * Multi-conn (beyond qsd 7.2, whose client uses one connection; the option
 * is named as in QEMU's RFC, `multi-conn`): when the server advertises
 * NBD_FLAG_CAN_MULTI_CONN, up to `multi-conn` connections to the export,
 * each with its own requests in flight and its own reconnect, and each new
 * request goes to the one with the least in flight. The flag promises that
 * a flush on one connection covers writes answered on any of them (doc/
 * proto.md), so a flush goes to one. Without the flag one connection is
 * used, whatever the option says (the server could reorder across them).
 */
import type { Logger } from 'pino';
import { BlockError } from '../../../util/errors.ts';
import type { Extent } from '../../request.ts';
import { NbdClient, type NbdSubmit } from './client.ts';
import type { NegotiatedExport } from './negotiate.ts';
import type { NbdConfig } from './options.ts';
import { TxFlag } from './protocol.ts';

/** What ops.ts needs of the connection(s). */
export interface NbdTransport {
  readonly info: NegotiatedExport;
  submit(s: NbdSubmit): Promise<void>;
  status(s: NbdSubmit): Promise<Extent[] | undefined>;
  close(): Promise<void>;
}

export const MAX_MULTI_CONN = 16;

export class NbdPool implements NbdTransport {
  private constructor(private readonly clients: NbdClient[]) {}

  get info(): NegotiatedExport { return this.clients[0]!.info; }
  get connections(): number { return this.clients.length; }

  static async open(cfg: NbdConfig, log: Logger): Promise<NbdPool> {
    const first = await NbdClient.open(cfg, log);
    const clients = [first];
    const want = first.info.flags & TxFlag.CAN_MULTI_CONN ? cfg.multiConn : 1;
    try {
      while (clients.length < want) {
        const c = await NbdClient.open({ ...cfg, openTimeoutMs: 0 }, log);
        clients.push(c);
        if (c.info.size !== first.info.size || c.info.flags !== first.info.flags) {
          throw new BlockError('EIO', 'the server answered the connections of multi-conn differently');
        }
      }
    } catch (e) {
      for (const c of clients) await c.close();
      throw e;
    }
    if (want < cfg.multiConn) log.info({ wanted: cfg.multiConn }, 'nbd: the server does not advertise multi-conn; using one connection');
    return new NbdPool(clients);
  }

  private pick(): NbdClient {
    let best = this.clients[0]!;
    for (const c of this.clients) if (c.connected && (!best.connected || c.load < best.load)) best = c;
    return best;
  }

  submit(s: NbdSubmit): Promise<void> { return this.pick().submit(s); }
  status(s: NbdSubmit): Promise<Extent[] | undefined> { return this.pick().status(s); }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close()));
  }
}
