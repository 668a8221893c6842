/**
 * Backups while the disk is in use: blockdev-backup and drive-backup of a
 * live NBD export with a libnbd client writing before, during and after the
 * job; the target must equal the disk as it was when the job started (the
 * copy-before-write filter copies old data out before each write lands).
 * Also: qsd 7.2 and bin/blockd side by side (event sequences and error
 * replies for the same QMP commands), and an on-error policy on a target
 * that runs out of space (a tiny tmpfs).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { rmSync, copyFileSync, readFileSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { QmpCommandError } from '../../src/qmp/client/qmp-client.ts';
import { tempDir as makeTempDir } from '../helpers/daemons.ts';
import { run, SYSTEM_PYTHON } from '../helpers/tools.ts';
import { SIZE, makeSource, sequence, sha, sleep, startLive, startWriter, type Live } from '../helpers/live-export.ts';

/** Temporary directories of this file's tests, removed after each test (images are large). */
const dirs: string[] = [];
function tempDir(prefix: string): string {
  const d = makeTempDir(prefix);
  dirs.push(d);
  return d;
}

const BACKUP_DONE = ['created', 'running', 'paused', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null'];

let live: Live | undefined;
let writer: { proc: ChildProcess; done: Promise<string> } | undefined;
const cleanups: (() => void)[] = [];

afterEach(async () => {
  writer?.proc.kill();
  writer = undefined;
  await live?.stop();
  live = undefined;
  for (const c of cleanups.splice(0)) c();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function waitFile(path: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`${path} did not appear`);
    await sleep(10);
  }
}

describe('backup of a live export', () => {
  for (const cmd of ['blockdev-backup', 'drive-backup', 'drive-backup mode=existing'] as const) {
    it(`${cmd}: the target is the disk as it was when the job started, while the client keeps writing`, async () => {
      const dir = tempDir('blockd-backup-');
      const src = join(dir, 'src.raw');
      const tgt = join(dir, 'tgt.qcow2');
      const model = join(dir, 'model.raw');
      const atStart = join(dir, 'at-start.raw');
      const [paused, go, stop] = ['paused', 'go', 'stop'].map((n) => join(dir, n));
      makeSource(src);
      copyFileSync(src, model);
      const extra = [
        '--blockdev', `driver=file,node-name=srcf,filename=${src}`,
        '--blockdev', 'driver=raw,node-name=src,file=srcf',
        '--export', 'type=nbd,id=e0,node-name=src,name=disk,writable=on',
      ];
      if (cmd !== 'drive-backup') run('qemu-img', ['create', '-q', '-f', 'qcow2', tgt, String(SIZE)]);
      if (cmd === 'blockdev-backup') {
        extra.push('--blockdev', `driver=qcow2,node-name=tgt,file.driver=file,file.filename=${tgt}`);
      }
      live = await startLive('blockd', dir, extra);
      writer = startWriter(live.nbdSock, 'disk', model, stop, 7, { after: 40, paused, go });
      await waitFile(paused);
      copyFileSync(model, atStart);
      // Slow enough that most clusters are overwritten by the client before the job reaches them.
      const args = { 'job-id': 'b0', device: 'src', sync: 'full', speed: 16 * 1024 * 1024 };
      if (cmd === 'blockdev-backup') await live.qmp.execute('blockdev-backup', { ...args, target: 'tgt' });
      else if (cmd === 'drive-backup') await live.qmp.execute('drive-backup', { ...args, target: tgt, format: 'qcow2' });
      else await live.qmp.execute('drive-backup', { ...args, target: tgt, mode: 'existing' });
      writeFileSync(go, '');
      await sleep(300);
      await live.qmp.execute('block-job-set-speed', { device: 'b0', speed: 0 });
      await live.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'b0' && d.status === 'null');
      await sleep(200);
      writeFileSync(stop, '');
      const writes = Number(await writer.done);
      writer = undefined;
      expect(writes).toBeGreaterThan(60);
      expect(sequence(live.events, 'b0')).toEqual(BACKUP_DONE);
      // The export (on the source again) has every write; the filter is gone.
      expect((await live.qmp.execute('query-block-exports') as { 'node-name': string }[])[0]!['node-name']).toBe('src');
      run('qemu-img', ['compare', '-f', 'raw', model, `nbd+unix:///disk?socket=${live.nbdSock}`]);
      await live.stop();
      live = undefined;
      run('qemu-img', ['check', tgt]);
      run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', atStart, tgt]);
      expect(sha(model)).not.toBe(sha(atStart));
    }, 120_000);
  }

  it('sync=none copies only what the client overwrites, until cancelled', async () => {
    const dir = tempDir('blockd-backup-');
    const src = join(dir, 'src.raw');
    const tgt = join(dir, 'tgt.qcow2');
    makeSource(src);
    const atStart = join(dir, 'at-start.raw');
    copyFileSync(src, atStart);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', tgt, String(SIZE)]);
    live = await startLive('blockd', dir, [
      '--blockdev', `driver=file,node-name=srcf,filename=${src}`,
      '--blockdev', 'driver=raw,node-name=src,file=srcf',
      '--blockdev', `driver=qcow2,node-name=tgt,file.driver=file,file.filename=${tgt}`,
      '--export', 'type=nbd,id=e0,node-name=src,name=disk,writable=on',
    ]);
    await live.qmp.execute('blockdev-backup', { 'job-id': 'b1', device: 'src', target: 'tgt', sync: 'none' });
    run(SYSTEM_PYTHON, ['-c', `import nbd\nh=nbd.NBD()\nh.set_export_name('disk')\nh.connect_unix(${JSON.stringify(live.nbdSock)})\nh.pwrite(b'\\x55'*8192, 4096)\nh.shutdown()`]);
    await live.qmp.execute('block-job-cancel', { device: 'b1' });
    await live.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'b1' && d.status === 'null');
    expect(sequence(live.events, 'b1')).toEqual(['created', 'running', 'paused', 'running', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    await live.stop();
    live = undefined;
    // Only the overwritten cluster (old data) is in the target.
    const map = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'qcow2', tgt])) as { start: number; length: number; data: boolean }[];
    expect(map.filter((e) => e.data)).toEqual([expect.objectContaining({ start: 0, length: 65536, data: true })]);
    const head = Buffer.alloc(65536);
    readFileSync(atStart).copy(head, 0, 0, 65536);
    const out = join(dir, 'out.raw');
    run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', tgt, out]);
    expect(readFileSync(out).subarray(0, 65536).equals(head)).toBe(true);
  }, 60_000);
});

