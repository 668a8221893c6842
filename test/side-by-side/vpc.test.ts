/**
 * vpc (VHD) side by side with qsd 7.2 (#20). Images made by `qemu-img
 * create` and `qemu-img convert`, dynamic, fixed and force-size: the bytes
 * served over NBD equal `qemu-img convert -O raw` and qsd's, `nbdinfo --map`
 * and the node's query-named-block-nodes row equal qsd's. The same writes
 * through both daemons: `qemu-img compare` equal to a raw model (qemu-img
 * has no check for vpc), and the two image files byte for byte equal (the
 * footers' time stamps, checksums and UUIDs aside: each side made its own
 * image). blockdev-create: the same files as qsd's (those fields aside) and
 * errors. Footers and dynamic headers mutated at random (seeded, half with
 * the checksum fixed up): blockdev-add refuses or opens as qsd, with its
 * message.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, statSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';
import { vpcChecksum } from '../../src/blockdev/drivers/vpc/header.ts';

const SIZE = 6 * 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** The footer fields that differ between two images made alike: time stamp, checksum, UUID (at the start and the end). */
function masked(b: Buffer): Buffer {
  const out = Buffer.from(b);
  for (const at of [0, out.length - 512]) if (at >= 0 && out.toString('latin1', at, at + 8) === 'conectix') { out.fill(0, at + 24, at + 28); out.fill(0, at + 64, at + 84); }
  return out;
}

function source(d: string): string {
  const raw = join(d, 'src.raw');
  writeFileSync(raw, Buffer.alloc(SIZE));
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 100k', '-c', 'write -P 0x22 2M 1M', '-c', 'write -P 0x33 5500k 4k', raw]);
  return raw;
}

