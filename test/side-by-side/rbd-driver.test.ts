/**
 * driver=rbd beside qsd 7.2 on one real Ceph cluster (test/helpers/ceph.ts:
 * a monitor and a memstore OSD): an image exported by both daemons reads the
 * same bytes; a seeded write sequence through blockd read through qsd, and
 * the reverse, matches the model; nbdinfo --map agrees; `rbd export` sees
 * what blockd wrote; a snapshot made by `rbd snap create` reads through
 * snapshot=; block_resize reaches the image; open errors are qsd's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir } from '../helpers/daemons.ts';
import { cleanupsAfterEach } from '../helpers/live.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import { runTool } from '../helpers/nbd.ts';
import { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { startCephCluster, type CephCluster } from '../helpers/ceph.ts';

const cleanups = cleanupsAfterEach();
let ceph: CephCluster;
let root: string;
beforeAll(async () => {
  root = tempDir('blockd-rbd-');
  ceph = await startCephCluster(join(root, 'ceph'));
}, 120_000);
afterAll(async () => { await ceph?.stop(); });

let seq = 0;
async function daemon(who: Who, extra: string[] = []) {
  const own = join(root, `d${seq++}`);
  mkdirSync(own);
  const sock = join(own, 'nbd.sock');
  const qmpSock = join(own, 'qmp.sock');
  const proc = await startDaemon(who, ['--chardev', `socket,id=m,path=${qmpSock},server=on,wait=off`, '--monitor', 'm',
    '--nbd-server', `addr.type=unix,addr.path=${sock}`, ...extra], qmpSock);
  const qmp = await QmpClient.connect(qmpSock);
  cleanups.push(async () => { qmp.close(); await proc.stop(); });
  return { proc, qmp, dir: own, uri: (name: string) => `nbd+unix:///${name}?socket=${sock}` };
}
type Daemon = Awaited<ReturnType<typeof daemon>>;
const ask = (d: Daemon, cmd: string, args?: Record<string, unknown>) =>
  d.qmp.execute(cmd, args).then((r) => ({ ok: r }), (e: { errorClass?: string; desc?: string; message: string }) => ({ error: e.errorClass, desc: e.desc ?? e.message }));

const MiB = 1024 * 1024;
async function exportBytes(d: Daemon, name: string): Promise<Buffer> {
  const out = join(d.dir, `copy-${seq++}.raw`);
  await runTool('nbdcopy', [d.uri(name), out]);
  return readFileSync(out);
}

/** A seeded write sequence (writes, zeroes, discards) as qemu-io commands, applied to the model too. */
function sequence(seed: number, model: Buffer): string[] {
  let x = seed;
  const rnd = (n: number) => { x = (x * 1103515245 + 12345) & 0x7fffffff; return x % n; };
  const cmds: string[] = [];
  for (let i = 0; i < 24; i++) {
    const off = rnd(model.length / 65536) * 65536;
    const len = Math.min((1 + rnd(16)) * 65536, model.length - off);
    const kind = rnd(4);
    if (kind === 3) { cmds.push('-c', `write -z ${off} ${len}`); model.fill(0, off, off + len); }
    else { const p = 1 + rnd(250); cmds.push('-c', `write -P ${p} ${off} ${len}`); model.fill(p, off, off + len); }
  }
  return cmds;
}

const map = async (uri: string) => JSON.parse(await runTool('nbdinfo', ['--map', '--json', uri])) as unknown[];

