/**
 * Scenario: incremental backups of a disk in use. bin/blockd serves
 * disk.qcow2 as export 'disk' and a client writes through it the whole time
 * (paused only while a backup's point in time is set, so the model's copy at
 * that moment is exact). The backups form one chain, each a qcow2 backed by
 * the one before:
 *
 *   full.qcow2   blockdev-backup sync=full, with a new persistent bitmap 'inc'
 *   inc1.qcow2   push: blockdev-backup sync=incremental bitmap=inc
 *   inc2.qcow2   pull: 'inc' is frozen and 'inc2' takes over; a sync=none
 *                backup into a temporary overlay (fleecing) keeps the point
 *                in time; an export of that overlay offers
 *                qemu:dirty-bitmap:inc, and a libnbd client copies exactly
 *                the dirty extents into inc2.qcow2 (through qemu-nbd)
 *   inc3.qcow2   push again, with bitmap 'inc2'
 *
 * The daemon restarts between backups — cleanly, and once by SIGKILL (after
 * the client's flush), after which the persistent bitmap must still be
 * usable. At the end each backup, read through its chain, equals the disk as
 * it was at its point in time (qemu-img compare against the model's copy),
 * the disk holds every acknowledged write, and every image passes
 * `qemu-img check`.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/daemons.ts';
import { run, tryRun, SYSTEM_PYTHON } from '../helpers/tools.ts';
import { RawClient, rawNegotiate } from '../helpers/nbd.ts';
import { Writer, flush, readAll, qmpDaemon, waitFor } from '../helpers/live.ts';

const SIZE = 32 * 1024 * 1024;
/** Fine enough that the writes between two backups leave most of the disk clean. */
const GRANULARITY = 4096;

/**
 * Pull mode's copy: the dirty extents of `bitmap` as the export reports
 * them, read from the export and written at the same offsets into `target`
 * (a qcow2 served by qemu-nbd through socket activation). Prints the extents.
 */
const PULL = `
import nbd, sys, json
uri, target, bitmap = sys.argv[1:4]
ctx = 'qemu:dirty-bitmap:' + bitmap
src = nbd.NBD()
src.add_meta_context(ctx)
src.connect_uri(uri)
assert src.can_meta_context(ctx)
size = src.get_size()
dirty = []
pos = 0
while pos < size:
    seen = [pos]
    def cb(name, offset, entries, err):
        if name != ctx:
            return 0
        o = offset
        for i in range(0, len(entries), 2):
            if entries[i + 1] & 1:
                dirty.append([o, entries[i]])
            o += entries[i]
        seen[0] = o
        return 0
    src.block_status(size - pos, pos, cb)
    assert seen[0] > pos
    pos = seen[0]
dst = nbd.NBD()
dst.connect_systemd_socket_activation(['qemu-nbd', '-f', 'qcow2', target])
for off, ln in dirty:
    for o in range(off, off + ln, 1 << 20):
        n = min(1 << 20, off + ln - o)
        dst.pwrite(src.pread(n, o), o)
dst.flush()
dst.shutdown()
src.shutdown()
print(json.dumps(dirty))
`;

interface Session {
  d: Awaited<ReturnType<typeof qmpDaemon>>;
  c: RawClient;
  w: Writer;
}

let live: Session | undefined;
afterEach(async () => {
  if (!live) return;
  live.c.destroy();
  await live.w.stop().catch(() => undefined);
  live.d.qmp.close();
  await live.d.proc.stop('SIGKILL');
  live = undefined;
});

