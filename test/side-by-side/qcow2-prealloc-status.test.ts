/**
 * Block status of preallocated qcow2 images, side by side with qsd: images
 * made with preallocation=metadata, falloc and full (and off), partly
 * written, exported by both daemons; `nbdinfo --map` (base:allocation) and
 * `qemu-img map` through each export equal qsd's. qsd asks the file below a
 * data cluster and reports preallocated, never-written clusters as zero;
 * blockd called every allocated cluster plain data.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';

const SIZE = 8 * 1024 * 1024;

function setup(prealloc: string) {
  return (d: string) => {
    const img = join(d, 'disk.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', '-o', `preallocation=${prealloc}`, img, String(SIZE)]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x22 1M 100k', '-c', 'write -z 3M 64k',
      '-c', 'write -P 0 5M 64k', '-c', 'flush', img]);
  };
}

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

describe('block status of preallocated qcow2, side by side with qsd', () => {
  for (const prealloc of ['metadata', 'falloc', 'full', 'off']) {
    it(`preallocation=${prealloc}: nbdinfo --map and qemu-img map over NBD as qsd's`, async () => {
      pair = await startPair(setup(prealloc), (d) => [
        '--blockdev', `driver=file,node-name=f0,filename=${join(d, 'disk.qcow2')}`,
        '--blockdev', 'driver=qcow2,node-name=d0,file=f0',
        '--export', 'type=nbd,id=e0,node-name=d0,name=disk',
      ]);
      const out: Record<string, unknown> = {};
      for (const who of BOTH) {
        const uri = pair[who].uri('disk');
        out[who] = {
          nbdinfo: JSON.parse(run('nbdinfo', ['--map', '--json', uri])),
          map: JSON.parse(run('qemu-img', ['map', '--output=json', '--image-opts', `driver=nbd,server.type=unix,server.path=${pair[who].sock},export=disk`]))
            .map((e: Record<string, unknown>) => ({ start: e.start, length: e.length, depth: e.depth, zero: e.zero, data: e.data })),
        };
      }
      expect(out.blockd).toEqual(out.qsd);
    });
  }
});
