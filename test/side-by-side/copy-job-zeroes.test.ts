/**
 * Zeroes in copy jobs, side by side with qsd: a backing chain whose layers
 * hold data, data clusters full of zeroes, zero clusters and holes (and a
 * raw base with holes) is streamed, read through a copy-on-read filter,
 * committed (intermediate and active), mirrored and backed up on both
 * daemons with the same commands; then `qemu-img map` of the image the job
 * wrote equals qsd's (which layer holds what, data or zero) and so does the
 * guest-visible content. blockd's copy-on-read wrote what reads as zeroes as
 * data clusters, where qsd writes zero clusters.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';
import { imageContents } from '../helpers/live.ts';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;

/** base.qcow2 ← mid.qcow2 ← top.qcow2, each layer with data, zero-filled data, zero clusters and holes; base.raw (sparse) ← rtop.qcow2. */
function setup(d: string): void {
  const img = (n: string) => join(d, n);
  run('qemu-img', ['create', '-f', 'qcow2', img('base.qcow2'), String(SIZE)]);
  run('qemu-io', ['-f', 'qcow2',
    '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0 1M 1M', '-c', 'write -z 2M 512k',
    '-c', 'write -P 0x22 3M 256k', '-c', 'write -P 0 3328k 128k', img('base.qcow2')]);
  run('qemu-img', ['create', '-f', 'qcow2', '-b', img('base.qcow2'), '-F', 'qcow2', img('mid.qcow2')]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0 2560k 256k', '-c', 'write -z 512k 128k', '-c', 'write -P 0x33 3584k 64k', img('mid.qcow2')]);
  run('qemu-img', ['create', '-f', 'qcow2', '-b', img('mid.qcow2'), '-F', 'qcow2', img('top.qcow2')]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 0 64k', '-c', 'write -P 0 1536k 64k', img('top.qcow2')]);
  run('qemu-img', ['create', '-f', 'raw', img('base.raw'), String(SIZE)]);
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 512k', '-c', 'write -P 0 1M 256k', '-c', 'flush', img('base.raw')]);
  run('qemu-img', ['create', '-f', 'qcow2', '-b', img('base.raw'), '-F', 'raw', img('rtop.qcow2')]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x66 2M 64k', img('rtop.qcow2')]);
  // Targets of mirror and backup: new, empty images.
  run('qemu-img', ['create', '-f', 'qcow2', img('tgt.qcow2'), String(SIZE)]);
  run('qemu-img', ['create', '-f', 'qcow2', img('tgt-unmap.qcow2'), String(SIZE)]);
}

/** The chain opened node by node (qsd's names are then the same on both sides). */
function chainArgs(d: string): string[] {
  const img = (n: string) => join(d, n);
  return [
    '--blockdev', `driver=file,node-name=base-file,filename=${img('base.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=base,file=base-file',
    '--blockdev', `driver=file,node-name=mid-file,filename=${img('mid.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=mid,file=mid-file,backing=base',
    '--blockdev', `driver=file,node-name=top-file,filename=${img('top.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=top,file=top-file,backing=mid',
    '--blockdev', `driver=file,node-name=rbase-file,filename=${img('base.raw')}`,
    '--blockdev', 'driver=raw,node-name=rbase,file=rbase-file',
    '--blockdev', `driver=file,node-name=rtop-file,filename=${img('rtop.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=rtop,file=rtop-file,backing=rbase',
    '--blockdev', `driver=file,node-name=tgt-file,filename=${img('tgt.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=tgt,file=tgt-file',
    '--blockdev', `driver=file,node-name=tgtu-file,filename=${img('tgt-unmap.qcow2')},discard=unmap`,
    '--blockdev', 'driver=qcow2,node-name=tgtu,file=tgtu-file,discard=unmap',
  ];
}

/**
 * qemu-img map of an image (following its backing chain): which layer holds what, data or zero.
 * Neighbours alike are merged: qemu-img splits a run where the clusters' places in the file are
 * not contiguous, which depends on the order of the writes, not on what was written.
 */
function imageMap(s: Side, image: string): unknown {
  const out: Record<string, unknown>[] = [];
  for (const e of JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'qcow2', join(s.dir, image)])) as Record<string, number | boolean>[]) {
    const x = { start: e.start, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data };
    const last = out[out.length - 1];
    if (last && (['depth', 'present', 'zero', 'data'] as const).every((k) => last[k] === x[k])) (last.length as number) += x.length as number;
    else out.push(x);
  }
  return out;
}

/** Runs a job to its end (job-complete once ready, for mirror and active commit). */
async function runJob(s: Side, cmd: string, args: Record<string, unknown>, complete = false): Promise<void> {
  await s.qmp.execute(cmd, { 'job-id': 'j', ...args });
  if (complete) {
    await waitFor(s.events, (e) => e.event === 'BLOCK_JOB_READY');
    await s.qmp.execute('job-complete', { id: 'j' });
  }
  await waitFor(s.events, (e) => e.event === 'BLOCK_JOB_COMPLETED');
  const done = s.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!;
  expect(done.data.error).toBeUndefined();
}

interface Case { what: string; image: string; args?: (d: string) => string[]; job: (s: Side) => Promise<void> }
const CASES: Case[] = [
  { what: 'block-stream of the whole chain', image: 'top.qcow2', job: (s) => runJob(s, 'block-stream', { device: 'top' }) },
  { what: 'block-stream down to a base', image: 'top.qcow2', job: (s) => runJob(s, 'block-stream', { device: 'top', 'base-node': 'base' }) },
  { what: 'block-stream from a sparse raw base', image: 'rtop.qcow2', job: (s) => runJob(s, 'block-stream', { device: 'rtop' }) },
  ...[false, true].map((structured): Case => ({
    what: `copy-on-read filter read end to end (${structured ? 'structured' : 'simple'} replies)`, image: 'top.qcow2',
    args: () => ['--blockdev', 'driver=copy-on-read,node-name=cor,file=top', '--export', 'type=nbd,id=e0,node-name=cor,name=cor'],
    // Structured replies: both servers send holes for what block status calls zero, without reading it.
    job: async (s) => {
      await s.py('cor', `h = nbd.NBD(); h.set_request_structured_replies(${structured ? 'True' : 'False'}); h.connect_uri(uri)
for off in range(0, h.get_size(), 1048576): h.pread(1048576, off)
h.shutdown(); print("null")`);
    },
  })),
  {
    what: 'copy-on-read filter with a bottom, unaligned reads', image: 'top.qcow2',
    args: () => ['--blockdev', 'driver=copy-on-read,node-name=cor,file=top,bottom=mid', '--export', 'type=nbd,id=e0,node-name=cor,name=cor'],
    job: async (s) => {
      await s.py('cor', `h = nbd.NBD(); h.set_request_structured_replies(False); h.connect_uri(uri)
for off in range(1000, h.get_size() - 300000, 300000): h.pread(300000, off)
h.shutdown(); print("null")`);
    },
  },
  { what: 'block-commit of an intermediate layer', image: 'base.qcow2', job: (s) => runJob(s, 'block-commit', { device: 'top', 'top-node': 'mid', 'base-node': 'base' }) },
  { what: 'active block-commit', image: 'base.qcow2', job: (s) => runJob(s, 'block-commit', { device: 'top', 'base-node': 'base' }, true) },
  { what: 'blockdev-mirror sync=full', image: 'tgt.qcow2', job: (s) => runJob(s, 'blockdev-mirror', { device: 'top', target: 'tgt', sync: 'full' }, true) },
  { what: 'blockdev-mirror sync=top', image: 'tgt.qcow2', job: (s) => runJob(s, 'blockdev-mirror', { device: 'top', target: 'tgt', sync: 'top' }, true) },
  { what: 'blockdev-mirror sync=full onto a target with discard=unmap', image: 'tgt-unmap.qcow2', job: (s) => runJob(s, 'blockdev-mirror', { device: 'top', target: 'tgtu', sync: 'full' }, true) },
  {
    what: 'drive-mirror sync=full to a new image', image: 'new.qcow2',
    job: (s) => runJob(s, 'drive-mirror', { device: 'top', target: join(s.dir, 'new.qcow2'), format: 'qcow2', sync: 'full' }, true),
  },
  { what: 'blockdev-backup sync=top', image: 'tgt.qcow2', job: (s) => runJob(s, 'blockdev-backup', { device: 'top', target: 'tgt', sync: 'top' }) },
  {
    what: 'drive-backup sync=full to a new image', image: 'new.qcow2',
    job: (s) => runJob(s, 'drive-backup', { device: 'top', target: join(s.dir, 'new.qcow2'), format: 'qcow2', sync: 'full' }),
  },
  { what: 'blockdev-backup sync=full', image: 'tgt.qcow2', job: (s) => runJob(s, 'blockdev-backup', { device: 'top', target: 'tgt', sync: 'full' }) },
];

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

describe('zeroes in copy jobs, side by side with qsd', () => {
  for (const c of CASES) {
    it(`${c.what}: qemu-img map of ${c.image} and its contents as qsd's`, async () => {
      pair = await startPair(setup, (d) => [...chainArgs(d), ...(c.args?.(d) ?? [])]);
      for (const who of BOTH) await c.job(pair[who]);
      await pair.stopDaemons();
      const theirs = imageMap(pair.qsd, c.image);
      expect(imageMap(pair.blockd, c.image)).toEqual(theirs);
      expect(imageContents(pair.blockd.dir, c.image).equals(imageContents(pair.qsd.dir, c.image))).toBe(true);
    });
  }
});