describe('driver=rbd as qsd, on one cluster', () => {
  it('both daemons export one image: blockd writes, qsd reads, and the reverse; maps, rbd export, snapshots, resize', async () => {
    await ceph.rbd(['create', '--size', '32M', 'rbd/disk0']);
    const node = (ro = false) => `driver=rbd,node-name=r,pool=rbd,image=disk0,conf=${ceph.conf},cache.direct=on${ro ? ',read-only=on' : ''}`;
    const model = Buffer.alloc(32 * MiB);
    const b = await daemon('blockd', ['--blockdev', node(), '--export', 'type=nbd,id=e,node-name=r,name=r,writable=on']);
    await runTool('qemu-io', ['-f', 'raw', ...sequence(1, model), b.uri('r')]);
    const q = await daemon('qsd', ['--blockdev', node(), '--export', 'type=nbd,id=e,node-name=r,name=r,writable=on']);
    expect((await exportBytes(q, 'r')).equals(model)).toBe(true);
    await runTool('qemu-io', ['-f', 'raw', ...sequence(2, model), q.uri('r')]);
    expect((await exportBytes(b, 'r')).equals(model)).toBe(true);
    expect(await map(b.uri('r'))).toEqual(await map(q.uri('r')));
    // The rbd CLI sees the same image.
    const exported = join(root, `export-${seq++}.raw`);
    await ceph.rbd(['export', 'rbd/disk0', exported]);
    expect(readFileSync(exported).equals(model)).toBe(true);
    // A snapshot taken now reads through snapshot= in both, whatever is written after it.
    await ceph.rbd(['snap', 'create', 'rbd/disk0@s1']);
    const atSnap = Buffer.from(model);
    await runTool('qemu-io', ['-f', 'raw', ...sequence(3, model), b.uri('r')]);
    for (const d of [b, q]) {
      expect(await ask(d, 'blockdev-add', { driver: 'rbd', 'node-name': 'snap', pool: 'rbd', image: 'disk0', snapshot: 's1', conf: ceph.conf, 'read-only': true })).toEqual({ ok: {} });
      await d.qmp.execute('block-export-add', { type: 'nbd', id: 'es', 'node-name': 'snap', name: 'snap' });
      expect((await exportBytes(d, 'snap')).equals(atSnap)).toBe(true);
      expect((await exportBytes(d, 'r')).equals(model)).toBe(true);
    }
    // block_resize through blockd reaches the image (with no export holding the node's size).
    await b.qmp.execute('block-export-del', { id: 'e' });
    await new Promise((r) => setTimeout(r, 200));
    await b.qmp.execute('block_resize', { 'node-name': 'r', size: 48 * MiB });
    expect(JSON.parse(await ceph.rbd(['info', '--format', 'json', 'rbd/disk0'])).size).toBe(48 * MiB);
  });

  it('fails to open as qsd does', async () => {
    await ceph.rbd(['create', '--size', '4M', 'rbd/disk1']);
    await ceph.rbd(['snap', 'create', 'rbd/disk1@s']);
    const cases: Record<string, unknown>[] = [
      { pool: 'rbd', image: 'disk1' },
      { pool: 'rbd', image: 'nope' },
      { pool: 'nopool', image: 'disk1' },
      { pool: 'rbd', image: 'disk1', namespace: 'nons' },
      { pool: 'rbd', image: 'disk1', snapshot: 's' },
      { pool: 'rbd', image: 'disk1', snapshot: 's', 'auto-read-only': true },
      { pool: 'rbd', image: 'disk1', snapshot: 'nosnap', 'read-only': true },
      { pool: 'rbd', image: 'disk1', 'key-secret': 'nosuch', 'read-only': true },
      // No conf: the monitor from server, no cephx (the default search path finds no ceph.conf).
      { pool: 'rbd', image: 'disk1', conf: undefined, server: [{ host: ceph.mon.host, port: String(ceph.mon.port) }], 'auth-client-required': ['none'], 'read-only': true },
    ];
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await daemon(who);
      for (const [i, c] of cases.entries()) {
        const args: Record<string, unknown> = { driver: 'rbd', 'node-name': `n${i}`, conf: ceph.conf, ...c };
        if (args.conf === undefined) delete args.conf;
        seen[who].push(await ask(d, 'blockdev-add', args));
      }
      const nodes = (await d.qmp.execute('query-named-block-nodes')) as { 'node-name': string; ro: boolean; image: { 'virtual-size': number } }[];
      seen[who].push(nodes.map((n) => [n['node-name'], n.ro, n.image['virtual-size']]).sort());
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd.slice(0, -1).filter((r) => 'error' in (r as object)).length).toBe(6);
  });
});

