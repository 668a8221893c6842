/**
 * A mirror into an nbd node whose server dies (issue 14's reconnect check),
 * blockd and qsd 7.2 as the source with the same commands: the destination
 * daemon (blockd serving a raw image) is killed with SIGKILL during the
 * bulk copy. Restarted within reconnect-delay, the job goes on, reaches
 * READY and completes, and the destination equals the source; restarted
 * after it, the job fails per on-target-error=report, with the same event
 * sequence and error as qsd's.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { cleanupsAfterEach, waitFor } from '../helpers/live.ts';
import { sequence } from '../helpers/live-export.ts';
import { side, stopSide, type Who } from '../helpers/migration.ts';
import { run } from '../helpers/tools.ts';

const SIZE = 32 * 1024 * 1024;
const cleanups = cleanupsAfterEach();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function destination(dir: string): Promise<Running> {
  const sock = join(dir, 'dst.sock');
  const d = await startDaemon('blockd', [
    '--blockdev', `driver=file,node-name=f,filename=${join(dir, 'dst.raw')}`,
    '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e,node-name=f,name=tgt,writable=on',
  ], sock);
  cleanups.push(async () => { await d.stop('SIGKILL'); });
  return d;
}

async function scenario(who: Who, restartAfterMs: number, delay: number) {
  const dir = tempDir('blockd-nbdmr-');
  const src = join(dir, 'src.raw');
  run('qemu-img', ['create', '-q', '-f', 'raw', src, String(SIZE)]);
  run('qemu-io', ['-f', 'raw', '-c', `write -P 0x5a 0 ${SIZE}`, src]);
  run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'dst.raw'), String(SIZE)]);
  let dst = await destination(dir);
  const s = await side(who, dir, 'src', ['--blockdev', `driver=file,node-name=disk,filename=${src}`]);
  cleanups.push(() => stopSide(s));
  await s.qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': 'remote', server: { type: 'unix', path: join(dir, 'dst.sock') }, export: 'tgt', 'reconnect-delay': delay });
  // 8 MiB/s: the 32 MiB copy is still running when the destination dies.
  await s.qmp.execute('blockdev-mirror', { 'job-id': 'm0', device: 'disk', target: 'remote', sync: 'full', speed: 8 * 1024 * 1024, 'on-target-error': 'report' });
  await sleep(700);
  await dst.stop('SIGKILL');
  await sleep(restartAfterMs);
  dst = await destination(dir);
  // The job may have failed already (after the delay).
  await s.qmp.execute('block-job-set-speed', { device: 'm0', speed: 0 }).catch(() => undefined);
  await waitFor(s.events, (e) => (e.event === 'BLOCK_JOB_READY') || (e.event === 'JOB_STATUS_CHANGE' && e.data.status === 'concluded'), 60_000);
  const ready = s.events.some((e) => e.event === 'BLOCK_JOB_READY');
  if (ready) await s.qmp.execute('job-complete', { id: 'm0' });
  await waitFor(s.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.status === 'null', 60_000);
  const completed = s.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')?.data;
  const errors = s.events.filter((e) => e.event === 'BLOCK_JOB_ERROR').map((e) => e.data);
  await stopSide(s);
  await dst.stop();
  cleanups.length = 0;
  return { seq: sequence(s.events, 'm0'), ready, error: completed?.error, firstError: errors[0], same: readFileSync(join(dir, 'dst.raw')).equals(readFileSync(src)) };
}

describe('mirror into an nbd node whose server is killed', () => {
  it('restarted within reconnect-delay: the job continues and the copy is identical (blockd and qsd as source)', async () => {
    const [q, b] = [await scenario('qsd', 1000, 10), await scenario('blockd', 1000, 10)];
    expect(b.seq).toEqual(q.seq);
    expect(q.ready).toBe(true);
    expect(q.same).toBe(true);
    expect(b.same).toBe(true);
    expect(b.firstError).toBeUndefined();
  }, 180_000);

  it('restarted after reconnect-delay: the job fails per on-target-error=report, as qsd', async () => {
    const [q, b] = [await scenario('qsd', 3000, 1), await scenario('blockd', 3000, 1)];
    expect(b.seq).toEqual(q.seq);
    expect(q.ready).toBe(false);
    expect(b.error).toBe(q.error);
    expect(b.firstError).toEqual(q.firstError);
  }, 180_000);
});
