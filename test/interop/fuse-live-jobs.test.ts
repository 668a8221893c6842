/**
 * Writes through a FUSE file are ordinary block requests: a program keeps
 * writing through the mounted file of a qcow2 node while block-stream pulls
 * its backing file in, and while blockdev-mirror copies it to a new image
 * and pivots to it. The file, and each resulting image, must hold exactly
 * what was written on top of the initial contents.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir } from '../helpers/temp.ts';
import { run } from '../helpers/tools.ts';
import { qmpDaemon, waitFor, imageContents, type Ev } from '../helpers/live.ts';
import { mountpointFile, unmountAll } from '../helpers/fuse.ts';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import type { Running } from '../helpers/daemons.ts';

const SIZE = 8 * 1024 * 1024;
let cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

/** Keeps writing random 4-16 KiB blocks through the file (one at a time, each synchronous on FUSE); models what was written. */
class FileWriter {
  writes = 0;
  private stopped = false;
  private done?: Promise<void>;
  private seed = 4242;
  constructor(private readonly fh: FileHandle, readonly model: Buffer) {}
  private rand(n: number): number {
    this.seed = (this.seed * 1103515245 + 12345) & 0x7fffffff;
    return this.seed % n;
  }
  start(): void {
    this.done = (async () => {
      while (!this.stopped) {
        const len = (1 + this.rand(4)) * 4096;
        const offset = this.rand((SIZE - len) / 512) * 512;
        const data = Buffer.alloc(len, 1 + this.rand(250));
        data.writeUInt32BE(this.writes, 0);
        await this.fh.write(data, 0, len, offset);
        data.copy(this.model, offset);
        this.writes++;
        // A guest's pace, not a benchmark's: the mirror must be able to converge.
        await new Promise((r) => setTimeout(r, 3));
      }
    })();
  }
  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

function makeChain(dir: string): void {
  const base = join(dir, 'base.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(SIZE)]);
  run('qemu-io', ['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 3M 2M', '-c', 'write -P 0x33 7M 512k', base]);
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', join(dir, 'top.qcow2')]);
  run('qemu-io', ['-c', 'write -P 0x44 512k 1M', join(dir, 'top.qcow2')]);
}

async function setUp(): Promise<{ dir: string; mnt: string; d: { proc: Running; qmp: QmpClient; events: Ev[] }; fh: FileHandle; w: FileWriter }> {
  const dir = tempDir('blockd-fuse-live-');
  makeChain(dir);
  const initial = imageContents(dir, 'top.qcow2');
  const mnt = mountpointFile(dir);
  const d = await qmpDaemon('blockd', dir, [
    '--blockdev', `driver=file,node-name=top-file,filename=${join(dir, 'top.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=top,file=top-file',
    '--export', `type=fuse,id=e0,node-name=top,mountpoint=${mnt},writable=on`,
  ]);
  cleanups.push(async () => { d.qmp.close(); await d.proc.stop(); unmountAll(dir); });
  const fh = await open(mnt, 'r+');
  cleanups.push(() => fh.close().catch(() => undefined));
  const w = new FileWriter(fh, initial);
  cleanups.push(() => w.stop().catch(() => undefined));
  return { dir, mnt, d, fh, w };
}

async function wholeFile(fh: FileHandle): Promise<Buffer> {
  const b = Buffer.alloc(SIZE);
  const { bytesRead } = await fh.read(b, 0, SIZE, 0);
  expect(bytesRead).toBe(SIZE);
  return b;
}

async function stopDaemon(s: Awaited<ReturnType<typeof setUp>>): Promise<void> {
  await s.fh.close();
  s.d.qmp.close();
  await s.d.proc.stop();
  cleanups = [];
  unmountAll(s.dir);
}

describe('FUSE export under live jobs', () => {
  it('block-stream while a program writes through the file', async () => {
    const s = await setUp();
    s.w.start();
    await new Promise((r) => setTimeout(r, 100));
    await s.d.qmp.execute('block-stream', { 'job-id': 's0', device: 'top', speed: 4 * 1024 * 1024 });
    await waitFor(s.d.events, (e) => e.event === 'BLOCK_JOB_COMPLETED', 60_000);
    await new Promise((r) => setTimeout(r, 100));
    await s.w.stop();
    expect(s.w.writes).toBeGreaterThan(50);
    expect(s.d.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!.data).toMatchObject({ device: 's0', len: SIZE, offset: SIZE });
    await s.fh.sync();
    expect((await wholeFile(s.fh)).equals(s.w.model)).toBe(true);
    await stopDaemon(s);
    expect(run('qemu-img', ['info', join(s.dir, 'top.qcow2')])).not.toContain('backing file');
    run('qemu-img', ['check', join(s.dir, 'top.qcow2')]);
    expect(imageContents(s.dir, 'top.qcow2').equals(s.w.model)).toBe(true);
  });

  it('blockdev-mirror and its pivot while a program writes through the file', async () => {
    const s = await setUp();
    const tgt = join(s.dir, 'tgt.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', tgt, String(SIZE)]);
    await s.d.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'tgt', file: { driver: 'file', filename: tgt } });
    s.w.start();
    await new Promise((r) => setTimeout(r, 100));
    await s.d.qmp.execute('blockdev-mirror', { 'job-id': 'm0', device: 'top', target: 'tgt', sync: 'full' });
    await waitFor(s.d.events, (e) => e.event === 'BLOCK_JOB_READY', 60_000);
    await new Promise((r) => setTimeout(r, 200));
    await s.d.qmp.execute('job-complete', { id: 'm0' });
    await waitFor(s.d.events, (e) => e.event === 'BLOCK_JOB_COMPLETED', 60_000);
    await new Promise((r) => setTimeout(r, 100));
    await s.w.stop();
    expect(s.w.writes).toBeGreaterThan(50);
    expect(s.d.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!.data).not.toHaveProperty('error');
    // The export now serves the mirror's target.
    expect(await s.d.qmp.execute('query-block-exports')).toEqual([{ type: 'fuse', id: 'e0', 'node-name': 'tgt', 'shutting-down': false }]);
    await s.fh.sync();
    expect((await wholeFile(s.fh)).equals(s.w.model)).toBe(true);
    await stopDaemon(s);
    run('qemu-img', ['check', tgt]);
    expect(imageContents(s.dir, 'tgt.qcow2').equals(s.w.model)).toBe(true);
  });
});
