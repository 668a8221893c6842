/**
 * parallels side by side with qsd 7.2 (#20). Images made by `qemu-img
 * create` (1 MiB and 64 KiB clusters), `qemu-img convert`, and one with
 * the old "WithoutFreeSpace" magic (BAT in sectors): the bytes served over
 * NBD equal `qemu-img convert -O raw` and qsd's, `nbdinfo --map` and the
 * node rows equal qsd's. The same seeded writes (data and zeroes) through
 * both daemons: the same map afterwards, `qemu-img check` clean, `qemu-img
 * compare` equal to a raw model, and the two image files byte for byte
 * equal (allocation order, BAT, inuse mark cleared, file cut back).
 * blockdev-create: the same file size and bytes as qsd's, and its
 * refusals. Dirty bitmaps of the format extension (made here, as
 * docs/interop/parallels.txt lays them out) read as qsd reads them. Headers
 * mutated at random (seeded): blockdev-add, read-only and read-write,
 * refuses or opens as qsd, with its message, and leaves the same file.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, statSync, copyFileSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';

const SIZE = 6 * 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function readHead(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(1 << 20);
    return b.subarray(0, readSync(fd, b, 0, b.length, 0));
  } finally {
    closeSync(fd);
  }
}

function source(d: string): string {
  const raw = join(d, 'src.raw');
  writeFileSync(raw, Buffer.alloc(SIZE));
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 100k', '-c', 'write -P 0x22 2M 1M', '-c', 'write -P 0x33 5500k 4k', raw]);
  return raw;
}

const qemuIo = (d: string, ...cmds: string[]) => run('qemu-io', ['-f', 'parallels', ...cmds.flatMap((c) => ['-c', c]), join(d, 'd.hdd')]);

/** The image with the old magic: BAT entries in sectors instead of clusters. */
function oldMagic(path: string): void {
  const b = readFileSync(path);
  const tracks = b.readUInt32LE(28);
  b.write('WithoutFreeSpace', 0, 'latin1');
  for (let i = 0; i < b.readUInt32LE(32); i++) b.writeUInt32LE(b.readUInt32LE(64 + 4 * i) * tracks, 64 + 4 * i);
  writeFileSync(path, b);
}

const IMAGES: Record<string, (d: string) => void> = {
  'create, 1 MiB clusters': (d) => {
    run('qemu-img', ['create', '-q', '-f', 'parallels', join(d, 'd.hdd'), String(SIZE)]);
    qemuIo(d, 'write -P 0x44 1M 8k', 'write -P 0x45 4M 70k');
  },
  'create, 64 KiB clusters': (d) => {
    run('qemu-img', ['create', '-q', '-f', 'parallels', '-o', 'cluster_size=64k', join(d, 'd.hdd'), String(SIZE)]);
    qemuIo(d, 'write -P 0x44 1M 8k', 'write -z 3M 256k', 'write -P 0x45 4M 70k');
  },
  'convert': (d) => run('qemu-img', ['convert', '-O', 'parallels', source(d), join(d, 'd.hdd')]),
  'old magic (WithoutFreeSpace)': (d) => {
    run('qemu-img', ['convert', '-O', 'parallels', '-o', 'cluster_size=64k', source(d), join(d, 'd.hdd')]);
    oldMagic(join(d, 'd.hdd'));
  },
};

const WRITES = `import random
rnd = random.Random(12)
h = nbd.NBD()
h.connect_uri(uri)
m = open(model, "r+b")
for i in range(60):
    off = rnd.randrange(0, ${SIZE / 512} - 600) * 512
    n = rnd.randrange(1, 600) * 512
    if i % 5 == 3:
        h.zero(n, off); data = bytes(n)
    else:
        data = bytes([rnd.randrange(1, 256)]) * n; h.pwrite(data, off)
    m.seek(off); m.write(data)
    if i % 20 == 7:
        h.flush()
h.flush()
print(json.dumps(0))
`;

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

function args(d: string): string[] {
  return ['--blockdev', `driver=file,node-name=f0,filename=${join(d, 'd.hdd')}`, '--blockdev', 'driver=parallels,node-name=d0,file=f0',
    '--export', 'type=nbd,id=e0,node-name=d0,name=disk,writable=on'];
}

async function rows(side: Side): Promise<unknown[]> {
  const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
  return nodes.map((n) => {
    const image = { ...(n.image as Record<string, unknown>) };
    delete image['actual-size'];
    return [String(n['node-name']).startsWith('#') ? '#' : n['node-name'], n.drv, n.ro, JSON.stringify(image).split(side.dir).join('<d>'),
      n['dirty-bitmaps'] ?? []];
  });
}

