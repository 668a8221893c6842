/**
 * driver=rbd beside qsd 7.2 on one real Ceph cluster (test/helpers/ceph.ts:
 * a monitor and a memstore OSD): an image exported by both daemons reads the
 * same bytes; a seeded write sequence through blockd read through qsd, and
 * the reverse, matches the model; nbdinfo --map agrees; `rbd export` sees
 * what blockd wrote; a snapshot made by `rbd snap create` reads through
 * snapshot=; block_resize reaches the image; open errors are qsd's.
 * encrypt (librbd's LUKS1/LUKS2): blockdev-create with encrypt gives qsd's
 * results, sizes and refusals; an image formatted by either daemon or by
 * `rbd encryption format` opens in both with the passphrase, the same bytes,
 * seeded writes through one read back through the other; a wrong passphrase
 * or format fails as in qsd.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
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
      const nodes = (await d.qmp.execute('query-named-block-nodes')) as { 'node-name': string; ro: boolean; image: { 'virtual-size': number; 'format-specific'?: unknown } }[];
      seen[who].push(nodes.map((n) => [n['node-name'], n.ro, n.image['virtual-size'], n.image['format-specific']]).sort());
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

describe('encrypt (librbd LUKS) as qsd', () => {
  const secrets = ['--object', 'secret,id=pw,data=correct horse', '--object', 'secret,id=bad,data=battery staple'];
  const loc = (image: string) => ({ pool: 'rbd', image, conf: ceph.conf });
  const rbdImages = async () => (JSON.parse(await ceph.rbd(['ls', '--format', 'json', 'rbd'])) as string[]).sort();
  // Every LUKS format and load runs librbd's key derivation (seconds each, more under load): long timeouts.
  const nodes = async (d: Daemon) => ((await d.qmp.execute('query-named-block-nodes')) as { 'node-name': string; ro: boolean; image: { 'virtual-size': number; 'format-specific'?: unknown } }[])
    .map((n) => [n['node-name'], n.ro, n.image['virtual-size'], n.image['format-specific']]).sort();

  it('blockdev-create with encrypt: the same results, sizes and refusals as qsd; a refused format removes the image', async () => {
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await daemon(who, secrets);
      seen[who].push(
        await create(d, 'e0', { driver: 'rbd', location: loc(`enc1-${who}`), size: 16 * MiB, encrypt: { format: 'luks', 'key-secret': 'pw' } }),
        await create(d, 'e1', { driver: 'rbd', location: loc(`enc2-${who}`), size: 32 * MiB, encrypt: { format: 'luks2', 'key-secret': 'pw', 'cipher-alg': 'aes-128' } }),
        // librbd's LUKS2 header does not fit in 16 MiB.
        await create(d, 'e7', { driver: 'rbd', location: loc(`enc-small-${who}`), size: 16 * MiB, encrypt: { format: 'luks2', 'key-secret': 'pw' } }),
        await create(d, 'e2', { driver: 'rbd', location: loc(`enc-nosecret-${who}`), size: 16 * MiB, encrypt: { format: 'luks', 'key-secret': 'nosuch' } }),
        await create(d, 'e3', { driver: 'rbd', location: loc(`enc-twofish-${who}`), size: 16 * MiB, encrypt: { format: 'luks2', 'key-secret': 'pw', 'cipher-alg': 'twofish-128' } }),
        await create(d, 'e4', { driver: 'rbd', location: loc(`enc1-${who}`), size: 16 * MiB, encrypt: { format: 'luks', 'key-secret': 'pw' } }),
        await ask(d, 'blockdev-create', { 'job-id': 'e5', options: { driver: 'rbd', location: loc('x'), size: MiB, encrypt: { format: 'luks3', 'key-secret': 'pw' } } }),
        await ask(d, 'blockdev-create', { 'job-id': 'e6', options: { driver: 'rbd', location: loc('x'), size: MiB, encrypt: { format: 'luks' } } }),
      );
      for (const img of [`enc1-${who}`, `enc2-${who}`]) {
        seen[who].push(await ceph.rbd(['info', '--format', 'json', `rbd/${img}`]).then((j) => (JSON.parse(j) as { size: number }).size, (e: Error) => e.message));
      }
      // Through the encryption each is the size asked for.
      for (const [i, [img, format]] of [[`enc1-${who}`, 'luks'], [`enc2-${who}`, 'luks2']].entries()) {
        seen[who].push(await ask(d, 'blockdev-add', { driver: 'rbd', 'node-name': `n${i}`, ...loc(img), encrypt: { format, 'key-secret': 'pw' }, 'read-only': true }));
      }
      seen[who].push(await nodes(d));
    }
    expect(seen.blockd.map((x) => (typeof x === 'string' ? x.replace(/-blockd/g, '-qsd') : x))).toEqual(seen.qsd);
    expect(seen.qsd.slice(0, 2)).toEqual([null, null]);
    expect(seen.qsd[3]).toBe("No secret with id 'nosuch'");
    expect((seen.qsd[8] as number) > 16 * MiB && (seen.qsd[9] as number) > 32 * MiB).toBe(true);
    const left = await rbdImages();
    for (const who of BOTH) {
      expect(left).toContain(`enc1-${who}`);
      expect(left).not.toContain(`enc-nosecret-${who}`);
      expect(left).not.toContain(`enc-twofish-${who}`);
      expect(left).not.toContain(`enc-small-${who}`);
    }
    }, 300_000);

  it('an image formatted by one daemon (or `rbd encryption format`) opens in the other: same bytes, seeded writes both ways, qsd\'s errors', async () => {
    const passFile = join(root, 'passphrase');
    writeFileSync(passFile, 'correct horse');
    await ceph.rbd(['create', '--size', '24M', 'rbd/enc-cli']);
    await ceph.rbd(['encryption', 'format', 'rbd/enc-cli', 'luks2', passFile]);
    const maker = await daemon('qsd', secrets);
    expect(await create(maker, 'm0', { driver: 'rbd', location: loc('enc-by-qsd'), size: 8 * MiB, encrypt: { format: 'luks', 'key-secret': 'pw' } })).toBe(null);
    const maker2 = await daemon('blockd', secrets);
    expect(await create(maker2, 'm1', { driver: 'rbd', location: loc('enc-by-blockd'), size: 24 * MiB, encrypt: { format: 'luks2', 'key-secret': 'pw' } })).toBe(null);
    const node = (image: string, format: string, secret = 'pw') => `driver=rbd,node-name=r,pool=rbd,image=${image},conf=${ceph.conf},cache.direct=on,encrypt.format=${format},encrypt.key-secret=${secret}`;
    let seed = 30;
    for (const [image, format, first] of [['enc-by-qsd', 'luks', 'blockd'], ['enc-by-blockd', 'luks2', 'qsd'], ['enc-cli', 'luks2', 'blockd']] as const) {
      const second: Who = first === 'qsd' ? 'blockd' : 'qsd';
      const a = await daemon(first, [...secrets, '--blockdev', node(image, format), '--export', 'type=nbd,id=e,node-name=r,name=r,writable=on']);
      const b = await daemon(second, [...secrets, '--blockdev', node(image, format), '--export', 'type=nbd,id=e,node-name=r,name=r,writable=on']);
      const before = await exportBytes(a, 'r');
      expect((await exportBytes(b, 'r')).equals(before)).toBe(true);
      // The rbd CLI does not grow the image by the header as QEMU's create does.
      if (image === 'enc-cli') expect(before.length).toBeLessThan(24 * MiB);
      const model = Buffer.from(before);
      // Filled first: librbd (16.2) reads the part of an object a write did not touch as its raw zeros
      // decrypted (noise, the same through both daemons), not as zeros; a written image is exact.
      await runTool('qemu-io', ['-f', 'raw', '-c', `write -P 0x5a 0 ${model.length}`, a.uri('r')]);
      model.fill(0x5a);
      await runTool('qemu-io', ['-f', 'raw', ...sequence(seed++, model), a.uri('r')]);
      expect((await exportBytes(b, 'r')).equals(model)).toBe(true);
      await runTool('qemu-io', ['-f', 'raw', ...sequence(seed++, model), b.uri('r')]);
      expect((await exportBytes(a, 'r')).equals(model)).toBe(true);
      expect(await map(a.uri('r'))).toEqual(await map(b.uri('r')));
      expect(await nodes(a)).toEqual(await nodes(b));
      // The raw image is not the plain text.
      const raw = join(root, `raw-${seq++}.img`);
      await ceph.rbd(['export', `rbd/${image}`, raw]);
      expect(readFileSync(raw).subarray(0, 4).toString()).toBe('LUKS');
      await a.qmp.execute('block-export-del', { id: 'e' });
      await b.qmp.execute('block-export-del', { id: 'e' });
      await new Promise((r) => setTimeout(r, 200));
      await a.qmp.execute('blockdev-del', { 'node-name': 'r' });
      await b.qmp.execute('blockdev-del', { 'node-name': 'r' });
    }
    // Wrong passphrase, wrong LUKS version, an image with no encryption, no such secret: qsd's errors.
    await ceph.rbd(['create', '--size', '4M', 'rbd/plain']);
    const cases: Record<string, unknown>[] = [
      { image: 'enc-by-qsd', encrypt: { format: 'luks', 'key-secret': 'bad' } },
      { image: 'enc-cli', encrypt: { format: 'luks2', 'key-secret': 'bad' } },
      { image: 'enc-by-qsd', encrypt: { format: 'luks2', 'key-secret': 'pw' } },
      { image: 'enc-cli', encrypt: { format: 'luks', 'key-secret': 'pw' } },
      { image: 'plain', encrypt: { format: 'luks', 'key-secret': 'pw' } },
      { image: 'enc-by-qsd', encrypt: { format: 'luks', 'key-secret': 'nosuch' } },
      { image: 'nope', encrypt: { format: 'luks', 'key-secret': 'nosuch' } },
      { image: 'enc-by-qsd', encrypt: { format: 'luks', 'key-secret': 'pw' }, 'read-only': true },
      // Without encrypt: the raw image, whose first bytes name its LUKS version (format-specific).
      { image: 'enc-by-qsd', 'read-only': true },
      { image: 'enc-cli', 'read-only': true },
    ];
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await daemon(who, secrets);
      for (const [i, c] of cases.entries()) seen[who].push(await ask(d, 'blockdev-add', { driver: 'rbd', 'node-name': `n${i}`, pool: 'rbd', conf: ceph.conf, ...c }));
      seen[who].push(await nodes(d));
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd.slice(0, 2)).toEqual([{ error: 'GenericError', desc: 'encryption load fail: Operation not permitted' }, { error: 'GenericError', desc: 'encryption load fail: Operation not permitted' }]);
    expect(seen.qsd.slice(0, 7).every((r) => 'error' in (r as object))).toBe(true);
    // Through the encryption nothing names it; the raw images are larger by the header.
    expect(seen.qsd.at(-1)).toEqual([['n7', true, 8 * MiB, { type: 'rbd', data: {} }],
      ['n8', true, 12 * MiB, { type: 'rbd', data: { 'encryption-format': 'luks' } }], ['n9', true, 24 * MiB, { type: 'rbd', data: { 'encryption-format': 'luks2' } }]]);
    }, 300_000);
});
