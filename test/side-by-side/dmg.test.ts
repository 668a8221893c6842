/**
 * dmg, read-only, side by side with qsd 7.2 (#20). Images from the seeded
 * generator (test/helpers/dmg.ts: blkx tables in an XML property list or
 * a resource fork, several partitions, zero, raw, ignore and zlib chunks,
 * comments): the bytes served over NBD equal the generator's disk,
 * `qemu-img convert -O raw` and qsd's; `nbdinfo --map` and the node rows
 * equal qsd's. bzip2 chunks (Debian's qsd has no dmg-bz2 module): the same
 * reads fail and succeed as in qsd. Read-write opens, writable exports, a
 * file too short or without a trailer: refused with qsd's messages. The
 * format of a backing file named x.dmg is probed as dmg.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';
import { makeDmg, type DmgOptions } from '../helpers/dmg.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const IMAGES: Record<string, DmgOptions> = {
  'XML property list': { seed: 1, layout: 'xml' },
  'resource fork, data fork after a prefix': { seed: 2, layout: 'rsrc', dataForkOffset: 1000 },
  'XML, 6 partitions of 12 chunks': { seed: 3, layout: 'xml', partitions: 6, chunks: 12 },
  'resource fork, zlib chunks only': { seed: 4, layout: 'rsrc', kinds: ['zlib'], partitions: 2, chunks: 20 },
};

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

const exportArgs = (d: string) => ['--blockdev', `driver=file,node-name=f0,filename=${join(d, 'd.dmg')},read-only=on`,
  '--blockdev', 'driver=dmg,node-name=d0,file=f0,read-only=on', '--export', 'type=nbd,id=e0,node-name=d0,name=disk,allocation-depth=on'];

/**
 * Reads the export in 64 KiB requests (and the last, shorter one), one
 * after another: a sha of each, or the error. Simple replies: with
 * structured ones qsd 7.2 drops the connection when a sparse read fails
 * (blockd sends the error chunk, a documented difference: src/nbd/README.md).
 */
const READS = `h = nbd.NBD()
h.set_request_structured_replies(False)
h.connect_uri(uri)
size = h.get_size()
out = []
for off in range(0, size, 65536):
    try:
        out.append(hashlib.sha256(h.pread(min(65536, size - off), off)).hexdigest()[:16])
    except nbd.Error as e:
        out.append("error " + str(e.errnum))
print(json.dumps(out))
`;

