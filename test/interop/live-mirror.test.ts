/**
 * Live storage migration with blockdev-mirror and drive-mirror: bin/blockd
 * exports a raw image over NBD while a libnbd client keeps writing (one
 * request at a time, each also applied to a model file); the mirror reaches
 * READY, job-complete moves the export onto the new qcow2 image, and the
 * client keeps writing there. Checked: the export and the target equal the
 * model (qemu-img compare), the source is untouched since the pivot, the
 * target passes qemu-img check, and the events are qsd 7.2's sequence.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { type ChildProcess } from 'node:child_process';
import { rmSync, copyFileSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir as makeTempDir } from '../helpers/daemons.ts';
import { run, SYSTEM_PYTHON } from '../helpers/tools.ts';
import { MIRROR_DONE, SIZE, makeSource, sequence, sha, sleep, startLive, startWriter, type Live } from '../helpers/live-export.ts';

/** Temporary directories of this file's tests, removed after each test (images are large). */
const dirs: string[] = [];
function tempDir(prefix: string): string {
  const d = makeTempDir(prefix);
  dirs.push(d);
  return d;
}

let live: Live | undefined;
let writer: { proc: ChildProcess; done: Promise<string> } | undefined;

afterEach(async () => {
  writer?.proc.kill();
  writer = undefined;
  await live?.stop();
  live = undefined;
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('live storage migration (mirror)', () => {
  for (const copyMode of ['background', 'write-blocking'] as const) it(`blockdev-mirror (copy-mode=${copyMode}) of a live export: READY, complete, the export runs on the target`, async () => {
    const dir = tempDir('blockd-mirror-');
    const src = join(dir, 'src.raw');
    const tgt = join(dir, 'tgt.qcow2');
    const model = join(dir, 'model.raw');
    const stop = join(dir, 'stop');
    makeSource(src);
    copyFileSync(src, model);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', tgt, String(SIZE)]);
    live = await startLive('blockd', dir, [
      '--blockdev', `driver=file,node-name=srcf,filename=${src}`,
      '--blockdev', 'driver=raw,node-name=src,file=srcf',
      '--blockdev', `driver=qcow2,node-name=tgt,file.driver=file,file.filename=${tgt}`,
      '--export', 'type=nbd,id=e0,node-name=src,name=disk,writable=on',
    ]);
    writer = startWriter(live.nbdSock, 'disk', model, stop, 1);
    await sleep(300);
    // A slow start so that many client writes land while the bulk copy runs.
    await live.qmp.execute('blockdev-mirror', { 'job-id': 'm0', device: 'src', target: 'tgt', sync: 'full', speed: 64 * 1024 * 1024, 'copy-mode': copyMode });
    await sleep(200);
    await live.qmp.execute('block-job-set-speed', { device: 'm0', speed: 0 });
    await live.waitEvent('BLOCK_JOB_READY');
    const [info] = await live.qmp.execute('query-block-jobs') as { ready: boolean; type: string }[];
    expect(info).toMatchObject({ ready: true, type: 'mirror', status: 'ready' });
    await sleep(300);
    await live.qmp.execute('job-complete', { id: 'm0' });
    await live.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'm0' && d.status === 'null');
    const srcAtPivot = sha(src);
    // The export now writes to the target.
    const exportNode = (await live.qmp.execute('query-block-exports') as { 'node-name': string }[])[0]!['node-name'];
    expect(exportNode).toBe('tgt');
    await sleep(500);
    writeFileSync(stop, '');
    const writes = Number(await writer.done);
    writer = undefined;
    expect(writes).toBeGreaterThan(20);
    const uri = `nbd+unix:///disk?socket=${live.nbdSock}`;
    run('qemu-img', ['compare', '-f', 'raw', model, uri]);
    expect(sequence(live.events, 'm0')).toEqual(MIRROR_DONE);
    await live.stop();
    live = undefined;
    expect(sha(src)).toBe(srcAtPivot);
    run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', model, tgt]);
    run('qemu-img', ['check', tgt]);
  }, 120_000);

  it('drive-mirror creates the target; a soft cancel after READY leaves a point-in-time copy and no pivot', async () => {
    const dir = tempDir('blockd-mirror-');
    const src = join(dir, 'src.raw');
    const tgt = join(dir, 'new.qcow2');
    makeSource(src);
    live = await startLive('blockd', dir, [
      '--blockdev', `driver=file,node-name=srcf,filename=${src}`,
      '--blockdev', 'driver=raw,node-name=src,file=srcf',
      '--export', 'type=nbd,id=e0,node-name=src,name=disk,writable=on',
    ]);
    await live.qmp.execute('drive-mirror', { 'job-id': 'd0', device: 'src', target: tgt, format: 'qcow2', sync: 'full', 'copy-mode': 'write-blocking' });
    await live.waitEvent('BLOCK_JOB_READY');
    // In write-blocking mode a client write reaches the target before it completes.
    run(SYSTEM_PYTHON, ['-c', `import nbd\nh=nbd.NBD()\nh.set_export_name('disk')\nh.connect_unix(${JSON.stringify(live.nbdSock)})\nh.pwrite(b'\\x44'*65536, 8*1024*1024)\nh.shutdown()`]);
    const copy = join(dir, 'copy.raw');
    copyFileSync(src, copy);
    await live.qmp.execute('block-job-cancel', { device: 'd0' });
    await live.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'd0' && d.status === 'null');
    expect(sequence(live.events, 'd0')).toEqual(MIRROR_DONE);
    const exportNode = (await live.qmp.execute('query-block-exports') as { 'node-name': string }[])[0]!['node-name'];
    expect(exportNode).toBe('src');
    // The target node is gone with the job (nobody uses it), the file stays.
    const nodes = (await live.qmp.execute('query-named-block-nodes', { flat: true }) as { 'node-name': string }[]).map((n) => n['node-name']);
    expect(nodes.sort()).toEqual(['src', 'srcf']);
    await live.stop();
    live = undefined;
    run('qemu-img', ['check', tgt]);
    run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', copy, tgt]);
    expect(existsSync(tgt)).toBe(true);
  }, 120_000);

  it('drive-mirror sync=top: the new image gets the source\'s backing file and only the top layer\'s data', async () => {
    const dir = tempDir('blockd-mirror-');
    const base = join(dir, 'base.raw');
    const top = join(dir, 'top.qcow2');
    const tgt = join(dir, 'new.qcow2');
    makeSource(base);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', top]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x99 1M 128k', '-c', 'write -z 32M 64k', top]);
    live = await startLive('blockd', dir, [
      '--blockdev', `driver=qcow2,node-name=top,file.driver=file,file.filename=${top}`,
      '--export', 'type=nbd,id=e0,node-name=top,name=disk,writable=on',
    ]);
    await live.qmp.execute('drive-mirror', { 'job-id': 't0', device: 'top', target: tgt, format: 'qcow2', sync: 'top', 'node-name': 'new' });
    await live.waitEvent('BLOCK_JOB_READY');
    await live.qmp.execute('job-complete', { id: 't0' });
    await live.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 't0' && d.status === 'null');
    expect(sequence(live.events, 't0')).toEqual(MIRROR_DONE);
    expect((await live.qmp.execute('query-block-exports') as { 'node-name': string }[])[0]!['node-name']).toBe('new');
    run('qemu-img', ['compare', '-U', '-f', 'qcow2', top, `nbd+unix:///disk?socket=${live.nbdSock}`]);
    await live.stop();
    live = undefined;
    run('qemu-img', ['check', tgt]);
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', tgt])) as Record<string, unknown>;
    expect(info['backing-filename']).toBe(base);
    run('qemu-img', ['compare', top, tgt]);
    const map = JSON.parse(run('qemu-img', ['map', '--output=json', tgt])) as { start: number; length: number; depth: number; data: boolean; zero: boolean }[];
    const own = map.filter((e) => e.depth === 0).map((e) => [e.start, e.length, e.data]);
    expect(own).toEqual([[1024 * 1024, 128 * 1024, true], [32 * 1024 * 1024, 65536, false]]);
  }, 120_000);

  it('sync=none copies only what is written after the start', async () => {
    const dir = tempDir('blockd-mirror-');
    const src = join(dir, 'src.raw');
    const tgt = join(dir, 'tgt.qcow2');
    makeSource(src);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', tgt, String(SIZE)]);
    live = await startLive('blockd', dir, [
      '--blockdev', `driver=file,node-name=srcf,filename=${src}`,
      '--blockdev', 'driver=raw,node-name=src,file=srcf',
      '--blockdev', `driver=qcow2,node-name=tgt,file.driver=file,file.filename=${tgt}`,
      '--export', 'type=nbd,id=e0,node-name=src,name=disk,writable=on',
    ]);
    await live.qmp.execute('blockdev-mirror', { 'job-id': 'n0', device: 'src', target: 'tgt', sync: 'none', granularity: 65536 });
    await live.waitEvent('BLOCK_JOB_READY');
    run(SYSTEM_PYTHON, ['-c', `import nbd\nh=nbd.NBD()\nh.set_export_name('disk')\nh.connect_unix(${JSON.stringify(live.nbdSock)})\nh.pwrite(b'\\x5a'*4096, 40*1024*1024+8192)\nh.shutdown()`]);
    await live.qmp.execute('job-complete', { id: 'n0' });
    await live.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'n0' && d.status === 'null');
    expect(sequence(live.events, 'n0')).toEqual(MIRROR_DONE);
    await live.stop();
    live = undefined;
    run('qemu-img', ['check', tgt]);
    const map = JSON.parse(run('qemu-img', ['map', '--output=json', tgt])) as { start: number; length: number; data: boolean }[];
    expect(map.filter((e) => e.data).map((e) => [e.start, e.length])).toEqual([[40 * 1024 * 1024, 65536]]);
    const out = join(dir, 'out.raw');
    run('qemu-img', ['convert', '-O', 'raw', tgt, out]);
    const got = readFileSync(out).subarray(40 * 1024 * 1024, 40 * 1024 * 1024 + 65536);
    const want = readFileSync(src).subarray(40 * 1024 * 1024, 40 * 1024 * 1024 + 65536);
    expect(got.equals(want)).toBe(true);
    expect(want[8192]).toBe(0x5a);
  }, 60_000);

  it('a forced cancel stops the copy and puts the source back under its users', async () => {
    const dir = tempDir('blockd-mirror-');
    const src = join(dir, 'src.raw');
    const tgt = join(dir, 'tgt.qcow2');
    makeSource(src);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', tgt, String(SIZE)]);
    live = await startLive('blockd', dir, [
      '--blockdev', `driver=file,node-name=srcf,filename=${src}`,
      '--blockdev', 'driver=raw,node-name=src,file=srcf',
      '--blockdev', `driver=qcow2,node-name=tgt,file.driver=file,file.filename=${tgt}`,
      '--export', 'type=nbd,id=e0,node-name=src,name=disk,writable=on',
    ]);
    await live.qmp.execute('blockdev-mirror', { 'job-id': 'm1', device: 'src', target: 'tgt', sync: 'full', speed: 1024 * 1024, 'filter-node-name': 'mtop' });
    const nodes = (await live.qmp.execute('query-named-block-nodes', { flat: true }) as { 'node-name': string }[]).map((n) => n['node-name']);
    expect(nodes).toContain('mtop');
    expect((await live.qmp.execute('query-block-exports') as { 'node-name': string }[])[0]!['node-name']).toBe('mtop');
    await sleep(200);
    await live.qmp.execute('block-job-cancel', { device: 'm1', force: true });
    await live.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'm1' && d.status === 'null');
    expect(sequence(live.events, 'm1')).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect((await live.qmp.execute('query-block-exports') as { 'node-name': string }[])[0]!['node-name']).toBe('src');
    const after = (await live.qmp.execute('query-named-block-nodes', { flat: true }) as { 'node-name': string }[]).map((n) => n['node-name']);
    expect(after).not.toContain('mtop');
    await live.qmp.execute('blockdev-del', { 'node-name': 'tgt' });
  }, 120_000);
});
