/**
 * Format probing of drive-mirror and drive-backup targets given without
 * `format` (mode=existing), side by side with qsd 7.2 (#20): a qcow2 target
 * is opened as qcow2; a raw one is probed raw, with QEMU's warning, and its
 * block 0 is guarded: a copy that would write another format's header there
 * (the source disk holds a qcow2 image) fails with EPERM, with qsd's events.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { readFileSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { qmpDaemon, waitFor, type Ev } from '../helpers/live.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';

const SIZE = 4 * 1024 * 1024;
const procs: Running[] = [];
afterEach(async () => { for (const p of procs.splice(0)) await p.stop().catch(() => undefined); });

type Src = 'qcow2-inside' | 'plain';

function images(dir: string, src: Src, target: 'raw' | 'qcow2'): void {
  const srcImg = join(dir, 'src.raw');
  writeFileSync(srcImg, Buffer.alloc(0));
  truncateSync(srcImg, SIZE);
  if (src === 'qcow2-inside') {
    // A guest disk whose first bytes are a qcow2 header (the guest keeps an image on its raw disk).
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'inner.qcow2'), '1M']);
    run('dd', [`if=${join(dir, 'inner.qcow2')}`, `of=${srcImg}`, 'conv=notrunc', 'status=none']);
  }
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 64k', srcImg]);
  if (target === 'raw') { writeFileSync(join(dir, 'tgt'), Buffer.alloc(0)); truncateSync(join(dir, 'tgt'), SIZE); }
  else run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'tgt'), String(SIZE)]);
}

async function session(who: 'qsd' | 'blockd', cmd: 'drive-mirror' | 'drive-backup', src: Src, target: 'raw' | 'qcow2') {
  const dir = tempDir(`probe-${who}-`);
  images(dir, src, target);
  const { proc, qmp, events } = await qmpDaemon(who, dir, [
    '--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'src.raw')}`,
    '--blockdev', 'driver=raw,node-name=src,file=f0',
  ]);
  procs.push(proc);
  const tgt = join(dir, 'tgt');
  await qmp.execute(cmd, { 'job-id': 'j', device: 'src', target: tgt, mode: 'existing', sync: 'full' });
  const ended = (e: Ev) => e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_READY';
  await waitFor(events, ended);
  const nodes = (await qmp.execute('query-named-block-nodes', { flat: true })) as { drv: string; file: string }[];
  const tgtNode = nodes.find((n) => n.file === tgt && n.drv !== 'file')?.drv;
  if (events.some((e) => e.event === 'BLOCK_JOB_READY')) {
    await qmp.execute('job-complete', { id: 'j' });
    await waitFor(events, (e) => e.event === 'BLOCK_JOB_COMPLETED');
  }
  await waitFor(events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.status === 'null');
  qmp.close();
  await proc.stop();
  const stderr = proc.stderr();
  const contents = target === 'raw' ? readFileSync(tgt).equals(readFileSync(join(dir, 'src.raw'))) : undefined;
  return {
    tgtNode,
    events: events.map((e) => [e.event, e.data.status ?? e.data.operation ?? e.data.error ?? null]),
    warned: stderr.includes(`Image format was not specified for '${tgt}' and probing guessed raw.`),
    restricted: stderr.includes('write operations on block 0 will be restricted'),
    contents,
  };
}

describe('probing drive-* targets without format, side by side with qsd', () => {
  const cases: [string, 'drive-mirror' | 'drive-backup', Src, 'raw' | 'qcow2', Record<string, unknown>][] = [
    ['drive-mirror onto a raw target: probed raw, warned, copied', 'drive-mirror', 'plain', 'raw', { warned: true, contents: true }],
    ['drive-mirror onto a raw target, a qcow2 header in block 0: EPERM', 'drive-mirror', 'qcow2-inside', 'raw', { warned: true, contents: false }],
    ['drive-backup onto a raw target, a qcow2 header in block 0: EPERM', 'drive-backup', 'qcow2-inside', 'raw', { warned: true, contents: false }],
    ['drive-mirror onto a qcow2 target: probed qcow2, no warning', 'drive-mirror', 'qcow2-inside', 'qcow2', { warned: false, tgtNode: 'qcow2' }],
  ];
  for (const [name, cmd, src, target, expected] of cases) {
    it(name, async () => {
      const qsd = await session('qsd', cmd, src, target);
      const blockd = await session('blockd', cmd, src, target);
      expect(blockd).toEqual(qsd);
      expect(blockd).toMatchObject(expected);
    }, 60_000);
  }
});
