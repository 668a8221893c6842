/**
 * A qsd/blockd pair for side-by-side tests: each daemon gets its own
 * directory holding identical images (made by the same `setup`), the same
 * arguments (paths relative to its directory), a QMP monitor and an NBD
 * server on a Unix socket there. `stop()` stops both and removes the
 * directories, also after a failure.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir } from './daemons.ts';
import { qmpDaemon, type Ev } from './live.ts';
import { nbdsh } from './nbd.ts';

export type Who = 'qsd' | 'blockd';

/** Python for Side.py scripts: emap(h) is the whole export's base:allocation map, [length, flags, ...]. */
export const EMAP = `def emap(h):
    out = []
    def cb(meta, off, ents, err):
        out.extend(ents); return 0
    pos, size = 0, h.get_size()
    while pos < size:
        n = len(out); h.block_status(size - pos, pos, cb)
        pos += sum(out[n::2])
    return out
`;
export const BOTH: readonly Who[] = ['qsd', 'blockd'];

export interface Side {
  who: Who;
  dir: string;
  qmp: QmpClient;
  events: Ev[];
  /** The NBD server's socket. */
  sock: string;
  /** nbd+unix URI of an export of this side. */
  uri(name: string): string;
  /** Runs a Python libnbd script (nbdsh's prelude, `uri` = this side's export `name`) and parses the JSON it prints. */
  py(name: string, script: string, timeoutMs?: number): Promise<unknown>;
}

export interface Pair {
  dir: string;
  qsd: Side;
  blockd: Side;
  /** Stops both daemons, keeping the images. */
  stopDaemons(): Promise<void>;
  /** Stops both daemons and removes the directories. */
  stop(): Promise<void>;
}

/**
 * Starts both daemons. `setup(dir)` makes the images in a side's directory;
 * `args(dir)` gives the daemon's arguments (without monitor and NBD server).
 */
export async function startPair(setup: (dir: string) => void, args: (dir: string) => string[]): Promise<Pair> {
  const dir = tempDir('blockd-pair-');
  const stops: (() => Promise<unknown>)[] = [];
  const stopDaemons = async () => {
    for (const s of stops.splice(0).reverse()) await s().catch(() => undefined);
  };
  const stop = async () => {
    await stopDaemons();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const side = async (who: Who): Promise<Side> => {
      const d = join(dir, who);
      mkdirSync(d);
      setup(d);
      const sock = join(d, 'nbd.sock');
      const started = await qmpDaemon(who, d, ['--nbd-server', `addr.type=unix,addr.path=${sock}`, ...args(d)]);
      stops.push(async () => { started.qmp.close(); await started.proc.stop(); });
      const uri = (name: string) => `nbd+unix:///${name}?socket=${sock}`;
      return {
        who, dir: d, qmp: started.qmp, events: started.events, sock, uri,
        py: async (name, script, timeoutMs) => JSON.parse(await nbdsh(uri(name), script, timeoutMs)),
      };
    };
    const qsd = await side('qsd');
    const blockd = await side('blockd');
    return { dir, qsd, blockd, stopDaemons, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
