/**
 * Scenario (live backup): snapshot → copy the frozen base → active commit →
 * pivot, with a client writing through the NBD export the whole time.
 * bin/blockd serves base.qcow2 as export 'disk'; blockdev-snapshot-sync puts
 * an overlay under the export, the base (now read-only) is copied with
 * qemu-img and must equal the disk at the snapshot's instant,
 * block-commit of the overlay reaches READY, job-complete pivots the export
 * back onto the base, and every write the client saw acknowledged must be
 * read back (through NBD, and from base.qcow2 alone once blockd has stopped).
 * The job's JOB_STATUS_CHANGE sequence is compared with qemu-storage-daemon
 * 7.2 running the same commands; every image must pass `qemu-img check`.
 */
import { describe, it, expect } from 'vitest';
import { join } from 'node:path';
import { tempDir } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';
import { RawClient, rawNegotiate } from '../helpers/nbd.ts';

import { Writer, readAll, qmpDaemon, waitFor, statuses, cleanupsAfterEach, imageContents } from '../helpers/live.ts';
const SIZE = 8 * 1024 * 1024;

function makeBase(dir: string): Buffer {
  const base = join(dir, 'base.qcow2');
  run('qemu-img', ['create', '-f', 'qcow2', base, String(SIZE)]);
  run('qemu-io', ['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 3M 2M', base]);
  const model = Buffer.alloc(SIZE);
  model.fill(0x11, 0, 1 << 20);
  model.fill(0x22, 3 << 20, 5 << 20);
  return model;
}


const cleanup = cleanupsAfterEach();

