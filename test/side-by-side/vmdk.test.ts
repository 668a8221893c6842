/**
 * vmdk side by side with qsd 7.2 (#20). Images in every subformat made by
 * `qemu-img create` and `qemu-img convert`, and a hand-written descriptor
 * with several flat and sparse extents: the bytes served over NBD equal
 * `qemu-img convert -O raw` and qsd's, `nbdinfo --map` and the
 * query-named-block-nodes rows equal qsd's. The same seeded writes through
 * both daemons (streamOptimized: whole new grains in order, and the
 * refused rewrite): `qemu-img check` clean, `qemu-img compare` equal to a
 * raw model, and the files equal to qsd's but for the random CIDs. A
 * backing chain through parentFileNameHint (reads, copy-on-write). blockdev-create in
 * every subformat and a seeded corpus of mutated headers and descriptors.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, copyFileSync, readdirSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';

const SIZE = 6 * 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function source(d: string): string {
  const raw = join(d, 'src.raw');
  writeFileSync(raw, Buffer.alloc(SIZE));
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 100k', '-c', 'write -P 0x22 2M 1M', '-c', 'write -P 0x33 5500k 4k', raw]);
  return raw;
}

const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'];

const create = (sub: string, extra: string[] = []) => (d: string) => {
  run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', `subformat=${sub}`, ...extra, join(d, 'd.vmdk'), String(SIZE)]);
  if (sub !== 'streamOptimized') run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x44 1M 8k', '-c', 'write -z 3M 128k', join(d, 'd.vmdk')]);
};
const convert = (sub: string) => (d: string) => run('qemu-img', ['convert', '-O', 'vmdk', '-o', `subformat=${sub}`, source(d), join(d, 'd.vmdk')]);

/** Three extents: flat (1.5 MiB of a file, from its sector 8), sparse (2 MiB), flat again (2.5 MiB). */
function multiExtent(d: string): void {
  const a = Buffer.alloc(8 * 512 + 1536 * 1024, 0x5a);
  writeFileSync(join(d, 'a.raw'), a);
  run('qemu-img', ['create', '-q', '-f', 'vmdk', join(d, 's.vmdk'), '2M']);
  run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x66 64k 200k', join(d, 's.vmdk')]);
  const b = Buffer.alloc(2560 * 1024);
  b.fill(0x77, 100_000, 900_000);
  writeFileSync(join(d, 'b.raw'), b);
  writeFileSync(join(d, 'd.vmdk'), '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="twoGbMaxExtentFlat"\n\n' +
    '# Extent description\nRW 3072 FLAT "a.raw" 8\nRW 4096 SPARSE "s.vmdk"\nRDONLY 1 FLAT "ignored.raw" 0\nRW 5120 FLAT "b.raw" 0\n\nddb.adapterType = "ide"\n');
}

const IMAGES: Record<string, { make: (d: string) => void; stream?: boolean }> = {};
for (const sub of SUBFORMATS) {
  IMAGES[`create ${sub}`] = { make: create(sub), stream: sub === 'streamOptimized' };
  IMAGES[`convert ${sub}`] = { make: convert(sub), stream: sub === 'streamOptimized' };
}
IMAGES['create monolithicSparse, zeroed-grain'] = { make: create('monolithicSparse', ['-o', 'zeroed_grain=on']) };
IMAGES['multi-extent descriptor'] = { make: multiExtent };
IMAGES['backing chain (parentFileNameHint)'] = {
  make: (d) => {
    run('qemu-img', ['convert', '-O', 'vmdk', source(d), join(d, 'base.vmdk')]);
    run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', join(d, 'd.vmdk'), String(SIZE)]);
    run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x55 2100k 70k', join(d, 'd.vmdk')]);
  },
};

// Writes inside and across grains, into allocated and unallocated ones, zeroes (some whole grains); the same into a model.
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
    elif i % 7 == 5:
        off = off & ~0xffff; n = 65536 * rnd.randrange(1, 4)
        h.zero(n, off); data = bytes(n)
    else:
        data = bytes([rnd.randrange(1, 256)]) * n; h.pwrite(data, off)
    m.seek(off); m.write(data)
