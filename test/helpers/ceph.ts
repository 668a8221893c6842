/**
 * A single-node Ceph cluster for the rbd tests, from Debian's ceph-mon,
 * ceph-osd and ceph-common: one monitor and one OSD with the memstore object
 * store (nothing on disk but the monitor's store), auth none, pool `rbd` of
 * size 1, placed in CRUSH by the helper, all under `dir` (ceph.conf, logs, sockets). Comes up in about ten
 * seconds; stop() kills both daemons.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { requireTool } from './tools.ts';
import { runTool } from './nbd.ts';
import { getPort } from './port.ts';

export interface CephCluster {
  conf: string;
  /** The monitor's address (v1 protocol). */
  mon: { host: string; port: number };
  pool: string;
  /** `rbd` CLI against this cluster. */
  rbd(args: string[]): Promise<string>;
  stop(): Promise<void>;
}

export async function startCephCluster(dir: string): Promise<CephCluster> {
  for (const t of ['ceph-mon', 'ceph-osd', 'monmaptool', 'ceph', 'rbd']) requireTool(t);
  mkdirSync(join(dir, 'run'), { recursive: true });
  const fsid = randomUUID();
  const port = await getPort();
  const conf = join(dir, 'ceph.conf');
  writeFileSync(conf, `[global]
fsid = ${fsid}
mon host = v1:127.0.0.1:${port}
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
osd pool default pg autoscale mode = off
osd class update on start = false
osd crush update on start = false
osd objectstore = memstore
memstore device bytes = 1073741824
run dir = ${dir}/run
log file = ${dir}/$name.log
mon cluster log file = ${dir}/cluster.log
admin socket = ${dir}/run/$name.asok
pid file = ${dir}/run/$name.pid
mon data = ${dir}/mon.$id
osd data = ${dir}/osd.$id
keyring = /dev/null
ms bind ipv6 = false
`);
  const c = ['-c', conf];
  const pids: number[] = [];
  const stop = async () => {
    for (const name of ['osd.0', 'mon.a']) {
      let pid: number;
      try { pid = Number(readFileSync(join(dir, 'run', `${name}.pid`), 'utf8')); } catch { continue; }
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      pids.push(pid);
    }
    // Wait until they are gone (the directory is removed after this).
    for (const pid of pids) {
      for (let i = 0; i < 100; i++) {
        try { process.kill(pid, 0); } catch { break; }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  try {
    await runTool('monmaptool', ['--create', '--clobber', '--addv', 'a', `[v1:127.0.0.1:${port}]`, '--fsid', fsid, join(dir, 'monmap')]);
    await runTool('ceph-mon', [...c, '--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap')]);
    await runTool('ceph-mon', [...c, '-i', 'a']);
    const osdUuid = randomUUID();
    const id = (await runTool('ceph', [...c, 'osd', 'new', osdUuid], { timeoutMs: 60_000 })).trim();
    mkdirSync(join(dir, `osd.${id}`));
    await runTool('ceph-osd', [...c, '-i', id, '--mkfs', '--osd-uuid', osdUuid]);
    // The OSD does not place itself (its start-up crush update now and then meets 'wrong fsid' from a fresh monitor).
    await runTool('ceph', [...c, 'osd', 'crush', 'add', `osd.${id}`, '1.0', 'root=default'], { timeoutMs: 60_000 });
    await runTool('ceph-osd', [...c, '-i', id]);
    await runTool('ceph', [...c, 'osd', 'pool', 'create', 'rbd', '8'], { timeoutMs: 60_000 });
    await runTool('ceph', [...c, 'osd', 'pool', 'set', 'rbd', 'size', '1', '--yes-i-really-mean-it'], { timeoutMs: 60_000 });
    await runTool('rbd', [...c, 'pool', 'init', 'rbd'], { timeoutMs: 60_000 });
  } catch (e) {
    await stop();
    throw e;
  }
  return { conf, mon: { host: '127.0.0.1', port }, pool: 'rbd', rbd: (args) => runTool('rbd', [...c, ...args], { timeoutMs: 60_000 }), stop };
}
