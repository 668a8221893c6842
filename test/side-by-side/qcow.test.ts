/**
 * qcow (version 1), read-only, side by side with qsd 7.2 (#20). Images
 * made by `qemu-img create` (with and without a backing file, whose format
 * is probed), `qemu-img convert` and `qemu-io write -c` (compressed clusters): the bytes
 * served over NBD equal `qemu-img convert -O raw` and qsd's;
 * `nbdinfo --map` and the node rows equal qsd's. Headers mutated at random
 * (seeded): blockdev-add refuses or opens as qsd, with its message.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';

const SIZE = 6 * 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function source(d: string): string {
  const raw = join(d, 'src.raw');
  writeFileSync(raw, Buffer.alloc(SIZE));
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 100k', '-c', 'write -P 0x22 2M 1M', '-c', 'write -P 0x33 5500k 4k', raw]);
  return raw;
}

const IMAGES: Record<string, (d: string) => void> = {
  'create, no backing': (d) => {
    run('qemu-img', ['create', '-q', '-f', 'qcow', join(d, 'd.qcow'), String(SIZE)]);
    run('qemu-io', ['-f', 'qcow', '-c', 'write -P 0x44 1M 8k', '-c', 'write -P 0x45 4M 70k', join(d, 'd.qcow')]);
  },
  'create, raw backing file (probed)': (d) => {
    run('qemu-img', ['convert', '-O', 'raw', source(d), join(d, 'base.raw')]);
    run('qemu-img', ['create', '-q', '-f', 'qcow', '-b', 'base.raw', '-F', 'raw', join(d, 'd.qcow'), String(SIZE)]);
    run('qemu-io', ['-f', 'qcow', '-c', 'write -P 0x44 1M 8k', '-c', 'write -P 0x45 2500k 70k', join(d, 'd.qcow')]);
  },
  'convert': (d) => run('qemu-img', ['convert', '-O', 'qcow', source(d), join(d, 'd.qcow')]),
  // qemu-img 7.2's convert -c to qcow fails; qemu-io writes compressed clusters (whole clusters of 4 KiB).
  'compressed clusters': (d) => {
    run('qemu-img', ['create', '-q', '-f', 'qcow', join(d, 'd.qcow'), String(SIZE)]);
    // One compressed cluster per write.
    const writes = [0, 4, 8, 12, 1024, 1028, 3000].map((k, i) => ['-c', `write -c -P 0x${(0x11 + i).toString(16)} ${k}k 4k`]).flat();
    run('qemu-io', ['-f', 'qcow', ...writes, '-c', 'write -P 0x33 1032k 4k', join(d, 'd.qcow')]);
  },
};

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

describe('qcow (v1), side by side with qsd', () => {
  for (const [name, make] of Object.entries(IMAGES)) {
    it(`${name}: bytes, map and node rows as qsd and qemu-img`, async () => {
      pair = await startPair(make, (d) => ['--blockdev', `driver=file,node-name=f0,filename=${join(d, 'd.qcow')},read-only=on`,
        '--blockdev', 'driver=qcow,node-name=d0,file=f0,read-only=on', '--export', 'type=nbd,id=e0,node-name=d0,name=disk,allocation-depth=on']);
      const expected = join(pair.qsd.dir, 'expected.raw');
      run('qemu-img', ['convert', '-U', '-f', 'qcow', '-O', 'raw', join(pair.qsd.dir, 'd.qcow'), expected]);
      const out: Record<string, unknown> = {};
      for (const who of BOTH) {
        const side = pair[who];
        const copy = join(side.dir, 'served.raw');
        run('nbdcopy', [side.uri('disk'), copy]);
        const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
        out[who] = {
          bytes: sha(readFileSync(copy)),
          map: JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')])),
          depth: JSON.parse(run('nbdinfo', ['--map=qemu:allocation-depth', '--json', side.uri('disk')])),
          rows: nodes.map((n) => {
            const image = { ...(n.image as Record<string, unknown>) };
            delete image['actual-size'];
            return [n.drv, n.ro, n.backing_file_depth, JSON.stringify(image).split(side.dir).join('<d>')];
          }),
        };
      }
      expect(out.blockd).toEqual(out.qsd);
      expect((out.blockd as { bytes: string }).bytes).toBe(sha(readFileSync(expected)));
    }, 120_000);
  }

  it('a corpus of mutated headers (seeded): blockdev-add refuses or opens as qsd, with its message', async () => {
    const N = 32;
    pair = await startPair((d) => {
      run('qemu-img', ['create', '-q', '-f', 'qcow', join(d, 'base.qcow'), String(SIZE)]);
      run('qemu-io', ['-f', 'qcow', '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x22 3M 64k', join(d, 'base.qcow')]);
      const base = readFileSync(join(d, 'base.qcow'));
      let seed = 5;
      const rnd = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31; };
      for (let i = 0; i < N; i++) {
        const b = Buffer.from(base);
        for (let k = 0; k < 1 + Math.floor(rnd() * 2); k++) {
          const at = 4 + Math.floor(rnd() * 44);
          b[at] = rnd() < 0.5 ? Math.floor(rnd() * 256) : b[at] ^ (1 << Math.floor(rnd() * 8));
        }
        writeFileSync(join(d, `m${i}.qcow`), b);
      }
    }, () => []);
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (let i = 0; i < N; i++) {
        const r = await side.qmp.execute('blockdev-add', { driver: 'qcow', 'node-name': `m${i}`, 'read-only': true,
          file: { driver: 'file', filename: join(side.dir, `m${i}.qcow`), 'read-only': true } })
          .then(() => 'ok', (e: Error) => e.message.split(side.dir).join('<d>'));
        if (r === 'ok') await side.qmp.execute('blockdev-del', { 'node-name': `m${i}` });
        out[who].push(r);
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(new Set(out.blockd).size).toBeGreaterThanOrEqual(4);
  }, 120_000);
});