h.flush()
print(json.dumps(0))
`;

// streamOptimized: QEMU takes only whole new grains; a rewrite and a partial grain fail (the model keeps what succeeded).
const STREAM_WRITES = `h = nbd.NBD()
h.connect_uri(uri)
m = open(model, "r+b")
out = []
for (off, n, b) in [(4 << 20, 65536, 1), (4259840, 131072, 2), (0, 65536, 3), (4 << 20, 65536, 4), (5 << 20, 4096, 5), (5 << 20, 65536, 0)]:
    data = bytes([b]) * n
    try:
        h.pwrite(data, off); m.seek(off); m.write(data); out.append("ok")
    except nbd.Error as e:
        out.append(e.errno)
h.flush()
print(json.dumps(out))
`;

/** Both sides get the same image (the same CID): made once beside them, then copied keeping its holes. */
function once(make: (d: string) => void): (d: string) => void {
  let orig: string | undefined;
  return (d) => {
    if (orig === undefined) {
      orig = join(d, '..', 'orig');
      mkdirSync(orig);
      make(orig);
    }
    for (const f of readdirSync(orig)) run('cp', ['--sparse=always', join(orig, f), join(d, f)]);
  };
}

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

function args(d: string): string[] {
  return ['--blockdev', `driver=file,node-name=f0,filename=${join(d, 'd.vmdk')}`, '--blockdev', 'driver=vmdk,node-name=d0,file=f0',
    '--export', 'type=nbd,id=e0,node-name=d0,name=disk,writable=on'];
}

/** Every node's row (node-names of implicit nodes are generated, so only their order counts), paths relative. */
async function rows(side: Side): Promise<unknown[]> {
  const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
  return nodes.map((row) => {
    const image = { ...(row.image as Record<string, unknown>) };
    delete image['actual-size'];
    const name = String(row['node-name']);
    return JSON.stringify([name.startsWith('#') ? '#' : name, row.drv, row.file, image]).split(side.dir).join('<d>');
  });
}

/**
 * The image's files, the random CID masked: QEMU rewrites the descriptor as a C string, so after the CID's
 * NUL come stale bytes whose position depends on the new CID's width; those count by length only.
 */
function files(dir: string, only?: (f: string) => boolean): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.vmdk') || x.endsWith('.raw')).sort()) {
    if (['served.raw', 'expected.raw', 'model.raw', 'src.raw'].includes(f) || (only && !only(f))) continue;
    const b = readFileSync(join(dir, f));
    const sparse = b.length >= 4 && b.readUInt32BE(0) === 0x4b444d56;
    if (!sparse && !b.toString('latin1', 0, 6).startsWith('# Disk')) { out[f] = sha(b); continue; }
    const text = sparse ? b.subarray(512, 512 + 10240) : b;
    const nul = text.indexOf(0);
    const raw = text.toString('latin1', 0, nul < 0 ? text.length : nul);
    const desc = raw.replace(/\nCID=[0-9a-f]+\n/, '\nCID=x\n').replace(/\nparentCID=(?!ffffffff\n)[0-9a-f]+\n/, '\nparentCID=x\n');
    // A descriptor file that is only its text is as long as its (random-width) CIDs make it.
    const length = !sparse && nul < 0 ? `text+${b.length - raw.length}` : b.length;
    const rest = sparse ? Buffer.concat([b.subarray(0, 512), b.subarray(512 + 10240)]) : Buffer.alloc(0);
    out[f] = `${length} ${sha(Buffer.from(desc, 'latin1'))} ${sha(rest)}`;
  }
  return out;
}

describe('vmdk, side by side with qsd', () => {
  for (const [name, { make, stream }] of Object.entries(IMAGES)) {
    it(`${name}: reads, map and node rows as qsd and qemu-img; writes leave the same checked image`, async () => {
      pair = await startPair(once(make), args);
      const expected = join(pair.qsd.dir, 'expected.raw');
      run('qemu-img', ['convert', '-U', '-O', 'raw', join(pair.qsd.dir, 'd.vmdk'), expected]);
      const want = sha(readFileSync(expected));
      const out: Record<string, Record<string, unknown>> = {};
      for (const who of BOTH) {
        const side = pair[who];
        const copy = join(side.dir, 'served.raw');
        run('nbdcopy', [side.uri('disk'), copy]);
        out[who] = {
          bytes: sha(readFileSync(copy)),
          map: JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')])),
          rows: await rows(side),
        };
        copyFileSync(expected, join(side.dir, 'model.raw'));
        out[who].writes = await side.py('disk', `model = ${JSON.stringify(join(side.dir, 'model.raw'))}\n${stream ? STREAM_WRITES : WRITES}`, 120_000);
        out[who].mapAfter = JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')]));
        out[who].rowsAfter = await rows(side);
      }
      expect(out.blockd).toEqual(out.qsd);
      expect(out.blockd.bytes).toBe(want);
      await pair.stopDaemons();
      for (const who of BOTH) {
        const img = join(pair[who].dir, 'd.vmdk');
        const check = run('qemu-img', ['check', img]);
        expect(check).toContain('No errors were found');
        run('qemu-img', ['compare', '-f', 'vmdk', '-F', 'raw', img, join(pair[who].dir, 'model.raw')]);
      }
      expect(files(pair.blockd.dir)).toEqual(files(pair.qsd.dir));
    }, 180_000);
  }

  it('blockdev-create in every subformat, with extents, options and a backing file; refusals: the files and errors of qsd', async () => {
    pair = await startPair(() => undefined, () => []);
    const cases: { opts: Record<string, unknown>; extents?: number }[] = [
      { opts: { size: SIZE } },
      { opts: { size: SIZE, subformat: 'streamOptimized' } },
      { opts: { size: SIZE, 'zeroed-grain': true, 'adapter-type': 'lsilogic', hwversion: '6', toolsversion: '1' } },
      { opts: { size: SIZE, subformat: 'monolithicFlat' }, extents: 1 },
      { opts: { size: SIZE, subformat: 'twoGbMaxExtentSparse', 'adapter-type': 'buslogic' }, extents: 1 },
      { opts: { size: SIZE, subformat: 'twoGbMaxExtentFlat' }, extents: 1 },
      { opts: { size: SIZE, 'backing-file': 'new0.vmdk' } },
      { opts: { size: 1000 } },
      { opts: { size: SIZE, subformat: 'monolithicFlat' } },
      { opts: { size: SIZE, subformat: 'monolithicFlat' }, extents: 2 },
      { opts: { size: SIZE, subformat: 'monolithicFlat', 'zeroed-grain': true }, extents: 1 },
      { opts: { size: SIZE, subformat: 'twoGbMaxExtentFlat', 'backing-file': 'new0.vmdk' }, extents: 1 },
      { opts: { size: 0 } },
    ];
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      const job = async (id: string, options: Record<string, unknown>) => {
        await side.qmp.execute('blockdev-create', { 'job-id': id, options });
        await waitFor(side.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && e.data.status === 'concluded');
        const [j] = (await side.qmp.execute('query-jobs', {}) as { id: string; error?: string }[]).filter((x) => x.id === id);
        await side.qmp.execute('job-dismiss', { id });
        return j.error ?? 'ok';
      };
      const fileNode = async (id: string, path: string) => {
        await job(`f-${id}`, { driver: 'file', filename: path, size: 0 });
        await side.qmp.execute('blockdev-add', { driver: 'file', 'node-name': id, filename: path });
      };
      for (const [i, c] of cases.entries()) {
        const path = join(side.dir, `new${i}.vmdk`);
        await fileNode(`n${i}`, path);
        const extents: string[] = [];
        for (let k = 0; k < (c.extents ?? 0); k++) {
          await fileNode(`n${i}e${k}`, join(side.dir, `new${i}-e${k}.vmdk`));
          extents.push(`n${i}e${k}`);
        }
        const result = await job(`v${i}`, { driver: 'vmdk', file: `n${i}`, ...c.opts, ...(extents.length ? { extents } : {}) });
        for (const n of [`n${i}`, ...extents]) await side.qmp.execute('blockdev-del', { 'node-name': n });
        // A 0-byte sparse image has capacity 0: QEMU then reads it as a descriptor and cannot open it.
        if (result === 'ok' && c.opts.size !== 0) expect(run('qemu-img', ['check', path])).toContain('No errors were found');
        out[who].push({ result, files: files(side.dir, (f) => f.startsWith(`new${i}.`) || f.startsWith(`new${i}-`)) });
        // The parent CID (masked above, the parent's CID being random) is the backing file's CID.
        if (c.opts['backing-file'] && result === 'ok') {
          const cid = (f: string, key: string) => new RegExp(`\\n${key}=([0-9a-f]+)\\n`).exec(readFileSync(join(side.dir, f)).toString('latin1'))![1];
          expect(cid(`new${i}.vmdk`, 'parentCID')).toBe(cid('new0.vmdk', 'CID'));
        }
      }
    }
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);

  it('a corpus of mutated sparse headers and descriptors (seeded): blockdev-add refuses or opens as qsd, with its message', async () => {
    const N = 40;
    let seed = 20;
    const rnd = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31; };
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)];
    const names: string[] = [];
    pair = await startPair(once((d) => {
      run('qemu-img', ['create', '-q', '-f', 'vmdk', join(d, 'sparse.vmdk'), String(SIZE)]);
      run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x11 0 64k', join(d, 'sparse.vmdk')]);
      run('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', join(d, 'sparse.vmdk'), join(d, 'stream.vmdk')]);
      run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', join(d, 'flat.vmdk'), String(SIZE)]);
      for (const base of ['sparse', 'stream']) {
        const b = readFileSync(join(d, `${base}.vmdk`));
        for (let i = 0; i < N; i++) {
          const m = Buffer.from(b);
          // Header fields (4..79), the embedded descriptor's first lines, the grain directory.
          for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) {
            const at = rnd() < 0.7 ? 4 + Math.floor(rnd() * 75) : rnd() < 0.5 ? 512 + Math.floor(rnd() * 120) : 21 * 512 + Math.floor(rnd() * 8);
            m[at] = rnd() < 0.5 ? Math.floor(rnd() * 256) : m[at] ^ (1 << Math.floor(rnd() * 8));
          }
          writeFileSync(join(d, `m-${base}-${i}.vmdk`), m);
        }
      }
      const text = readFileSync(join(d, 'flat.vmdk'), 'latin1');
      for (let i = 0; i < N; i++) {
        const t = text.split('');
        // Printable changes: digits, quotes, spaces, newlines, letters of the keywords.
        for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) {
          const at = Math.floor(rnd() * t.length);
          const op = rnd();
          const c = pick(['0', '7', '"', ' ', '\n', '=', 'R', 'x', '-', 'F', '#', '9']);
          if (op < 0.5) t[at] = c; else if (op < 0.75) t.splice(at, 1); else t.splice(at, 0, c);
        }
        writeFileSync(join(d, `m-desc-${i}.vmdk`), t.join(''), 'latin1');
      }
    }), () => []);
    for (const base of ['sparse', 'stream', 'desc']) for (let i = 0; i < N; i++) names.push(`m-${base}-${i}`);
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (const [i, name] of names.entries()) {
        const r = await side.qmp.execute('blockdev-add', { driver: 'vmdk', 'node-name': `m${i}`, 'read-only': true,
          file: { driver: 'file', filename: join(side.dir, `${name}.vmdk`) } }).then(() => 'ok', (e: Error) => e.message.split(side.dir).join('<d>'));
        let size: unknown;
        // qsd aborts (vmdk_get_info's assertion) when a node opened without extents is queried: descriptors are not queried.
        if (r === 'ok' && !name.startsWith('m-desc')) {
          try {
            const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
            size = (nodes.find((n) => n['node-name'] === `m${i}`)!.image as Record<string, unknown>)['virtual-size'];
          } catch (e) {
            size = 'query failed';
          }
        }
        if (r === 'ok') await side.qmp.execute('blockdev-del', { 'node-name': `m${i}` });
        out[who].push([name, r, size]);
      }
    }
    // Disks past 2^53 bytes (JS numbers): qsd opens them (and may then fail to size them), blockd refuses them, saying so.
    const huge = (r: unknown[]) => r[1] === 'ok' && (r[2] === 'query failed' || (typeof r[2] === 'number' && r[2] > Number.MAX_SAFE_INTEGER));
    const want = out.qsd.map((r) => huge(r as unknown[]) ? [(r as unknown[])[0], 'GenericError: Image size too large for blockd', undefined] : r);
    expect(out.blockd).toEqual(want);
    expect(out.blockd.filter((r) => (r as unknown[])[1] !== 'ok').length).toBeGreaterThanOrEqual(10);
  }, 180_000);
});