/** Runs blockdev-create to its end: the job's error, or null. */
async function create(d: Daemon, id: string, options: Record<string, unknown>): Promise<string | null> {
  await d.qmp.execute('blockdev-create', { 'job-id': id, options });
  for (;;) {
    const jobs = (await d.qmp.execute('query-jobs')) as { id: string; status: string; error?: string }[];
    const j = jobs.find((x) => x.id === id)!;
    if (j.status === 'concluded') { await d.qmp.execute('job-dismiss', { id }); return j.error ?? null; }
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('blockdev-create driver=rbd as qsd', () => {
  it('creates images with the object size asked for, refuses what qsd refuses, and a qcow2 on rbd works across both', async () => {
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await daemon(who);
      const loc = (image: string, extra: Record<string, unknown> = {}) => ({ pool: 'rbd', image, conf: ceph.conf, ...extra });
      const img = `new-${who}`;
      seen[who].push(
        await create(d, 'c0', { driver: 'rbd', location: loc(img), size: 16 * MiB, 'cluster-size': MiB }),
        await create(d, 'c1', { driver: 'rbd', location: loc(img), size: 16 * MiB }),
        await create(d, 'c2', { driver: 'rbd', location: loc('x', { snapshot: 's' }), size: MiB }),
        await create(d, 'c3', { driver: 'rbd', location: loc('x'), size: MiB, 'cluster-size': 1000 }),
        await create(d, 'c4', { driver: 'rbd', location: loc('x'), size: MiB, 'cluster-size': 2048 }),
        await create(d, 'c5', { driver: 'rbd', location: loc('x', { pool: 'nopool' }), size: MiB }),
      );
      const info = JSON.parse(await ceph.rbd(['info', '--format', 'json', `rbd/${img}`])) as { size: number; order: number };
      seen[who].push(info.size, info.order);
      // A qcow2 made on an rbd image, then opened on it.
      await create(d, 'c6', { driver: 'rbd', location: loc(`q-${who}`), size: 32 * MiB });
      await d.qmp.execute('blockdev-add', { driver: 'rbd', ...loc(`q-${who}`), 'node-name': 'qf' });
      seen[who].push(await create(d, 'c7', { driver: 'qcow2', file: 'qf', size: 24 * MiB }));
      await d.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'q', file: 'qf' });
      await d.qmp.execute('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true });
      await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 1M 2M', '-c', 'write -P 0x62 20M 64k', d.uri('q')]);
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd).toEqual([null, 'error rbd create: File exists', "Can't use snapshot name for image creation",
      'obj size needs to be power of 2', 'obj size too small', 'error opening pool nopool: No such file or directory', 16 * MiB, 20, null]);
    // Each daemon's qcow2 on rbd reads the same through the other.
    const want = Buffer.alloc(24 * MiB);
    want.fill(0x61, MiB, 3 * MiB);
    want.fill(0x62, 20 * MiB, 20 * MiB + 65536);
    for (const [who, other] of [['qsd', 'blockd'], ['blockd', 'qsd']] as const) {
      const d = await daemon(other, ['--blockdev', `driver=rbd,node-name=qf,pool=rbd,image=q-${who},conf=${ceph.conf},read-only=on`,
        '--blockdev', 'driver=qcow2,node-name=q,file=qf,read-only=on', '--export', 'type=nbd,id=e,node-name=q,name=q']);
      expect((await exportBytes(d, 'q')).equals(want)).toBe(true);
    }
  });
});

describe('mirror into rbd', () => {
  it('a local qcow2 mirrored into an rbd image while a client writes, then job-complete pivots: same events as qsd, rbd holds the disk', async () => {
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const own = join(root, `mirror-${who}`);
      mkdirSync(own);
      const src = join(own, 'src.qcow2');
      await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', src, '32M']);
      const model = Buffer.alloc(32 * MiB);
      await runTool('qemu-io', ['-f', 'qcow2', ...sequence(10, model), src]);
      await ceph.rbd(['create', '--size', '32M', `rbd/mirror-${who}`]);
      const d = await daemon(who, ['--blockdev', `driver=file,node-name=sf,filename=${src}`, '--blockdev', 'driver=qcow2,node-name=disk,file=sf',
        '--blockdev', `driver=rbd,node-name=tgt,pool=rbd,image=mirror-${who},conf=${ceph.conf}`,
        '--export', 'type=nbd,id=e,node-name=disk,name=disk,writable=on']);
      const events: string[] = [];
      d.qmp.on('event', (e: { event: string; data?: { status?: string } }) => events.push(e.event === 'JOB_STATUS_CHANGE' ? String(e.data?.status) : e.event));
      await d.qmp.execute('blockdev-mirror', { 'job-id': 'm0', device: 'disk', target: 'tgt', sync: 'full' });
      // A client writes while the job copies.
      await runTool('qemu-io', ['-f', 'raw', ...sequence(11, model), d.uri('disk')]);
      for (let i = 0; !events.includes('BLOCK_JOB_READY'); i++) {
        if (i > 600) throw new Error(`no READY: ${events.join(' ')}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await runTool('qemu-io', ['-f', 'raw', ...sequence(12, model), d.uri('disk')]);
      await d.qmp.execute('job-complete', { id: 'm0' });
      for (let i = 0; !events.includes('null'); i++) {
        if (i > 600) throw new Error(`no end: ${events.join(' ')}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const exp = (await d.qmp.execute('query-block-exports')) as { 'node-name': string }[];
      seen[who].push(events, exp.map((e) => e['node-name']));
      expect((await exportBytes(d, 'disk')).equals(model)).toBe(true);
      await d.qmp.execute('block-export-del', { id: 'e' });
      await new Promise((r) => setTimeout(r, 200));
      const out = join(own, 'rbd.raw');
      await ceph.rbd(['export', `rbd/mirror-${who}`, out]);
      expect(readFileSync(out).equals(model)).toBe(true);
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd[1]).toEqual(['tgt']);
  });
});