const W = (d: string) => run('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x44 1M 8k', join(d, 'd.vpc')]);
const IMAGES: Record<string, (d: string) => void> = {
  'create, dynamic': (d) => { run('qemu-img', ['create', '-q', '-f', 'vpc', join(d, 'd.vpc'), String(SIZE)]); W(d); },
  'create, fixed': (d) => { run('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', join(d, 'd.vpc'), String(SIZE)]); W(d); },
  'create, dynamic, force_size': (d) => { run('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'force_size=on', join(d, 'd.vpc'), String(SIZE)]); W(d); },
  'convert, dynamic': (d) => run('qemu-img', ['convert', '-O', 'vpc', source(d), join(d, 'd.vpc')]),
  'convert, fixed': (d) => run('qemu-img', ['convert', '-O', 'vpc', '-o', 'subformat=fixed', source(d), join(d, 'd.vpc')]),
};

const WRITES = `import random
rnd = random.Random(11)
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
m = open(model, "r+b")
for i in range(60):
    off = rnd.randrange(0, size - 300000)
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

const args = (d: string) => ['--blockdev', `driver=file,node-name=f0,filename=${join(d, 'd.vpc')}`, '--blockdev', 'driver=vpc,node-name=d0,file=f0',
  '--export', 'type=nbd,id=e0,node-name=d0,name=disk,writable=on'];

describe('vpc, side by side with qsd', () => {
  for (const [name, make] of Object.entries(IMAGES)) {
    it(`${name}: reads, map and node row as qsd and qemu-img; writes leave the same image`, async () => {
      pair = await startPair(make, args);
      const expected = join(pair.qsd.dir, 'expected.raw');
      run('qemu-img', ['convert', '-U', '-f', 'vpc', '-O', 'raw', join(pair.qsd.dir, 'd.vpc'), expected]);
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
        const before = { bytes: sha(readFileSync(copy)), map: JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')])),
          row: [row.drv, String(row.file).split(side.dir).join('<d>'), JSON.stringify(image).split(side.dir).join('<d>')] };
        copyFileSync(expected, join(side.dir, 'model.raw'));
        await side.py('disk', `model = ${JSON.stringify(join(side.dir, 'model.raw'))}\n${WRITES}`, 120_000);
        out[who] = { ...before, mapAfter: JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')])) };
      }
      expect(out.blockd).toEqual(out.qsd);
      expect((out.blockd as { bytes: string }).bytes).toBe(want);
      await pair.stopDaemons();
      for (const who of BOTH) run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', join(pair[who].dir, 'd.vpc'), join(pair[who].dir, 'model.raw')]);
      const [a, b] = BOTH.map((who) => masked(readFileSync(join(pair![who].dir, 'd.vpc'))));
      expect(b.equals(a)).toBe(true);
    }, 180_000);
  }

  it('blockdev-create (dynamic, fixed, force-size, sizes CHS cannot say, too large): the files and errors of qsd', async () => {
    pair = await startPair(() => undefined, () => []);
    const cases: Record<string, unknown>[] = [
      { size: 6301696 }, { size: 6301696, subformat: 'fixed' }, { size: SIZE, 'force-size': true }, { size: SIZE, subformat: 'fixed', 'force-size': true },
      { size: SIZE }, { size: 3 * 2 ** 40, 'force-size': true }, { size: 0 }, { size: 136365211648 },
    ];
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (const [i, c] of cases.entries()) {
        const path = join(side.dir, `new${i}.vpc`);
        const job = async (id: string, options: Record<string, unknown>) => {
          await side.qmp.execute('blockdev-create', { 'job-id': id, options });
          await waitFor(side.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && e.data.status === 'concluded');
          const [j] = (await side.qmp.execute('query-jobs', {}) as { id: string; error?: string }[]).filter((x) => x.id === id);
          await side.qmp.execute('job-dismiss', { id });
          return j.error ?? 'ok';
        };
        await job(`f${i}`, { driver: 'file', filename: path, size: 0 });
        await side.qmp.execute('blockdev-add', { driver: 'file', 'node-name': `n${i}`, filename: path });
        const result = await job(`v${i}`, { driver: 'vpc', file: `n${i}`, ...c });
        await side.qmp.execute('blockdev-del', { 'node-name': `n${i}` });
        const size = statSync(path).size;
        const bytes = size <= 64 << 20 ? masked(readFileSync(path)) : Buffer.alloc(0);
        out[who].push({ result, size, content: sha(bytes) });
      }
    }
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);

  it('a corpus of mutated footers and dynamic headers (seeded): blockdev-add refuses or opens as qsd, with its message', async () => {
    const N = 60;
    pair = await startPair((d) => {
      run('qemu-img', ['create', '-q', '-f', 'vpc', join(d, 'base.vpc'), String(SIZE)]);
      run('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x22 3M 64k', join(d, 'base.vpc')]);
      const base = readFileSync(join(d, 'base.vpc'));
      let seed = 31;
      const rnd = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31; };
      for (let i = 0; i < N; i++) {
        const b = Buffer.from(base);
        for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) {
          // Footer fields (8..68), the dynamic header's offsets, table size and block size (512+8..512+40), the BAT.
          const r = rnd();
          const at = r < 0.45 ? 8 + Math.floor(rnd() * 60) : r < 0.9 ? 520 + Math.floor(rnd() * 32) : 1536 + Math.floor(rnd() * 16);
          b[at] = rnd() < 0.5 ? Math.floor(rnd() * 256) : b[at] ^ (1 << Math.floor(rnd() * 8));
        }
        if (i % 2 === 0) { b.writeUInt32BE(0, 64); b.writeUInt32BE(vpcChecksum(b.subarray(0, 512)), 64); }
        writeFileSync(join(d, `m${i}.vpc`), b);
      }
    }, () => []);
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (let i = 0; i < N; i++) {
        const r = await side.qmp.execute('blockdev-add', { driver: 'vpc', 'node-name': `m${i}`, 'read-only': true,
          file: { driver: 'file', filename: join(side.dir, `m${i}.vpc`) } }).then(() => 'ok', (e: Error) => e.message.split(side.dir).join('<d>'));
        if (r === 'ok') await side.qmp.execute('blockdev-del', { 'node-name': `m${i}` });
        out[who].push(r);
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(new Set(out.blockd).size).toBeGreaterThanOrEqual(4);
  }, 120_000);
});
