/**
 * Live storage migration through driver=nbd, side by side with qsd 7.2
 * (issue 14 item 4): blockd→blockd, blockd→qsd and qsd→blockd. The
 * destination makes the target with blockdev-create and exports it
 * writable; the source mirrors its live disk (a client writes to its
 * export the whole time) into an nbd node on that export, sync=full, or
 * sync=top when both sides share the backing file; at READY the client
 * stops (the guest pauses) and the job is cancelled (block-job-cancel, as libvirt does: the
 * destination takes over) or completed. The destination's image then
 * equals the source's and the model of acknowledged writes, and passes
 * `qemu-img check`; the source's job events equal qsd's as the source.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { tempDir } from '../helpers/daemons.ts';
import { cleanupsAfterEach, flush, imageContents, waitFor, Writer } from '../helpers/live.ts';
import { RawClient, rawNegotiate } from '../helpers/nbd.ts';
import { sequence } from '../helpers/live-export.ts';
import { addRemote, makeChain, prepareDestination, side, stopSide, type Side, type Who } from '../helpers/migration.ts';
import { run } from '../helpers/tools.ts';

const SIZE = 8 * 1024 * 1024;
const cleanups = cleanupsAfterEach();

interface Outcome { seq: string[]; writes: number }

type Via = 'blockdev-mirror' | 'drive-mirror';

async function migrate(src: Who, dst: Who, sync: 'full' | 'top', finish: 'block-job-cancel' | 'job-complete', via: Via): Promise<Outcome> {
  const root = tempDir('blockd-migr-');
  const initial = makeChain(root, SIZE);
  const source = await side(src, root, 'src', [
    '--blockdev', `driver=file,node-name=disk-file,filename=${join(root, 'disk.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=disk,file=disk-file',
    '--export', 'type=nbd,id=e0,node-name=disk,name=disk,writable=on',
  ]);
  cleanups.push(() => stopSide(source));
  const dest = await side(dst, root, 'dst', []);
  cleanups.push(() => stopSide(dest));
  const image = await prepareDestination(dest, SIZE, sync === 'top' ? join(root, 'base.qcow2') : undefined);
  if (via === 'blockdev-mirror') await addRemote(source, dest);

  const c = new RawClient(source.nbdSock);
  cleanups.push(async () => c.destroy());
  expect(await rawNegotiate(c, 'disk')).toBe(SIZE);
  const w = new Writer(c, initial, 4);
  w.start();
  await new Promise((r) => setTimeout(r, 200));
  if (via === 'blockdev-mirror') await source.qmp.execute('blockdev-mirror', { 'job-id': 'm0', device: 'disk', target: 'remote', sync });
  else {
    // libvirt's older form: the target by its NBD URI, an existing image of a given format.
    const target = `nbd+unix:///tgt?socket=${dest.nbdSock}`;
    await source.qmp.execute('drive-mirror', { 'job-id': 'm0', device: 'disk', target, format: 'raw', mode: 'existing', sync });
  }
  await waitFor(source.events, (e) => e.event === 'BLOCK_JOB_READY', 60_000);
  await new Promise((r) => setTimeout(r, 300));
  // The guest pauses: nothing more is written, and the mirror has everything once it is in sync.
  await w.stop();
  await flush(c);
  expect(w.errors).toBe(0);
  // block-job-cancel (not job-cancel, which always forces): a mirror in sync ends with the target complete.
  await source.qmp.execute(finish, finish === 'job-complete' ? { id: 'm0' } : { device: 'm0' });
  await waitFor(source.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 'm0' && e.data.status === 'null', 60_000);
  const exported = (await source.qmp.execute('query-block-exports')) as { 'node-name': string }[];
  // Cancelled in sync: the source keeps its disk; completed: the export now writes to the remote node.
  if (finish === 'block-job-cancel') expect(exported[0]!['node-name']).toBe('disk');
  else expect(exported[0]!['node-name']).not.toBe('disk');
  c.destroy();
  await stopSide(source);
  await stopSide(dest);
  cleanups.length = 0;
  run('qemu-img', ['check', image]);
  const what = `${src}→${dst} ${via} sync=${sync} ${finish}`;
  expect(imageContents(root, 'disk.qcow2').equals(w.model), `${what}: source`).toBe(true);
  expect(imageContents(join(root, 'dst'), 'tgt.qcow2').equals(w.model), `${what}: destination`).toBe(true);
  if (sync === 'top') expect(run('qemu-img', ['info', image])).toContain('backing file: ');
  return { seq: sequence(source.events, 'm0'), writes: w.writes };
}

describe('live storage migration over NBD', () => {
  const cases = [
    ['full', 'job-complete', 'blockdev-mirror'], ['full', 'block-job-cancel', 'blockdev-mirror'],
    ['top', 'job-complete', 'blockdev-mirror'], ['top', 'block-job-cancel', 'blockdev-mirror'],
    ['full', 'job-complete', 'drive-mirror'], ['top', 'block-job-cancel', 'drive-mirror'],
  ] as const;
  for (const [sync, finish, via] of cases) {
    it(`${via} sync=${sync}, ${finish}: blockd→blockd, blockd→qsd, qsd→blockd give the same result, and blockd's events as the source are qsd's`, async () => {
      const bb = await migrate('blockd', 'blockd', sync, finish, via);
      const bq = await migrate('blockd', 'qsd', sync, finish, via);
      const qb = await migrate('qsd', 'blockd', sync, finish, via);
      for (const o of [bb, bq, qb]) expect(o.writes).toBeGreaterThan(20);
      expect(bb.seq).toEqual(qb.seq);
      expect(bq.seq).toEqual(qb.seq);
      expect(qb.seq).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'waiting', 'pending',
        'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    }, 240_000);
  }
});
