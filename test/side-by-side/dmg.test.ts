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
import { makeDmg, rng, type DmgOptions } from '../helpers/dmg.ts';

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

/** Bytes of the koly trailer whose fields QEMU reads: magic, data fork offset/length, resource fork offset/length, XML offset/length, sector count (its low half). */
const KOLY_BYTES = [0, 1, 2, 3, ...Array.from({ length: 0x20 }, (_, i) => 0x18 + i), ...Array.from({ length: 0x10 }, (_, i) => 0xd8 + i), 0x1f0, 0x1f1, 0x1f2, 0x1f3];
/** Bytes of a mish block QEMU reads: magic, first sector, data offset, and (entry k) type, sector, count, offset, length. */
const MISH_BYTES = (k: number) => [0, 1, 2, 3, ...Array.from({ length: 8 }, (_, i) => 8 + i), ...Array.from({ length: 8 }, (_, i) => 0x18 + i),
  ...[0, 1, 2, 3, ...Array.from({ length: 32 }, (_, i) => 8 + i)].map((x) => 204 + 40 * k + x)];
const PLIST_CHARS = Buffer.from('<>/=A+ \0d9');

/** The seeded corpus: each image with one to three bytes changed in the trailer, the XML, the resource fork's header, the resource lengths or the mish blocks. */
function corpus(n: number): Buffer[] {
  const r = rng(20);
  const bases = [makeDmg({ seed: 21, layout: 'xml', partitions: 2, chunks: 6 }), makeDmg({ seed: 22, layout: 'rsrc', partitions: 2, chunks: 6 })];
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const base = bases[i % 2];
    const b = Buffer.from(base.image);
    for (let k = 0, m = 1 + Math.floor(r() * 3); k < m; k++) {
      const what = Math.floor(r() * 3);
      const pick = <T>(a: T[]): T => a[Math.floor(r() * a.length)];
      let at: number;
      if (what === 0) at = base.at.koly + pick(KOLY_BYTES);
      else if (base.at.mish.length === 0) {
        // The XML: a tag's or the base64's characters.
        at = base.at.xml[0] + Math.floor(r() * base.at.xml[1]);
        if (r() < 0.5) { b[at] = pick([...PLIST_CHARS]); continue; }
      } else if (what === 1) {
        // The resource fork's header, or a resource's length.
        const [mAt] = pick(base.at.mish);
        at = r() < 0.5 ? base.at.rsrc[0] + Math.floor(r() * 16) : mAt - 4 + Math.floor(r() * 4);
      } else {
        const [mAt, mLen] = pick(base.at.mish);
        at = mAt + pick(MISH_BYTES(Math.floor(r() * ((mLen - 204) / 40))));
      }
      b[at] = r() < 0.5 ? Math.floor(r() * 256) : b[at] ^ (1 << Math.floor(r() * 8));
    }
    out.push(b);
  }
  return out;
}

/**
 * Reads the first 2 MiB of each image as qsd serves it (one qsd per image,
 * so that a crash of QEMU's is seen as one) and as blockd's export m<i>
 * does: 64 KiB requests one after another, simple replies; a sha of each
 * or the error.
 */
const CORPUS_READS = `import subprocess, time, os, hashlib
def reads(h):
    size = h.get_size()
    out = []
    for off in range(0, min(size, 2 << 20), 65536):
        try:
            out.append(hashlib.sha256(h.pread(min(65536, size - off), off)).hexdigest()[:16])
        except nbd.Error as e:
            out.append("error " + str(e.errnum))
            if e.errnum == errno.ENOTCONN: break
    return out
def connect(u):
    for _ in range(500):
        h = nbd.NBD(); h.set_request_structured_replies(False)
        try:
            h.connect_uri(u); return h
        except nbd.Error:
            time.sleep(0.02)
    raise Exception("cannot connect to " + u)
res = {}
for i in todo:
    sock = os.path.join(qdir, "q%d.sock" % i)
    p = subprocess.Popen(["qemu-storage-daemon", "--blockdev", "driver=file,node-name=f,read-only=on,filename=" + os.path.join(qdir, "m%d.dmg" % i),
        "--blockdev", "driver=dmg,node-name=d,file=f,read-only=on", "--nbd-server", "addr.type=unix,addr.path=" + sock,
        "--export", "type=nbd,id=e,node-name=d,name=disk"], stderr=subprocess.DEVNULL)
    h = connect("nbd+unix:///disk?socket=" + sock)
    q = reads(h)
    try: h.shutdown()
    except nbd.Error: pass
    # A lost connection is qsd's crash: wait for its end; else stop it.
    if q[-1] != "error %d" % errno.ENOTCONN: p.terminate()
    try: rc = p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        # Slow to stop (a loaded machine): its reads are what is compared.
        p.kill(); rc = p.wait()
    if q[-1] == "error %d" % errno.ENOTCONN: q.append("qsd died of signal %d" % -rc)
    if os.path.exists(sock): os.unlink(sock)
    h = connect("nbd+unix:///m%d?socket=%s" % (i, bsock))
    res[i] = [q, reads(h)]
    h.shutdown()
print(json.dumps(res))
`;

describe('dmg, mutated images', () => {
  it('a seeded corpus (trailer, XML, resource fork, mish blocks): no crash or hang, open refused or accepted as qsd with its text, reads as QEMU', async () => {
    const N = 100;
    const images = corpus(N);
    pair = await startPair((d) => images.forEach((b, i) => writeFileSync(join(d, `m${i}.dmg`), b)), () => []);
    const out: Record<string, string[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (let i = 0; i < N; i++) {
        const r = await side.qmp.execute('blockdev-add', { driver: 'dmg', 'node-name': `m${i}`, 'read-only': true,
          file: { driver: 'file', filename: join(side.dir, `m${i}.dmg`), 'read-only': true } })
          .then(() => 'ok', (e: Error) => e.message.split(side.dir).join('<d>'));
        if (r === 'ok' && who === 'qsd') await side.qmp.execute('blockdev-del', { 'node-name': `m${i}` });
        if (r === 'ok' && who === 'blockd') await side.qmp.execute('block-export-add', { type: 'nbd', id: `m${i}`, 'node-name': `m${i}`, name: `m${i}` });
        out[who].push(r);
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(new Set(out.blockd).size).toBeGreaterThanOrEqual(4);
    const todo = out.blockd.flatMap((r, i) => (r === 'ok' ? [i] : []));
    expect(todo.length).toBeGreaterThan(N / 4);
    const reads = (await pair.blockd.py('m0', `todo = ${JSON.stringify(todo)}\nqdir = ${JSON.stringify(pair.qsd.dir)}\nbsock = ${JSON.stringify(pair.blockd.sock)}\n${CORPUS_READS}`, 200_000)) as Record<string, string[][]>;
    // Where QEMU crashes (an image whose tables hold no chunk: its search_chunk reads a NULL table, SIGSEGV),
    // blockd answers the same reads up to that one and that one with EIO.
    const crashes = Object.entries(reads).filter(([, [q]]) => q.at(-1)?.startsWith('qsd died'));
    const diffs = Object.entries(reads).filter(([i, [q, b]]) => {
      if (!crashes.some(([c]) => c === i)) return JSON.stringify(q) !== JSON.stringify(b);
      return JSON.stringify([...q.slice(0, -2), 'error 5']) !== JSON.stringify(b.slice(0, q.length - 1));
    });
    expect(diffs).toEqual([]);
    expect(crashes.length).toBeLessThan(todo.length / 4);
    // blockd is still there.
    expect(await pair.blockd.qmp.execute('query-block-exports')).toHaveLength(todo.length);
  }, 240_000);
});