/** The same QMP commands against qsd 7.2 and bin/blockd: event sequences and replies. */
describe('backup and mirror side by side with qemu-storage-daemon', () => {
  async function script(which: 'qsd' | 'blockd'): Promise<string[]> {
    const dir = tempDir(`blockd-live-sbs-${which}-`);
    const src = join(dir, 'src.raw');
    makeSource(src);
    for (const t of ['t1', 't2', 't3']) run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, t), String(SIZE)]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'small'), '1M']);
    const l = await startLive(which, dir, [
      '--blockdev', `driver=file,node-name=srcf,filename=${src}`,
      '--blockdev', 'driver=raw,node-name=src,file=srcf',
      ...['t1', 't2', 't3', 'small'].flatMap((t) => ['--blockdev', `driver=qcow2,node-name=${t},file.driver=file,file.filename=${join(dir, t)}`]),
    ]);
    const out: string[] = [];
    const exec = async (cmd: string, args: Record<string, unknown>) => {
      try {
        await l.qmp.execute(cmd, args);
        out.push(`${cmd} ok`);
      } catch (e) {
        if (!(e instanceof QmpCommandError)) throw e;
        out.push(`${cmd} ${e.errorClass}: ${e.desc}`);
      }
    };
    const done = (id: string) => l.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === id && d.status === 'null');
    try {
      await exec('blockdev-mirror', { 'job-id': 'm0', device: 'src', target: 't1', sync: 'full' });
      await l.waitEvent('BLOCK_JOB_READY');
      await exec('job-complete', { id: 'm0' });
      await done('m0');
      await exec('blockdev-mirror', { 'job-id': 'm1', device: 't1', target: 't2', sync: 'full' });
      await l.waitEvent('BLOCK_JOB_READY', (d) => d.device === 'm1');
      await exec('block-job-cancel', { device: 'm1' });
      await done('m1');
      await exec('blockdev-backup', { 'job-id': 'b0', device: 'src', target: 't3', sync: 'full' });
      await done('b0');
      await exec('blockdev-backup', { 'job-id': 'b1', device: 'src', target: 't3', sync: 'none' });
      await sleep(100);
      await exec('block-job-cancel', { device: 'b1' });
      await done('b1');
      await exec('blockdev-mirror', { 'job-id': 'm2', device: 'src', target: 'small', sync: 'full' });
      await done('m2');
      // Manual finalisation and dismissal: the pivot waits for job-finalize.
      await exec('blockdev-mirror', { 'job-id': 'm4', device: 't1', target: 't2', sync: 'full', 'auto-finalize': false, 'auto-dismiss': false });
      await l.waitEvent('BLOCK_JOB_READY', (d) => d.device === 'm4');
      await exec('job-complete', { id: 'm4' });
      await l.waitEvent('BLOCK_JOB_PENDING', (d) => d.id === 'm4');
      await exec('job-finalize', { id: 'm4' });
      await l.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'm4' && d.status === 'concluded');
      await exec('job-dismiss', { id: 'm4' });
      await done('m4');
      await exec('blockdev-backup', { 'job-id': 'b4', device: 't1', target: 't2', sync: 'full', 'auto-finalize': false, 'auto-dismiss': false });
      await l.waitEvent('BLOCK_JOB_PENDING', (d) => d.id === 'b4');
      await exec('job-finalize', { id: 'b4' });
      await l.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'b4' && d.status === 'concluded');
      await exec('job-dismiss', { id: 'b4' });
      await done('b4');
      // Incremental backup: a bitmap records a client's write; only that cluster is copied and the bitmap is emptied.
      await exec('block-dirty-bitmap-add', { node: 'src', name: 'bm0' });
      await exec('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'src', name: 'disk', writable: true });
      run(SYSTEM_PYTHON, ['-c', `import nbd\nh=nbd.NBD()\nh.set_export_name('disk')\nh.connect_unix(${JSON.stringify(l.nbdSock)})\nh.pwrite(b'\\x77'*4096, 1024*1024+512)\nh.shutdown()`]);
      await exec('blockdev-backup', { 'job-id': 'i0', device: 'src', target: 't2', sync: 'incremental', bitmap: 'bm0' });
      await done('i0');
      const bitmaps = (await l.qmp.execute('query-named-block-nodes', { flat: true }) as { 'node-name': string; 'dirty-bitmaps'?: { count: number }[] }[])
        .find((n) => n['node-name'] === 'src')?.['dirty-bitmaps'];
      out.push(`bm0 after: ${JSON.stringify(bitmaps?.map((b) => b.count))}`);
      await exec('block-export-del', { id: 'e0' });
      // While a mirror works on src, other jobs on it are refused.
      await exec('blockdev-mirror', { 'job-id': 'm3', device: 'src', target: 't2', sync: 'full', speed: 1024 });
      await exec('blockdev-backup', { 'job-id': 'x', device: 'src', target: 't3', sync: 'full' });
      await exec('blockdev-backup', { 'job-id': 'x', device: 'src', target: 'src', sync: 'full' });
      await exec('blockdev-mirror', { 'job-id': 'x', device: 'src', target: 't3', sync: 'full' });
      await exec('block-job-cancel', { device: 'm3', force: true });
      await done('m3');
      for (const [cmd, args] of [
        ['blockdev-backup', { 'job-id': 'x', device: 'src', target: 't3', sync: 'incremental', bitmap: 'nope' }],
        ['blockdev-backup', { 'job-id': 'x', device: 'src', target: 't3', sync: 'incremental', bitmap: 'bm0', 'bitmap-mode': 'never' }],
        ['blockdev-backup', { 'job-id': 'x', device: 'src', target: 't3', sync: 'bitmap', bitmap: 'bm0' }],
        ['blockdev-backup', { 'job-id': 'x', device: 'src', target: 't3', sync: 'full', 'bitmap-mode': 'never' }],
        ['blockdev-mirror', { device: 'src', target: 't2', sync: 'full' }],
        ['blockdev-mirror', { 'job-id': 'x', device: 'src', target: 'src', sync: 'full' }],
        ['blockdev-mirror', { 'job-id': 'x', device: 'nope', target: 't2', sync: 'full' }],
        ['blockdev-mirror', { 'job-id': 'x', device: 'src', target: 'nope', sync: 'full' }],
        ['blockdev-mirror', { 'job-id': 'x', device: 'src', target: 't2', sync: 'bitmap' }],
        ['blockdev-mirror', { 'job-id': 'x', device: 'src', target: 't2', sync: 'full', granularity: 1000 }],
        ['blockdev-mirror', { 'job-id': 'x', device: 'src', target: 't2', sync: 'full', granularity: 256 }],
        ['blockdev-mirror', { 'job-id': 'x', device: 'src', target: 't2', sync: 'full', 'buf-size': -1 }],
        ['blockdev-mirror', { 'job-id': 'x', device: 'src', target: 't2', sync: 'full', speed: -1 }],
        ['blockdev-backup', { 'job-id': 'x', device: 'src', target: 't3', sync: 'incremental' }],
        ['blockdev-backup', { 'job-id': 'x', device: 'src', target: 't3', sync: 'bitmap' }],
        ['blockdev-backup', { 'job-id': 'x', device: 'src', target: 'src', sync: 'full' }],
        ['blockdev-backup', { 'job-id': 'x', device: 'src', target: 'small', sync: 'full' }],
      ] as const) await exec(cmd, args);
      // m3 is there only to make src busy: its timing (qsd's rate limit lets a first pass through) is not compared.
      for (const e of l.events.filter((x) => x.data.id !== 'm3' && x.data.device !== 'm3')) {
        const d = e.data;
        out.push(e.event === 'JOB_STATUS_CHANGE' ? `${d.id} ${d.status}` : `${e.event} ${JSON.stringify(d)}`);
      }
    } finally {
      await l.stop();
    }
    for (const t of ['t1', 't2', 't3']) run('qemu-img', ['check', join(dir, t)]);
    out.push(`t1 = src: ${spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, join(dir, 't1')]).status}`);
    out.push(`t3 = src: ${spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, join(dir, 't3')]).status}`);
    // t2 (a soft-cancelled mirror of t1, then the incremental backup) differs from t1 only in the written cluster.
    const map = JSON.parse(run('qemu-img', ['map', '--output=json', join(dir, 't2')])) as { start: number; length: number; data: boolean }[];
    const ranges: number[][] = [];
    for (const e of map.filter((x) => x.data)) {
      const last = ranges[ranges.length - 1];
      if (last && last[0]! + last[1]! === e.start) last[1]! += e.length; else ranges.push([e.start, e.length]);
    }
    out.push(`t2 data: ${JSON.stringify(ranges)}`);
    out.push(`t2 = t1: ${spawnSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', join(dir, 't1'), join(dir, 't2')]).status}`);
    return out;
  }

  it('gives the same replies and events as qsd 7.2', async () => {
    const q = await script('qsd');
    const b = await script('blockd');
    expect(b).toEqual(q);
  }, 120_000);
});

