/**
 * Scenario: an overlay on a template, streamed while in use. bin/blockd
 * serves ov.qcow2 (backed by template.qcow2) as export 'disk'; a client
 * writes through it while block-stream runs — first rate-limited and
 * cancelled part-way, then again to the end. Afterwards ov.qcow2 has no
 * backing file, the template is deleted, and ov.qcow2 alone holds the
 * template's data and every acknowledged write; it passes `qemu-img check`.
 * The JOB_STATUS_CHANGE sequences (cancelled and completed) are compared
 * with qemu-storage-daemon 7.2 running the same commands. The
 * copy-on-read filter is also used on its own (--blockdev driver=copy-on-read).
 */
import { describe, it, expect } from 'vitest';
import { existsSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';
import { RawClient, rawNegotiate } from '../helpers/nbd.ts';

import { Writer, readAll, qmpDaemon, waitFor, statuses, cleanupsAfterEach, imageContents } from '../helpers/live.ts';
const SIZE = 8 * 1024 * 1024;

/** template.qcow2 with data, and ov.qcow2 on it holding a little of its own. */
function makeChain(dir: string): Buffer {
  const tpl = join(dir, 'template.qcow2');
  run('qemu-img', ['create', '-f', 'qcow2', tpl, String(SIZE)]);
  run('qemu-io', ['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 3M 2M', '-c', 'write -P 0x33 7M 512k', tpl]);
  run('qemu-img', ['create', '-f', 'qcow2', '-b', tpl, '-F', 'qcow2', join(dir, 'ov.qcow2')]);
  run('qemu-io', ['-c', 'write -P 0x44 512k 1M', join(dir, 'ov.qcow2')]);
  const model = Buffer.alloc(SIZE);
  model.fill(0x11, 0, 1 << 20);
  model.fill(0x22, 3 << 20, 5 << 20);
  model.fill(0x33, 7 << 20, (7 << 20) + (512 << 10));
  model.fill(0x44, 512 << 10, (512 << 10) + (1 << 20));
  return model;
}

function daemonArgs(dir: string): string[] {
  return [
    '--blockdev', `driver=file,node-name=ov-file,filename=${join(dir, 'ov.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=disk,file=ov-file',
    '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
    '--export', 'type=nbd,id=e0,node-name=disk,name=disk,writable=on',
  ];
}


const cleanup = cleanupsAfterEach();

describe('live stream', () => {
  it('overlay on a template: block-stream while in use (cancel, restart), then the template can go', async () => {
    const dir = tempDir('blockd-live-stream-');
    const initial = makeChain(dir);
    const d = await qmpDaemon('blockd', dir, daemonArgs(dir));
    cleanup.push(async () => { d.qmp.close(); await d.proc.stop(); });
    const c = new RawClient(join(dir, 'nbd.sock'));
    expect(await rawNegotiate(c, 'disk')).toBe(SIZE);
    const w = new Writer(c, initial);
    w.start();
    await new Promise((r) => setTimeout(r, 100));

    await d.qmp.execute('block-stream', { 'job-id': 's0', device: 'disk', speed: 1024 * 1024 });
    await new Promise((r) => setTimeout(r, 300));
    await d.qmp.execute('job-cancel', { id: 's0' });
    await waitFor(d.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 's0' && e.data.status === 'null');
    const cancelled = d.events.find((e) => e.event === 'BLOCK_JOB_CANCELLED')!;
    expect(cancelled.data.offset as number).toBeLessThan(SIZE);
    expect(run('qemu-img', ['info', '-U', join(dir, 'ov.qcow2')])).toContain('backing file:');

    await d.qmp.execute('block-stream', { 'job-id': 's1', device: 'disk' });
    await waitFor(d.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 's1' && e.data.status === 'null');
    await new Promise((r) => setTimeout(r, 100));
    await w.stop();
    expect(w.errors).toBe(0);
    expect(w.writes).toBeGreaterThan(50);
    const done = d.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!;
    expect(done.data).toEqual({ device: 's1', len: SIZE, offset: SIZE, speed: 0, type: 'stream' });
    expect((await readAll(c, SIZE)).equals(w.model)).toBe(true);
    const nodes = (await d.qmp.execute('query-named-block-nodes', { flat: true })) as { 'node-name': string; file: string; drv: string }[];
    expect(nodes.filter((n) => n.file.includes('template'))).toEqual([]);
    expect(nodes.filter((n) => n.drv === 'copy-on-read')).toEqual([]);
    c.destroy();
    d.qmp.close();
    await d.proc.stop();
    cleanup.length = 0;

    expect(run('qemu-img', ['info', join(dir, 'ov.qcow2')])).not.toContain('backing file');
    unlinkSync(join(dir, 'template.qcow2'));
    run('qemu-img', ['check', join(dir, 'ov.qcow2')]);
    expect(imageContents(dir, 'ov.qcow2').equals(w.model)).toBe(true);

    // The same commands against qsd 7.2 (no client): the same status sequences.
    const qdir = tempDir('blockd-live-stream-qsd-');
    makeChain(qdir);
    const q = await qmpDaemon('qsd', qdir, daemonArgs(qdir));
    cleanup.push(async () => { q.qmp.close(); await q.proc.stop(); });
    await q.qmp.execute('block-stream', { 'job-id': 's0', device: 'disk', speed: 1024 * 1024 });
    await new Promise((r) => setTimeout(r, 300));
    await q.qmp.execute('job-cancel', { id: 's0' });
    await waitFor(q.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 's0' && e.data.status === 'null');
    await q.qmp.execute('block-stream', { 'job-id': 's1', device: 'disk' });
    await waitFor(q.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 's1' && e.data.status === 'null');
    for (const id of ['s0', 's1']) expect(statuses(d.events, id), id).toEqual(statuses(q.events, id));
    expect(statuses(d.events, 's0')).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(statuses(d.events, 's1')).toEqual(['created', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    q.qmp.close();
    await q.proc.stop();
    cleanup.length = 0;
    for (const img of ['ov.qcow2', 'template.qcow2']) run('qemu-img', ['check', join(qdir, img)]);
  }, 120_000);

  it('copy-on-read filter alone: reading through it fills the overlay', async () => {
    const dir = tempDir('blockd-live-cor-');
    const model = makeChain(dir);
    const d = await qmpDaemon('blockd', dir, [
      '--blockdev', `driver=file,node-name=ov-file,filename=${join(dir, 'ov.qcow2')}`,
      '--blockdev', 'driver=qcow2,node-name=disk,file=ov-file',
      '--blockdev', 'driver=copy-on-read,node-name=cor,file=disk',
      '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
      '--export', 'type=nbd,id=e0,node-name=cor,name=cor',
    ]);
    cleanup.push(async () => { d.qmp.close(); await d.proc.stop(); });
    const c = new RawClient(join(dir, 'nbd.sock'));
    expect(await rawNegotiate(c, 'cor')).toBe(SIZE);
    expect((await readAll(c, SIZE)).equals(model)).toBe(true);
    c.destroy();
    d.qmp.close();
    await d.proc.stop();
    cleanup.length = 0;
    run('qemu-img', ['check', join(dir, 'ov.qcow2')]);
    // Everything the template held is now in the overlay itself.
    run('qemu-img', ['rebase', '-u', '-b', '', join(dir, 'ov.qcow2')]);
    expect(imageContents(dir, 'ov.qcow2').equals(model)).toBe(true);
    expect(existsSync(join(dir, 'template.qcow2'))).toBe(true);
  }, 60_000);
});