describe('parallels, side by side with qsd', () => {
  for (const [name, make] of Object.entries(IMAGES)) {
    it(`${name}: reads, map and node rows as qsd and qemu-img; writes leave the same checked image`, async () => {
      pair = await startPair(make, args);
      const expected = join(pair.qsd.dir, 'expected.raw');
      run('qemu-img', ['convert', '-U', '-f', 'parallels', '-O', 'raw', join(pair.qsd.dir, 'd.hdd'), expected]);
      const want = sha(readFileSync(expected));
      const out: Record<string, unknown> = {};
      for (const who of BOTH) {
        const side = pair[who];
        const copy = join(side.dir, 'served.raw');
        run('nbdcopy', [side.uri('disk'), copy]);
        out[who] = { bytes: sha(readFileSync(copy)), map: JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')])), rows: await rows(side) };
        copyFileSync(expected, join(side.dir, 'model.raw'));
        await side.py('disk', `model = ${JSON.stringify(join(side.dir, 'model.raw'))}\n${WRITES}`, 120_000);
        out[who] = { ...(out[who] as object), mapAfter: JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')])) };
      }
      expect(out.blockd).toEqual(out.qsd);
      expect((out.blockd as { bytes: string }).bytes).toBe(want);
      await pair.stopDaemons();
      for (const who of BOTH) {
        const img = join(pair[who].dir, 'd.hdd');
        expect(run('qemu-img', ['check', img])).toContain('No errors were found');
        run('qemu-img', ['compare', '-f', 'parallels', '-F', 'raw', img, join(pair[who].dir, 'model.raw')]);
      }
      const [a, b] = BOTH.map((who) => readFileSync(join(pair![who].dir, 'd.hdd')));
      expect(b.length).toBe(a.length);
      expect(b.equals(a)).toBe(true);
    }, 180_000);
  }

  it('dirty bitmaps of the format extension (read-only opens; ignored read-write), and its refusals, as qsd', async () => {
    const variants: Record<string, (ext: Buffer, f: Buffer) => void> = {
      good: () => undefined,
      'bad checksum': (ext) => { ext[200] ^= 1; },
      'unknown feature': (ext) => { ext.writeBigUInt64LE(0x1234n, 24); },
      'feature flags': (ext) => { ext.writeBigUInt64LE(1n, 32); },
      'bitmap size': (ext) => { ext.writeBigUInt64LE(12289n, 48); },
      'L1 size': (ext) => { ext.writeUInt32LE(2, 76); },
      'bad magic': (ext) => { ext[0] ^= 1; },
      'data past the file': (ext) => { ext.writeBigUInt64LE(1n << 40n, 96); },
    };
    pair = await startPair((d) => {
      run('qemu-img', ['create', '-q', '-f', 'parallels', '-o', 'cluster_size=512', join(d, 'base.hdd'), String(SIZE)]);
      run('qemu-io', ['-f', 'parallels', '-c', 'write -P 0x11 0 64k', join(d, 'base.hdd')]);
      const base = readFileSync(join(d, 'base.hdd'));
      const e = base.length / 512;
      for (const [name, change] of Object.entries(variants)) {
        // One 512-byte cluster of extension: header, a bitmap of 512-byte granules (three L1 entries:
        // all set, all clear, a data cluster), a bitmap of 4 KiB granules (one data cluster), end of features.
        const ext = Buffer.alloc(512);
        ext.writeBigUInt64LE(0xab234cef23dcea87n, 0);
        let pos = 24;
        const bitmap = (uuid: string, granSectors: number, l1: bigint[]) => {
          ext.writeBigUInt64LE(0x20385fae252cb34an, pos);
          ext.writeUInt32LE(32 + 8 * l1.length, pos + 16);
          pos += 24;
          ext.writeBigUInt64LE(BigInt(SIZE / 512), pos);
          Buffer.from(uuid, 'hex').copy(ext, pos + 8);
          ext.writeUInt32LE(granSectors, pos + 24);
          ext.writeUInt32LE(l1.length, pos + 28);
          l1.forEach((v, i) => ext.writeBigUInt64LE(v, pos + 32 + 8 * i));
          pos += Math.ceil((32 + 8 * l1.length) / 8) * 8;
        };
        bitmap('00112233445566778899aabbccddeeff', 1, [1n, 0n, BigInt(e + 1)]);
        bitmap('0123456789abcdef0123456789abcdef', 8, [BigInt(e + 2)]);
        const data1 = Buffer.alloc(512);
        data1[0] = 0x81; data1[17] = 0xff; data1[511] = 0x40;
        const data2 = Buffer.alloc(512);
        data2[3] = 0x0f; data2[100] = 0x20;
        change(ext, base);
        createHash('md5').update(ext.subarray(24)).digest().copy(ext, 8);
        if (name === 'bad checksum') ext[201] ^= 1;
        const f = Buffer.concat([base, ext, data1, data2]);
        f.writeBigUInt64LE(BigInt(e), 56);
        writeFileSync(join(d, `${name}.hdd`), f);
      }
    }, () => []);
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (const name of Object.keys(variants)) {
        for (const ro of [true, false]) {
          const node = `b${ro ? 'r' : 'w'}`;
          const res = await side.qmp.execute('blockdev-add', { driver: 'parallels', 'node-name': node, 'read-only': ro,
            file: { driver: 'file', filename: join(side.dir, `${name}.hdd`) } }).then(() => 'ok', (e: Error) => e.message);
          out[who].push(name, res);
          if (res === 'ok') {
            out[who].push((await rows(side)).filter((x) => (x as unknown[])[0] === node));
            await side.qmp.execute('blockdev-del', { 'node-name': node });
          }
        }
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(JSON.stringify(out.blockd)).toContain('00112233-4455-6677-8899-aabbccddeeff');
  }, 120_000);

  it('blockdev-create (defaults, cluster sizes, refused sizes): the files and errors of qsd', async () => {
    pair = await startPair(() => undefined, () => []);
    const cases: Record<string, unknown>[] = [
      { size: SIZE }, { size: SIZE, 'cluster-size': 65536 }, { size: 0 }, { size: 1 << 30, 'cluster-size': 512 },
      { size: SIZE, 'cluster-size': 1000 }, { size: SIZE + 100 }, { size: SIZE, 'cluster-size': 2 ** 31 },
      { size: 2 ** 41, 'cluster-size': 512 }, { size: 2 ** 41 - 512, 'cluster-size': 512 },
    ];
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (const [i, c] of cases.entries()) {
        const path = join(side.dir, `new${i}.hdd`);
        const job = async (id: string, options: Record<string, unknown>) => {
          await side.qmp.execute('blockdev-create', { 'job-id': id, options });
          await waitFor(side.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && e.data.status === 'concluded');
          const [j] = (await side.qmp.execute('query-jobs', {}) as { id: string; error?: string }[]).filter((x) => x.id === id);
          await side.qmp.execute('job-dismiss', { id });
          return j.error ?? 'ok';
        };
        await job(`f${i}`, { driver: 'file', filename: path, size: 0 });
        await side.qmp.execute('blockdev-add', { driver: 'file', 'node-name': `n${i}`, filename: path });
        const result = await job(`v${i}`, { driver: 'parallels', file: `n${i}`, ...c });
        await side.qmp.execute('blockdev-del', { 'node-name': `n${i}` });
        out[who].push({ result, size: statSync(path).size, head: sha(readHead(path)) });
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(out.blockd.filter((r) => (r as { result: string }).result === 'ok').length).toBe(5);
  }, 120_000);

  it('a corpus of mutated headers and BATs (seeded): blockdev-add, read-only and read-write, as qsd, same files after', async () => {
    const N = 64;
    pair = await startPair((d) => {
      run('qemu-img', ['create', '-q', '-f', 'parallels', '-o', 'cluster_size=64k', join(d, 'base.hdd'), String(SIZE)]);
      run('qemu-io', ['-f', 'parallels', '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x22 3M 64k', join(d, 'base.hdd')]);
      const base = readFileSync(join(d, 'base.hdd'));
      let seed = 21;
      const rnd = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31; };
      for (let i = 0; i < N; i++) {
        const b = Buffer.from(base);
        for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) {
          const at = rnd() < 0.75 ? Math.floor(rnd() * 64) : 64 + Math.floor(rnd() * 16);
          b[at] = rnd() < 0.5 ? Math.floor(rnd() * 256) : b[at] ^ (1 << Math.floor(rnd() * 8));
        }
        // qsd 7.2 aborts (assertion ext_off > 0) on an extension offset whose byte offset overflows 63 bits (negative or zero);
        // blockd reads zeroes there and refuses the image. Such inputs are left out of the comparison.
        const ext = b.readBigUInt64LE(56);
        if (ext !== 0n && BigInt.asIntN(64, ext << 9n) <= 0n) b.writeBigUInt64LE(b.readBigUInt64LE(56) & 0xffffffffffffn, 56);
        writeFileSync(join(d, `m${i}.hdd`), b);
      }
    }, () => []);
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (let i = 0; i < N; i++) {
        const r: unknown[] = [];
        for (const ro of [true, false]) {
          const name = `m${i}${ro ? 'r' : 'w'}`;
          const res = await side.qmp.execute('blockdev-add', { driver: 'parallels', 'node-name': name, 'read-only': ro,
            file: { driver: 'file', filename: join(side.dir, `m${i}.hdd`) } }).then(() => 'ok', (e: Error) => e.message);
          if (res === 'ok') {
            const [row] = (await rows(side)).filter((x) => (x as unknown[])[0] === name);
            r.push(row);
            await side.qmp.execute('blockdev-del', { 'node-name': name });
          }
          r.push(res);
        }
        // A read-write open cuts the file back to data_end, which a hostile header puts far away: size and head.
        r.push(statSync(join(side.dir, `m${i}.hdd`)).size, sha(readHead(join(side.dir, `m${i}.hdd`))));
        out[who].push(r);
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(out.blockd.filter((r) => (r as unknown[]).includes('ok')).length).toBeGreaterThanOrEqual(5);
    expect(out.blockd.filter((r) => !(r as unknown[]).includes('ok')).length).toBeGreaterThanOrEqual(5);
  }, 180_000);
});