/**
 * On-error policies on a target that runs out of space: a 12 MiB tmpfs (needs
 * root to mount) partly taken by a filler file. 'report' fails the job;
 * 'enospc' stops it (paused, io-status nospace) and, once the filler is
 * removed, job-resume retries and the job finishes with a correct target.
 */
describe('target out of space (backup and mirror)', () => {
  function tinyFs(): string {
    const dir = tempDir('blockd-tiny-');
    mkdirSync(join(dir, 'mnt'));
    run('mount', ['-t', 'tmpfs', '-o', 'size=12M', 'tmpfs', join(dir, 'mnt')]);
    cleanups.push(() => { spawnSync('umount', ['-l', join(dir, 'mnt')]); });
    return dir;
  }

  async function fill(which: 'qsd' | 'blockd', job: 'backup' | 'mirror', policy: string): Promise<string[]> {
    const dir = tinyFs();
    const src = join(dir, 'src.raw');
    run('qemu-img', ['create', '-q', '-f', 'raw', src, '8M']);
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x66 0 8M', src]);
    const filler = join(dir, 'mnt', 'filler');
    writeFileSync(filler, Buffer.alloc(8 * 1024 * 1024, 1));
    const tgt = join(dir, 'mnt', 'tgt.raw');
    run('qemu-img', ['create', '-q', '-f', 'raw', tgt, '8M']);
    const l = await startLive(which, dir, [
      '--blockdev', `driver=file,node-name=srcf,filename=${src}`,
      '--blockdev', 'driver=raw,node-name=src,file=srcf',
      '--blockdev', `driver=raw,node-name=tgt,file.driver=file,file.filename=${tgt}`,
    ]);
    live = l;
    const args = { 'job-id': 'f0', device: 'src', target: 'tgt', sync: 'full', 'on-target-error': policy };
    await l.qmp.execute(job === 'backup' ? 'blockdev-backup' : 'blockdev-mirror', args);
    const out: string[] = [];
    if (policy === 'report') {
      await l.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'f0' && d.status === 'null');
    } else {
      await l.waitEvent('BLOCK_JOB_ERROR');
      await sleep(200);
      const [info] = await l.qmp.execute('query-block-jobs') as Record<string, unknown>[];
      out.push(`stopped: ${info!['io-status']} paused=${info!.paused} status=${info!.status}`);
      rmSync(filler);
      await l.qmp.execute('block-job-resume', { device: 'f0' });
      if (job === 'mirror') {
        await l.waitEvent('BLOCK_JOB_READY');
        await l.qmp.execute('block-job-complete', { device: 'f0' });
      }
      await l.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'f0' && d.status === 'null');
    }
    await l.stop();
    live = undefined;
    if (policy !== 'report') out.push(`target = source: ${spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, tgt]).status}`);
    // Several errors may be reported (one per request in flight): compare the distinct lines in order.
    const lines = l.events.map((e) => (e.event === 'JOB_STATUS_CHANGE' ? String(e.data.status)
      : e.event === 'BLOCK_JOB_ERROR' ? `${e.event} ${e.data.operation} ${e.data.action}`
        : `${e.event}${e.data.error ? ` ${String(e.data.error)}` : ''}`));
    return [...lines.filter((x, i) => x !== lines[i - 1]), ...out];
  }

  for (const job of ['backup', 'mirror'] as const) {
    for (const policy of ['report', 'enospc']) {
      it(`${job} on-target-error=${policy}: same events and outcome as qsd`, async () => {
        const q = await fill('qsd', job, policy);
        for (const c of cleanups.splice(0)) c();
        const b = await fill('blockd', job, policy);
        expect(q).toContain(`BLOCK_JOB_ERROR write ${policy === 'report' ? 'report' : 'stop'}`);
        if (policy !== 'report') expect(q).toContain('target = source: 0');
        expect(b).toEqual(q);
      }, 120_000);
    }
  }
});
