/**
 * driver=nbd multi-conn (issue 14 item 3, beyond qsd): against nbdkit
 * memory (which advertises NBD_FLAG_CAN_MULTI_CONN) an nbd node with
 * multi-conn=4 opens four connections and spreads parallel requests over
 * them (nbdkit's log filter shows which connection served each write); the
 * data read back through blockd's export equals the remote's. A server that
 * does not advertise it (nbdkit's multi-conn filter, mode disable) gets one
 * connection; a value over 16 is refused.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BLOCKD, startDaemon, tempDir } from '../helpers/daemons.ts';
import { cleanupsAfterEach } from '../helpers/live.ts';
import { startNbdkit } from '../helpers/nbdkit.ts';
import { run, tryRun } from '../helpers/tools.ts';

const cleanups = cleanupsAfterEach();

async function setup(multiConn: number, filters: string[]) {
  const dir = tempDir('blockd-nbdmc-');
  const log = join(dir, 'log.txt');
  const k = await startNbdkit(join(dir, 'remote.sock'), ['memory', '32M', `logfile=${log}`, ...filters.slice(1)], ['--filter=log', ...filters.slice(0, 1)]);
  cleanups.push(() => k.stop());
  const sock = join(dir, 'front.sock');
  const d = await startDaemon('blockd', [
    '--blockdev', `driver=nbd,node-name=n0,server.type=unix,server.path=${k.sock},multi-conn=${multiConn}`,
    '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e,node-name=n0,name=disk,writable=on',
  ], sock);
  cleanups.push(async () => { await d.stop(); });
  return { log, uri: `nbd+unix:///disk?socket=${sock}`, remote: `nbd+unix:///?socket=${k.sock}` };
}

const connectionsOf = (log: string, what: RegExp) =>
  new Set(readFileSync(log, 'utf8').split('\n').filter((l) => what.test(l)).map((l) => /connection=(\d+)/.exec(l)?.[1]).filter(Boolean));

describe('driver=nbd multi-conn', () => {
  it('multi-conn=4 on a server that advertises it: four connections share the requests', async () => {
    const s = await setup(4, []);
    const cmds = Array.from({ length: 32 }, (_, i) => ['-c', `aio_write -P ${i + 1} ${i * 512}k 256k`]).flat();
    run('qemu-io', ['-f', 'raw', ...cmds, '-c', 'aio_flush', s.uri]);
    run('qemu-io', ['-f', 'raw', '-c', 'read -P 1 0 256k', '-c', `read -P 32 ${31 * 512}k 256k`, s.uri]);
    expect(connectionsOf(s.log, / Connect /).size).toBe(4);
    expect(connectionsOf(s.log, / Write /).size).toBeGreaterThan(1);
    expect(run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.uri, s.remote])).toContain('Images are identical');
  });

  it('a server without NBD_FLAG_CAN_MULTI_CONN gets one connection', async () => {
    const s = await setup(4, ['--filter=multi-conn', 'multi-conn-mode=disable']);
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 1M', '-c', 'read -P 7 0 1M', s.uri]);
    expect(connectionsOf(s.log, / Connect /).size).toBe(1);
  });

  it('refuses more than 16', () => {
    const r = tryRun(BLOCKD, ['--blockdev', 'driver=nbd,node-name=n0,server.type=unix,server.path=/nonexistent,multi-conn=17']);
    expect(r.stderr).toContain("Parameter 'multi-conn' expects a value between 1 and 16");
  });
});
