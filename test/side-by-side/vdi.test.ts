/**
 * vdi side by side with qsd 7.2 (#20). Images made by `qemu-img create` and
 * `qemu-img convert`, dynamic and static: the bytes served over NBD equal
 * `qemu-img convert -O raw` and qsd's, `nbdinfo --map` and the node's
 * query-named-block-nodes row equal qsd's. The same writes through both
 * daemons: `qemu-img check` clean, `qemu-img compare` equal to a raw model,
 * and the two image files byte for byte equal (same block allocation
 * order). blockdev-create: the same file size and header as qsd's (UUIDs
 * aside). Headers mutated at random (seeded): blockdev-add fails or
 * succeeds as in qsd, with qsd's message.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, statSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';

const SIZE = 6 * 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function source(d: string): string {
  const raw = join(d, 'src.raw');
  writeFileSync(raw, Buffer.alloc(SIZE));
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 100k', '-c', 'write -P 0x22 2M 1M', '-c', 'write -P 0x33 5500k 4k', raw]);
  return raw;
}

const IMAGES: Record<string, (d: string) => void> = {
  'create, dynamic': (d) => { run('qemu-img', ['create', '-q', '-f', 'vdi', join(d, 'd.vdi'), String(SIZE)]); run('qemu-io', ['-f', 'vdi', '-c', 'write -P 0x44 1M 8k', join(d, 'd.vdi')]); },
  'create, static': (d) => { run('qemu-img', ['create', '-q', '-f', 'vdi', '-o', 'static=on', join(d, 'd.vdi'), String(SIZE)]); run('qemu-io', ['-f', 'vdi', '-c', 'write -P 0x44 1M 8k', join(d, 'd.vdi')]); },
  'convert, dynamic': (d) => run('qemu-img', ['convert', '-O', 'vdi', source(d), join(d, 'd.vdi')]),
  'convert, static': (d) => run('qemu-img', ['convert', '-O', 'vdi', '-o', 'static=on', source(d), join(d, 'd.vdi')]),
};

// Writes inside and across blocks, into allocated and unallocated ones, zeroes; the same into a model.
const WRITES = `import random
rnd = random.Random(11)
h = nbd.NBD()
h.connect_uri(uri)
m = open(model, "r+b")
for i in range(60):
    off = rnd.randrange(0, ${SIZE} - 300000)
    n = rnd.randrange(1, 300000)
    if i % 7 == 3:
        h.zero(n, off); data = bytes(n)
    else:
        data = bytes([rnd.randrange(1, 256)]) * n; h.pwrite(data, off)
    m.seek(off); m.write(data)
h.flush()
print(json.dumps(0))
`;

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

function args(d: string): string[] {
  return ['--blockdev', `driver=file,node-name=f0,filename=${join(d, 'd.vdi')}`, '--blockdev', 'driver=vdi,node-name=d0,file=f0',
    '--export', 'type=nbd,id=e0,node-name=d0,name=disk,writable=on'];
}

describe('vdi, side by side with qsd', () => {
  for (const [name, make] of Object.entries(IMAGES)) {
    it(`${name}: reads, map and node row as qsd and qemu-img; writes leave the same checked image`, async () => {
      pair = await startPair(make, args);
      const expected = join(pair.qsd.dir, 'expected.raw');
      run('qemu-img', ['convert', '-U', '-O', 'raw', join(pair.qsd.dir, 'd.vdi'), expected]);
      const want = sha(readFileSync(expected));
      const out: Record<string, unknown> = {};
      for (const who of BOTH) {
        const side = pair[who];
        const copy = join(side.dir, 'served.raw');
        run('nbdcopy', [side.uri('disk'), copy]);
        const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
        const row = nodes.find((n) => n['node-name'] === 'd0')!;
        const image = { ...(row.image as Record<string, unknown>) };
        delete image['actual-size'];
        out[who] = {
          bytes: sha(readFileSync(copy)),
          map: JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')])),
          row: [row.drv, String(row.file).split(side.dir).join('<d>'), JSON.stringify(image).split(side.dir).join('<d>')],
        };
        copyFileSync(expected, join(side.dir, 'model.raw'));
        await side.py('disk', `model = ${JSON.stringify(join(side.dir, 'model.raw'))}\n${WRITES}`, 120_000);
        out[who] = { ...(out[who] as object), mapAfter: JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')])) };
      }
      expect(out.blockd).toEqual(out.qsd);
      expect((out.blockd as { bytes: string }).bytes).toBe(want);
      await pair.stopDaemons();
      for (const who of BOTH) {
        const img = join(pair[who].dir, 'd.vdi');
        expect(run('qemu-img', ['check', img])).toContain('No errors were found');
        run('qemu-img', ['compare', '-f', 'vdi', '-F', 'raw', img, join(pair[who].dir, 'model.raw')]);
      }
      // Each side's image was made on its own: the random UUIDs differ.
      const [a, b] = BOTH.map((who) => readFileSync(join(pair![who].dir, 'd.vdi')).fill(0, 392, 424));
      expect(b.equals(a)).toBe(true);
    }, 180_000);
  }

  it('blockdev-create (dynamic, static, odd size, refused modes and sizes): the files and errors of qsd', async () => {
    pair = await startPair(() => undefined, () => []);
    const cases: Record<string, unknown>[] = [
      { size: SIZE }, { size: SIZE, preallocation: 'metadata' }, { size: 3 * 1024 * 1024 + 100 }, { size: 0 },
      { size: SIZE, preallocation: 'falloc' }, { size: 2 ** 50 },
    ];
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (const [i, c] of cases.entries()) {
        const path = join(side.dir, `new${i}.vdi`);
        const job = async (id: string, options: Record<string, unknown>) => {
          await side.qmp.execute('blockdev-create', { 'job-id': id, options });
          await waitFor(side.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && e.data.status === 'concluded');
          const [j] = (await side.qmp.execute('query-jobs', {}) as { id: string; error?: string }[]).filter((x) => x.id === id);
          await side.qmp.execute('job-dismiss', { id });
          return j.error ?? 'ok';
        };
        await job(`f${i}`, { driver: 'file', filename: path, size: 0 });
        await side.qmp.execute('blockdev-add', { driver: 'file', 'node-name': `n${i}`, filename: path });
        const result = await job(`v${i}`, { driver: 'vdi', file: `n${i}`, ...c });
        await side.qmp.execute('blockdev-del', { 'node-name': `n${i}` });
        const bytes = readFileSync(path);
        // The image and last-snapshot UUIDs are random.
        if (bytes.length >= 424) bytes.fill(0, 392, 424);
        out[who].push({ result, size: statSync(path).size, head: sha(bytes.subarray(0, 1 << 20)) });
        if (result === 'ok') run('qemu-img', ['check', path]);
      }
    }
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);

  it('a corpus of mutated headers (seeded): blockdev-add refuses or opens as qsd, with its message', async () => {
    const N = 48;
    pair = await startPair((d) => {
      run('qemu-img', ['create', '-q', '-f', 'vdi', join(d, 'base.vdi'), String(SIZE)]);
      run('qemu-io', ['-f', 'vdi', '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x22 3M 64k', join(d, 'base.vdi')]);
      const base = readFileSync(join(d, 'base.vdi'));
      let seed = 20;
      const rnd = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31; };
      for (let i = 0; i < N; i++) {
        const b = Buffer.from(base);
        // Header fields that matter (64..456) and the block map; a few bytes each.
        for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) {
          const at = rnd() < 0.8 ? 64 + Math.floor(rnd() * 392) : 512 + Math.floor(rnd() * 24);
          b[at] = rnd() < 0.5 ? Math.floor(rnd() * 256) : b[at] ^ (1 << Math.floor(rnd() * 8));
        }
        writeFileSync(join(d, `m${i}.vdi`), b);
      }
    }, () => []);
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (let i = 0; i < N; i++) {
        const r = await side.qmp.execute('blockdev-add', { driver: 'vdi', 'node-name': `m${i}`, 'read-only': true,
          file: { driver: 'file', filename: join(side.dir, `m${i}.vdi`) } }).then(() => 'ok', (e: Error) => e.message);
        if (r === 'ok') await side.qmp.execute('blockdev-del', { 'node-name': `m${i}` });
        out[who].push(r);
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(out.blockd.filter((r) => r !== 'ok').length).toBeGreaterThanOrEqual(5);
  }, 120_000);
});
