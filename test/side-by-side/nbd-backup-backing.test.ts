/**
 * driver=nbd as a backup target and as a backing file (issue 14 item 5),
 * blockd and qsd 7.2 with the same commands against nbdkit file servers:
 * blockdev-backup of a live disk into an nbd node (qemu-img compare of the
 * remote with the disk as it was at the start, while a write lands during
 * the job), and a local qcow2 overlay on a remote base ("a VM from a
 * template on remote storage"): reads see base and overlay, block-stream
 * pulls the base in, and the overlay alone then holds everything and
 * checks clean. Job event sequences equal qsd's.
 */
import { describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/daemons.ts';
import { cleanupsAfterEach, imageContents, waitFor } from '../helpers/live.ts';
import { sequence } from '../helpers/live-export.ts';
import { side, stopSide, type Who } from '../helpers/migration.ts';
import { startNbdkit } from '../helpers/nbdkit.ts';
import { run } from '../helpers/tools.ts';

const SIZE = 16 * 1024 * 1024;
const cleanups = cleanupsAfterEach();

async function backup(who: Who) {
  const dir = tempDir('blockd-nbdbk-');
  const disk = join(dir, 'disk.raw');
  run('qemu-img', ['create', '-q', '-f', 'raw', disk, String(SIZE)]);
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x31 0 2M', '-c', 'write -P 0x32 8M 1M', '-c', `write -P 0x33 ${SIZE - 65536} 64k`, disk]);
  copyFileSync(disk, join(dir, 'at-start.raw'));
  const target = join(dir, 'target.raw');
  run('truncate', ['-s', String(SIZE), target]);
  const k = await startNbdkit(join(dir, 'target.sock'), ['file', target]);
  cleanups.push(() => k.stop());
  const s = await side(who, dir, 'local', [
    '--blockdev', `driver=file,node-name=disk-file,filename=${disk}`, '--blockdev', 'driver=raw,node-name=disk,file=disk-file',
    '--export', 'type=nbd,id=e0,node-name=disk,name=disk,writable=on',
  ]);
  cleanups.push(() => stopSide(s));
  await s.qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': 'remote', server: { type: 'unix', path: k.sock } });
  await s.qmp.execute('blockdev-backup', { 'job-id': 'b0', device: 'disk', target: 'remote', sync: 'full', speed: 4 * 1024 * 1024 });
  // A guest write while the job runs: the backup keeps the old data.
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 1M 2M', `nbd+unix:///disk?socket=${s.nbdSock}`]);
  await s.qmp.execute('block-job-set-speed', { device: 'b0', speed: 0 });
  await waitFor(s.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 'b0' && e.data.status === 'null', 60_000);
  const cmp = run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(dir, 'at-start.raw'), `nbd+unix:///?socket=${k.sock}`]);
  await stopSide(s);
  await k.stop();
  cleanups.length = 0;
  expect(cmp).toContain('Images are identical');
  expect(readFileSync(target).equals(readFileSync(join(dir, 'at-start.raw')))).toBe(true);
  return sequence(s.events, 'b0');
}

async function backingThenStream(who: Who) {
  const dir = tempDir('blockd-nbdbs-');
  const base = join(dir, 'base.raw');
  run('qemu-img', ['create', '-q', '-f', 'raw', base, String(SIZE)]);
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x41 0 4M', '-c', 'write -P 0x42 10M 2M', base]);
  const k = await startNbdkit(join(dir, 'base.sock'), ['file', base], ['-r']);
  cleanups.push(() => k.stop());
  const ov = join(dir, 'ov.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', ov, String(SIZE)]);
  const s = await side(who, dir, 'local', []);
  cleanups.push(() => stopSide(s));
  await s.qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': 'base', server: { type: 'unix', path: k.sock }, 'read-only': true });
  await s.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'ov', file: { driver: 'file', filename: ov }, backing: 'base' });
  await s.qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'ov', name: 'ov', writable: true });
  const uri = `nbd+unix:///ov?socket=${s.nbdSock}`;
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x51 3M 2M', uri]);
  run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x41 0 3M', '-c', 'read -P 0x51 3M 2M', '-c', 'read -P 0 5M 5M', '-c', 'read -P 0x42 10M 2M', uri]);
  const node = ((await s.qmp.execute('query-named-block-nodes')) as { 'node-name': string; backing_file?: string; image: Record<string, unknown> }[]).find((n) => n['node-name'] === 'ov')!;
  await s.qmp.execute('block-stream', { 'job-id': 's0', device: 'ov' });
  await waitFor(s.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 's0' && e.data.status === 'null', 60_000);
  await s.qmp.execute('block-export-del', { id: 'e0' });
  await waitFor(s.events, (e) => e.event === 'BLOCK_EXPORT_DELETED');
  await s.qmp.execute('blockdev-del', { 'node-name': 'ov' });
  await s.qmp.execute('blockdev-del', { 'node-name': 'base' });
  await stopSide(s);
  await k.stop();
  cleanups.length = 0;
  run('qemu-img', ['check', ov]);
  expect(run('qemu-img', ['info', ov])).not.toContain('backing file');
  const want = Buffer.alloc(SIZE);
  want.fill(0x41, 0, 4 << 20);
  want.fill(0x42, 10 << 20, 12 << 20);
  want.fill(0x51, 3 << 20, 5 << 20);
  expect(imageContents(dir, 'ov.qcow2').equals(want)).toBe(true);
  return { seq: sequence(s.events, 's0'), backing: node.image['backing-filename'], file: String(node.image.filename).replaceAll(dir, 'DIR') };
}

describe('driver=nbd as a backup target and a backing file', () => {
  it('blockdev-backup into an nbd node: the remote holds the disk as it was at the start (blockd as qsd)', async () => {
    const q = await backup('qsd');
    const b = await backup('blockd');
    expect(b).toEqual(q);
    expect(q).toContain('BLOCK_JOB_COMPLETED');
  }, 120_000);

  it('a local overlay on a remote base, then block-stream pulls it local (blockd as qsd)', async () => {
    const q = await backingThenStream('qsd');
    const b = await backingThenStream('blockd');
    expect(b).toEqual(q);
    expect(q.seq).toContain('BLOCK_JOB_COMPLETED');
  }, 120_000);
});