describe('live commit', () => {
  it('snapshot → active commit → pivot: the export ends on one image holding every write', async () => {
    const dir = tempDir('blockd-live-commit-');
    const initial = makeBase(dir);
    const nbdSock = join(dir, 'nbd.sock');
    const d = await qmpDaemon('blockd', dir, [
      '--blockdev', `driver=file,node-name=base-file,filename=${join(dir, 'base.qcow2')}`,
      '--blockdev', 'driver=qcow2,node-name=disk,file=base-file',
      '--nbd-server', `addr.type=unix,addr.path=${nbdSock}`,
      '--export', 'type=nbd,id=e0,node-name=disk,name=disk,writable=on',
    ]);
    cleanup.push(async () => { d.qmp.close(); await d.proc.stop(); });
    const c = new RawClient(nbdSock);
    expect(await rawNegotiate(c, 'disk')).toBe(SIZE);
    const before = new Writer(c, initial);
    before.start();
    await new Promise((r) => setTimeout(r, 150));

    // The snapshot's point in time: writes are held while it is taken, so the model at that instant is exact.
    await before.stop();
    expect(before.errors).toBe(0);
    const pointInTime = Buffer.from(before.model);
    await d.qmp.execute('blockdev-snapshot-sync', { 'node-name': 'disk', 'snapshot-file': join(dir, 'ov.qcow2'), 'snapshot-node-name': 'ov' });
    const w = new Writer(c, pointInTime, 4, 777);
    w.start();
    let exp = (await d.qmp.execute('query-block-exports')) as { 'node-name': string }[];
    expect(exp[0]['node-name']).toBe('ov');
    await new Promise((r) => setTimeout(r, 200));
    // The backup itself: the now-frozen base, copied while the client keeps writing into the overlay.
    expect(imageContents(dir, 'base.qcow2', true).equals(pointInTime)).toBe(true);

    await d.qmp.execute('block-commit', { 'job-id': 'c0', device: 'ov' });
    await waitFor(d.events, (e) => e.event === 'BLOCK_JOB_READY');
    await new Promise((r) => setTimeout(r, 200));
    await d.qmp.execute('job-complete', { id: 'c0' });
    await waitFor(d.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 'c0' && e.data.status === 'null');
    await new Promise((r) => setTimeout(r, 150));
    await w.stop();
    expect(w.errors).toBe(0);
    expect(w.writes).toBeGreaterThan(50);

    exp = (await d.qmp.execute('query-block-exports')) as { 'node-name': string }[];
    expect(exp[0]['node-name']).toBe('disk');
    const seen = await readAll(c, SIZE);
    expect(seen.equals(w.model)).toBe(true);
    const nodes = (await d.qmp.execute('query-named-block-nodes', { flat: true })) as { 'node-name': string }[];
    expect(nodes.map((n) => n['node-name'])).not.toContain('ov');
    const completed = d.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!;
    expect(completed.data).toMatchObject({ device: 'c0', type: 'commit', speed: 0 });
    expect(completed.data.len).toBe(completed.data.offset);
    expect(completed.data.error).toBeUndefined();
    c.destroy();
    d.qmp.close();
    await d.proc.stop();
    cleanup.length = 0;

    for (const img of ['base.qcow2', 'ov.qcow2']) run('qemu-img', ['check', join(dir, img)]);
    expect(imageContents(dir, 'base.qcow2').equals(w.model)).toBe(true);
    expect(run('qemu-img', ['info', join(dir, 'ov.qcow2')])).toContain(`backing file: ${join(dir, 'base.qcow2')}`);

    // The same commands, without the client, against qsd 7.2: the same job status sequence.
    const qdir = tempDir('blockd-live-commit-qsd-');
    makeBase(qdir);
    const q = await qmpDaemon('qsd', qdir, [
      '--blockdev', `driver=file,node-name=base-file,filename=${join(qdir, 'base.qcow2')}`,
      '--blockdev', 'driver=qcow2,node-name=disk,file=base-file',
      '--nbd-server', `addr.type=unix,addr.path=${join(qdir, 'nbd.sock')}`,
      '--export', 'type=nbd,id=e0,node-name=disk,name=disk,writable=on',
    ]);
    cleanup.push(async () => { q.qmp.close(); await q.proc.stop(); });
    await q.qmp.execute('blockdev-snapshot-sync', { 'node-name': 'disk', 'snapshot-file': join(qdir, 'ov.qcow2'), 'snapshot-node-name': 'ov' });
    await q.qmp.execute('block-commit', { 'job-id': 'c0', device: 'ov' });
    await waitFor(q.events, (e) => e.event === 'BLOCK_JOB_READY');
    await q.qmp.execute('job-complete', { id: 'c0' });
    await waitFor(q.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 'c0' && e.data.status === 'null');
    expect(statuses(d.events, 'c0')).toEqual(statuses(q.events, 'c0'));
    expect(statuses(d.events, 'c0')).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
  }, 120_000);
  it('active commit cancelled after READY: the export stays on the overlay, chain as it was, every write kept', async () => {
    const dir = tempDir('blockd-live-commit-cancel-');
    const initial = makeBase(dir);
    const nbdSock = join(dir, 'nbd.sock');
    const d = await qmpDaemon('blockd', dir, [
      '--blockdev', `driver=file,node-name=base-file,filename=${join(dir, 'base.qcow2')}`,
      '--blockdev', 'driver=qcow2,node-name=disk,file=base-file',
      '--nbd-server', `addr.type=unix,addr.path=${nbdSock}`,
      '--export', 'type=nbd,id=e0,node-name=disk,name=disk,writable=on',
    ]);
    cleanup.push(async () => { d.qmp.close(); await d.proc.stop(); });
    const c = new RawClient(nbdSock);
    await rawNegotiate(c, 'disk');
    const w = new Writer(c, initial);
    w.start();
    await d.qmp.execute('blockdev-snapshot-sync', { 'node-name': 'disk', 'snapshot-file': join(dir, 'ov.qcow2'), 'snapshot-node-name': 'ov' });
    await new Promise((r) => setTimeout(r, 150));
    await d.qmp.execute('block-commit', { 'job-id': 'c0', device: 'ov' });
    await waitFor(d.events, (e) => e.event === 'BLOCK_JOB_READY');
    await new Promise((r) => setTimeout(r, 150));
    await d.qmp.execute('job-cancel', { id: 'c0' });
    await waitFor(d.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 'c0' && e.data.status === 'null');
    await new Promise((r) => setTimeout(r, 100));
    await w.stop();
    expect(w.errors).toBe(0);
    expect(statuses(d.events, 'c0')).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    const exp = (await d.qmp.execute('query-block-exports')) as { 'node-name': string }[];
    expect(exp[0]['node-name']).toBe('ov');
    expect((await readAll(c, SIZE)).equals(w.model)).toBe(true);
    c.destroy();
    d.qmp.close();
    await d.proc.stop();
    cleanup.length = 0;
    for (const img of ['base.qcow2', 'ov.qcow2']) run('qemu-img', ['check', join(dir, img)]);
    expect(run('qemu-img', ['info', join(dir, 'ov.qcow2')])).toContain(`backing file: ${join(dir, 'base.qcow2')}`);
    expect(imageContents(dir, 'ov.qcow2').equals(w.model)).toBe(true);
  }, 120_000);
});