describe('dmg, side by side with qsd', () => {
  for (const [name, o] of Object.entries(IMAGES)) {
    it(`${name}: bytes, map and node rows as qsd, qemu-img and the generator`, async () => {
      const dmg = makeDmg(o);
      pair = await startPair((d) => writeFileSync(join(d, 'd.dmg'), dmg.image), exportArgs);
      const expected = join(pair.qsd.dir, 'expected.raw');
      run('qemu-img', ['convert', '-U', '-f', 'dmg', '-O', 'raw', join(pair.qsd.dir, 'd.dmg'), expected]);
      expect(sha(readFileSync(expected))).toBe(sha(dmg.expected));
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
      expect((out.blockd as { bytes: string }).bytes).toBe(sha(dmg.expected));
    }, 120_000);
  }

  it('bzip2 chunks: the reads that touch them fail, the others succeed, as in qsd', async () => {
    const dmg = makeDmg({ seed: 7, layout: 'xml', kinds: ['raw', 'zlib', 'zero', 'bzip2'], partitions: 3, chunks: 8 });
    expect(dmg.bzip2.length).toBeGreaterThan(0);
    pair = await startPair((d) => writeFileSync(join(d, 'd.dmg'), dmg.image), exportArgs);
    const out: Record<string, string[]> = {};
    for (const who of BOTH) out[who] = (await pair[who].py('disk', `import hashlib\n${READS}`)) as string[];
    expect(out.blockd).toEqual(out.qsd);
    // Exactly the requests overlapping a bzip2 chunk fail (EIO).
    const fails = out.blockd.map((_, i) => dmg.bzip2.some(([off, len]) => off < (i + 1) * 65536 && off + len > i * 65536));
    expect(out.blockd.map((r) => r.startsWith('error'))).toEqual(fails);
    expect(out.blockd.filter((r) => r === 'error 5').length).toBe(fails.filter(Boolean).length);
    expect(fails.filter((f) => !f).length).toBeGreaterThan(0);
  }, 120_000);

  it('read-write opens and writable exports are refused, auto-read-only opens read-only; short files and no trailer refused, as qsd', async () => {
    const good = makeDmg({ seed: 9, layout: 'xml' }).image;
    pair = await startPair((d) => {
      writeFileSync(join(d, 'd.dmg'), good);
      // Sizes count in whole sectors (QEMU's bdrv_getlength): only an empty file is under 512 bytes.
      writeFileSync(join(d, 'short.dmg'), Buffer.alloc(0));
      writeFileSync(join(d, 'tail.dmg'), good.subarray(good.length - 512));
      writeFileSync(join(d, 'nokoly.dmg'), good.subarray(0, good.length - 512));
      // The trailer's sector count past the end of the file: its low bytes read as zeroes.
      writeFileSync(join(d, 'cut.dmg'), good.subarray(0, good.length - 22));
    }, () => []);
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const file = (n: string, ro = true) => ({ driver: 'file', filename: join(side.dir, n), 'read-only': ro });
      const tries: [string, Record<string, unknown>][] = [
        ['rw', { driver: 'dmg', 'node-name': 'a', file: file('d.dmg', false) }],
        ['rw, file read-only', { driver: 'dmg', 'node-name': 'a', file: file('d.dmg') }],
        ['auto-read-only', { driver: 'dmg', 'node-name': 'a', 'auto-read-only': true, file: file('d.dmg', false) }],
        ['short', { driver: 'dmg', 'node-name': 'a', 'read-only': true, file: file('short.dmg') }],
        ['the trailer alone', { driver: 'dmg', 'node-name': 'a', 'read-only': true, file: file('tail.dmg') }],
        ['no koly', { driver: 'dmg', 'node-name': 'a', 'read-only': true, file: file('nokoly.dmg') }],
        ['cut koly', { driver: 'dmg', 'node-name': 'a', 'read-only': true, file: file('cut.dmg') }],
      ];
      out[who] = [];
      for (const [what, args] of tries) {
        const r = await side.qmp.execute('blockdev-add', args).then(() => 'ok', (e: Error) => e.message.replace(/^GenericError: /, '').split(side.dir).join('<d>'));
        let extra: unknown = null;
        if (r === 'ok') {
          const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
          extra = nodes.filter((n) => n['node-name'] === 'a').map((n) => [n.ro, (n.image as Record<string, unknown>)['virtual-size']]);
          extra = [extra, await side.qmp.execute('block-export-add', { type: 'nbd', id: 'w', 'node-name': 'a', writable: true })
            .then(() => 'ok', (e: Error) => e.message)];
          await side.qmp.execute('blockdev-del', { 'node-name': 'a' });
        }
        out[who].push([what, r, extra]);
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(out.blockd.map((r) => (r as string[])[1])).toEqual(['Image is read-only', 'Image is read-only', 'ok',
      'dmg file must be at least 512 bytes long', "Could not open '<d>/tail.dmg': Invalid argument", 'Could not locate UDIF trailer in dmg file', 'ok']);
  }, 120_000);

  it('a backing file named x.dmg is probed as dmg', async () => {
    const dmg = makeDmg({ seed: 11, layout: 'rsrc' });
    pair = await startPair((d) => {
      writeFileSync(join(d, 'base.dmg'), dmg.image);
      // qcow (v1) records no backing format: it is probed on open.
      run('qemu-img', ['create', '-q', '-f', 'qcow', '-b', 'base.dmg', '-F', 'dmg', join(d, 'top.qcow'), String(dmg.size)]);
      run('qemu-io', ['-f', 'qcow', '-c', 'write -P 0x61 64k 64k', join(d, 'top.qcow')]);
    }, (d) => ['--blockdev', `driver=qcow,node-name=t0,read-only=on,file.driver=file,file.filename=${join(d, 'top.qcow')}`,
      '--export', 'type=nbd,id=e0,node-name=t0,name=disk']);
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const copy = join(side.dir, 'served.raw');
      run('nbdcopy', [side.uri('disk'), copy]);
      const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
      out[who] = { bytes: sha(readFileSync(copy)), drv: nodes.map((n) => [n['node-name'] === 't0' ? 't0' : '', n.drv, n.ro]) };
    }
    expect(out.blockd).toEqual(out.qsd);
    expect((out.blockd as { drv: unknown[] }).drv).toContainEqual(['', 'dmg', true]);
  }, 120_000);
});