describe('live incremental backups', () => {
  it('full, push and pull incrementals under NBD writes, restarts between them: every backup reads back as its point in time', async () => {
    const dir = tempDir('blockd-live-incremental-');
    const at = (name: string) => join(dir, name);
    const nbdSock = at('nbd.sock');
    run('qemu-img', ['create', '-f', 'qcow2', at('disk.qcow2'), String(SIZE)]);
    run('qemu-io', ['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 21M 3M', at('disk.qcow2')]);
    let model = Buffer.alloc(SIZE);
    model.fill(0x11, 0, 1 << 20);
    model.fill(0x22, 21 << 20, 24 << 20);
    let seed = 1;
    const pause = () => new Promise((r) => setTimeout(r, 200));

    /** Starts blockd on disk.qcow2 and a client that first checks every earlier write is there, then writes. */
    const start = async (): Promise<Session> => {
      const d = await qmpDaemon('blockd', dir, [
        '--blockdev', `driver=file,node-name=disk-file,filename=${at('disk.qcow2')}`,
        '--blockdev', 'driver=qcow2,node-name=disk,file=disk-file',
        '--nbd-server', `addr.type=unix,addr.path=${nbdSock}`,
        '--export', 'type=nbd,id=e0,node-name=disk,name=disk,writable=on',
      ]);
      const c = new RawClient(nbdSock);
      expect(await rawNegotiate(c, 'disk')).toBe(SIZE);
      expect((await readAll(c, SIZE)).equals(model)).toBe(true);
      const w = new Writer(c, model, 4, seed++);
      w.start();
      live = { d, c, w };
      return live;
    };
    /** Stops the writes; returns the disk as the client knows it (every write acknowledged). */
    const hold = async (s: Session): Promise<Buffer> => {
      await s.w.stop();
      expect(s.w.errors).toBe(0);
      model = Buffer.from(s.w.model);
      return Buffer.from(model);
    };
    const resume = (s: Session) => {
      s.w = new Writer(s.c, model, 4, seed++);
      s.w.start();
    };
    const stop = async (s: Session, signal: NodeJS.Signals) => {
      await hold(s);
      if (signal === 'SIGKILL') await flush(s.c);
      s.c.destroy();
      s.d.qmp.close();
      await s.d.proc.stop(signal);
      live = undefined;
    };
    const jobDone = async (s: Session, id: string) => {
      await waitFor(s.d.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && e.data.status === 'null', 60_000);
      const done = s.d.events.find((e) => (e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_CANCELLED') && e.data.device === id)!;
      expect(done.data.error, id).toBeUndefined();
      return done;
    };
    const bitmapsOfDisk = async (s: Session) => {
      const nodes = (await s.d.qmp.execute('query-named-block-nodes', { flat: true })) as { 'node-name': string; 'dirty-bitmaps'?: Record<string, unknown>[] }[];
      return nodes.find((n) => n['node-name'] === 'disk')?.['dirty-bitmaps'] ?? [];
    };
    /** A push backup of 'disk' into `image` (a new qcow2 backed by `backing`), started while the writes are held. */
    const push = async (s: Session, id: string, image: string, backing: string | undefined, sync: Record<string, unknown>): Promise<Buffer> => {
      run('qemu-img', ['create', '-f', 'qcow2', ...(backing ? ['-b', at(backing), '-F', 'qcow2'] : []), at(image), String(SIZE)]);
      await s.d.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': `${id}-target`, file: { driver: 'file', filename: at(image) } });
      const pointInTime = await hold(s);
      await s.d.qmp.execute('blockdev-backup', { 'job-id': id, device: 'disk', target: `${id}-target`, ...sync });
      resume(s);
      await jobDone(s, id);
      await pause();
      await s.d.qmp.execute('blockdev-del', { 'node-name': `${id}-target` });
      return pointInTime;
    };

    // 1. Full backup; the persistent bitmap starts at the same instant.
    let s = await start();
    await pause();
    run('qemu-img', ['create', '-f', 'qcow2', at('full.qcow2'), String(SIZE)]);
    await s.d.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'full-target', file: { driver: 'file', filename: at('full.qcow2') } });
    const snapFull = await hold(s);
    await s.d.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'inc', persistent: true, granularity: GRANULARITY });
    await s.d.qmp.execute('blockdev-backup', { 'job-id': 'full', device: 'disk', target: 'full-target', sync: 'full' });
    resume(s);
    expect((await jobDone(s, 'full')).data).toMatchObject({ type: 'backup', len: SIZE, offset: SIZE });
    await s.d.qmp.execute('blockdev-del', { 'node-name': 'full-target' });
    await pause();
    await stop(s, 'SIGTERM');

    // 2. Push incremental after a clean restart; then the daemon is killed.
    s = await start();
    expect(await bitmapsOfDisk(s)).toMatchObject([{ name: 'inc', persistent: true, recording: true }]);
    await pause();
    const snapInc1 = await push(s, 'inc1', 'inc1.qcow2', 'full.qcow2', { sync: 'incremental', bitmap: 'inc' });
    await pause();
    await stop(s, 'SIGKILL');

    // 3. Pull incremental over NBD after the kill: the bitmap is still usable.
    s = await start();
    const [inc] = await bitmapsOfDisk(s);
    expect(inc).toMatchObject({ name: 'inc', persistent: true, recording: true });
    expect(inc.inconsistent).toBeUndefined();
    await pause();
    run('qemu-img', ['create', '-f', 'qcow2', at('fleece.qcow2'), String(SIZE)]);
    await s.d.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'fleece', file: { driver: 'file', filename: at('fleece.qcow2') }, backing: 'disk' });
    const snapInc2 = await hold(s);
    await s.d.qmp.execute('block-dirty-bitmap-disable', { node: 'disk', name: 'inc' });
    await s.d.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'inc2', persistent: true, granularity: GRANULARITY });
    await s.d.qmp.execute('blockdev-backup', { 'job-id': 'fleecing', device: 'disk', target: 'fleece', sync: 'none' });
    resume(s);
    await s.d.qmp.execute('block-export-add', { type: 'nbd', id: 'pull', 'node-name': 'fleece', name: 'pull', bitmaps: ['inc'] });
    run('qemu-img', ['create', '-f', 'qcow2', '-b', at('inc1.qcow2'), '-F', 'qcow2', at('inc2.qcow2'), String(SIZE)]);
    const uri = `nbd+unix:///pull?socket=${nbdSock}`;
    const dirty = JSON.parse(run(SYSTEM_PYTHON, ['-c', PULL, uri, at('inc2.qcow2'), 'inc'])) as [number, number][];
    // nbdinfo reads the same context: the same dirty bytes.
    const map = JSON.parse(run('nbdinfo', ['--map=qemu:dirty-bitmap:inc', '--json', uri])) as { length: number; type: number }[];
    const dirtyBytes = dirty.reduce((n, [, l]) => n + l, 0);
    expect(map.filter((e) => e.type & 1).reduce((n, e) => n + e.length, 0)).toBe(dirtyBytes);
    expect(dirtyBytes).toBeGreaterThan(0);
    expect(dirtyBytes).toBeLessThan(SIZE);
    // 'hard': the clients are gone, but the server may not have seen the last one go yet.
    await s.d.qmp.execute('block-export-del', { id: 'pull', mode: 'hard' });
    await waitFor(s.d.events, (e) => e.event === 'BLOCK_EXPORT_DELETED' && e.data.id === 'pull');
    await s.d.qmp.execute('job-cancel', { id: 'fleecing' });
    await jobDone(s, 'fleecing');
    await s.d.qmp.execute('blockdev-del', { 'node-name': 'fleece' });
    await s.d.qmp.execute('block-dirty-bitmap-remove', { node: 'disk', name: 'inc' });
    await pause();
    await stop(s, 'SIGTERM');

    // 4. Push again with the bitmap that took over in the pull.
    s = await start();
    expect(await bitmapsOfDisk(s)).toMatchObject([{ name: 'inc2', persistent: true, recording: true }]);
    await pause();
    const snapInc3 = await push(s, 'inc3', 'inc3.qcow2', 'inc2.qcow2', { sync: 'incremental', bitmap: 'inc2' });
    await pause();
    await stop(s, 'SIGTERM');

    // Every backup, read through its chain, is the disk at its point in time.
    const chain: [string, Buffer][] = [['full.qcow2', snapFull], ['inc1.qcow2', snapInc1], ['inc2.qcow2', snapInc2], ['inc3.qcow2', snapInc3], ['disk.qcow2', model]];
    for (const [image, expected] of chain) {
      const raw = at(`${image}.expected.raw`);
      writeFileSync(raw, expected);
      const r = tryRun('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, at(image)]);
      expect(`${r.stdout}${r.stderr}`, image).toContain('Images are identical');
    }
    // Each point in time differs from the one before: the comparisons above tell backups apart.
    for (let i = 1; i < chain.length; i++) expect(chain[i][1].equals(chain[i - 1][1]), chain[i][0]).toBe(false);
    expect(run('qemu-img', ['info', '--backing-chain', at('inc3.qcow2')])).toContain(`backing file: ${at('full.qcow2')}`);
    for (const image of ['disk.qcow2', 'full.qcow2', 'inc1.qcow2', 'inc2.qcow2', 'inc3.qcow2', 'fleece.qcow2']) run('qemu-img', ['check', at(image)]);
  }, 240_000);
});
