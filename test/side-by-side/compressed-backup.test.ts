/**
 * Compressed backup (blockdev-backup compress=true into a qcow2 target),
 * side by side with qemu-storage-daemon 7.2: a disk of text-like data (with
 * zeroes and an incompressible cluster) is backed up by both daemons; both
 * targets pass qemu-img check, equal the source by qemu-img compare, show
 * compressed clusters in qemu-img map, and are within a few per cent of
 * each other's size (zlib builds differ: node's and the system's). The same
 * job events; the error for a target that cannot take compressed writes.
 * The same for a zstd image (compression_type=zstd: the native addon's
 * libzstd in blockd).
 *
 * And the compress filter: NBD writes through driver=compress over a qcow2
 * node store compressed clusters as on qsd (check, the same compressed
 * extents and share), a write shorter than a cluster is refused (EINVAL)
 * and one over an allocated cluster fails with EIO on both, and the open
 * error (a raw file under it) is qsd's.
 */
import { describe, it, expect, afterAll, beforeAll } from 'vitest';
import { writeFileSync, statSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';
import { run, tryRun } from '../helpers/tools.ts';
import { QmpCommandError } from '../../src/qmp/client/qmp-client.ts';

const SIZE = 4 * 1024 * 1024 + 3 * 65536;
let pair: Pair;

/** Text-like data: words from a small vocabulary, line by line; a 256 KiB hole; one random cluster. */
function disk(): Buffer {
  const words = ['block', 'device', 'storage', 'daemon', 'cluster', 'qcow2', 'mirror', 'backup', 'the', 'of', 'and', 'write'];
  const b = Buffer.alloc(SIZE);
  let seed = 7;
  let pos = 0;
  while (pos < SIZE) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    const w = words[seed % words.length] + (seed % 13 === 0 ? '\n' : ' ');
    pos += b.write(w, pos);
  }
  b.fill(0, 1 << 20, (1 << 20) + (256 << 10));
  randomBytes(65536).copy(b, 2 << 20);
  return b;
}

beforeAll(async () => {
  const data = disk();
  pair = await startPair((d) => {
    writeFileSync(join(d, 'src.img'), data);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(d, 'tgt.qcow2'), String(SIZE)]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', join(d, 'zstd.qcow2'), String(SIZE)]);
    writeFileSync(join(d, 'raw.img'), Buffer.alloc(SIZE));
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(d, 'cf.qcow2'), '4M']);
  }, (d) => [
    '--blockdev', `driver=raw,node-name=src,file.driver=file,file.filename=${join(d, 'src.img')}`,
    '--blockdev', `driver=qcow2,node-name=tgt,file.driver=file,file.filename=${join(d, 'tgt.qcow2')}`,
    '--blockdev', `driver=qcow2,node-name=zstd,file.driver=file,file.filename=${join(d, 'zstd.qcow2')}`,
    '--blockdev', `driver=raw,node-name=rawt,file.driver=file,file.filename=${join(d, 'raw.img')}`,
  ]);
}, 60_000);
afterAll(async () => { await pair?.stop(); });

async function backup(s: Side, id: string, target: string): Promise<{ events: unknown[]; error?: string }> {
  try {
    await s.qmp.execute('blockdev-backup', { 'job-id': id, device: 'src', target, sync: 'full', compress: true });
  } catch (e) {
    if (e instanceof QmpCommandError) return { events: [], error: `${e.errorClass}: ${e.desc}` };
    throw e;
  }
  await waitFor(s.events, (e) => e.data.id === id && e.data.status === 'null');
  const events = s.events.filter((e) => e.data.id === id || e.data.device === id)
    .map((e) => (e.event === 'JOB_STATUS_CHANGE' ? e.data.status : `${e.event}${e.data.error ? ` ${e.data.error}` : ''}`));
  return { events };
}

describe('compressed backup, side by side with qsd', () => {
  it('the targets check clean, equal the source, hold compressed clusters and have about the same size', async () => {
    const got: Record<string, { events: unknown[]; size: number; compressed: number; pct?: string }> = {};
    for (const w of BOTH) {
      const s = pair[w];
      const r = await backup(s, 'b0', 'tgt');
      expect(r.error).toBeUndefined();
      await s.qmp.execute('blockdev-del', { 'node-name': 'tgt' });
      const img = join(s.dir, 'tgt.qcow2');
      const check = tryRun('qemu-img', ['check', img]);
      expect(check.status, `${w}: ${check.stdout}${check.stderr}`).toBe(0);
      const pct = /([\d.]+)% compressed clusters/.exec(check.stdout)?.[1];
      expect(tryRun('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', join(s.dir, 'src.img'), img]).status).toBe(0);
      // qemu-img 7.2's map gives compressed data no host offset.
      const map = JSON.parse(run('qemu-img', ['map', '--output=json', img])) as { start: number; length: number; data: boolean; offset?: number }[];
      const compressed = map.filter((m) => m.data && m.offset === undefined).reduce((n, m) => n + m.length, 0);
      const info = JSON.parse(run('qemu-img', ['info', '--output=json', img])) as { 'actual-size': number };
      got[w] = { events: r.events, size: statSync(img).size, compressed, pct };
      expect(info['actual-size']).toBeGreaterThan(0);
    }
    if (process.env.SHOW_SIZES) console.log(JSON.stringify(got));
    expect(got.blockd!.events).toEqual(got.qsd!.events);
    // Everything but the random cluster is stored compressed (the zeroes too: the file has no hole), by both.
    expect(got.qsd!.compressed).toBe(SIZE - 65536);
    expect(got.blockd!.compressed).toBe(got.qsd!.compressed);
    // qemu-img check's "N% compressed clusters" of the allocated ones.
    expect(Number(got.qsd!.pct)).toBeGreaterThan(90);
    expect(got.blockd!.pct).toBe(got.qsd!.pct);
    expect(got.qsd!.size).toBeLessThan(SIZE / 2);
    // The one incompressible cluster is a normal allocation, cluster-aligned: where it lands among the
    // byte-packed compressed data (qsd packs in completion order of parallel writes) leaves up to one
    // cluster of gap, so the sizes may differ by a cluster besides the zlib builds' few per cent
    // (CI saw 6.3 % with a 5 % bound).
    expect(Math.abs(got.blockd!.size - got.qsd!.size)).toBeLessThan(65536 + 0.03 * got.qsd!.size);
  }, 120_000);

  it('a target without compressed writes is refused as qsd refuses it', async () => {
    const [q, b] = [await backup(pair.qsd, 'b1', 'rawt'), await backup(pair.blockd, 'b1', 'rawt')];
    expect(q.error).toMatch(/^GenericError: Compression is not supported for this drive/);
    expect(b).toEqual(q);
  });

  it('zstd (compression_type=zstd): the same checks, the same compressed share, about the same size', async () => {
    const got: Record<string, unknown> = {};
    for (const w of BOTH) {
      const s = pair[w];
      const r = await backup(s, 'b2', 'zstd');
      expect(r.events, w).toContain('BLOCK_JOB_COMPLETED');
      await s.qmp.execute('blockdev-del', { 'node-name': 'zstd' });
      const img = join(s.dir, 'zstd.qcow2');
      const check = tryRun('qemu-img', ['check', img]);
      expect(check.status, `${w}: ${check.stdout}${check.stderr}`).toBe(0);
      expect(tryRun('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', join(s.dir, 'src.img'), img]).status).toBe(0);
      got[w] = { events: r.events, pct: /([\d.]+)% compressed clusters/.exec(check.stdout)?.[1], size: statSync(img).size };
    }
    if (process.env.SHOW_SIZES) console.log(JSON.stringify(got));
    const q = got.qsd as { events: unknown[]; pct: string; size: number };
    const b = got.blockd as typeof q;
    expect(b.events).toEqual(q.events);
    expect(Number(q.pct)).toBeGreaterThan(90);
    expect(b.pct).toBe(q.pct);
    // As above: the incompressible cluster's place among the packed data can cost a cluster of gap.
    expect(Math.abs(b.size - q.size)).toBeLessThan(65536 + 0.03 * q.size);
  }, 60_000);
});

describe('the compress filter, side by side with qsd', () => {
  const SCRIPT = `
h = nbd.NBD()
h.connect_uri(uri)
data = bytearray()
words = [b"block ", b"device ", b"storage ", b"cluster\\n", b"qcow2 ", b"the "]
i = 7
while len(data) < (1 << 20):
    i = (i * 1103515245 + 12345) & 0x7fffffff
    data += words[i % len(words)]
data = bytes(data[:1 << 20])
out = []
def attempt(what, f):
    try:
        f(); out.append([what, "ok"])
    except nbd.Error as e:
        out.append([what, e.errno])
for off in range(0, 1 << 20, 65536):
    attempt("write", lambda: h.pwrite(data[off:off + 65536], off))
attempt("short write", lambda: h.pwrite(b"hello", (2 << 20) + 100))
attempt("overwrite", lambda: h.pwrite(b"x" * 65536, 0))
attempt("read back", lambda: h.pread(65536, 65536) == data[65536:131072] or 1 / 0)
h.flush()
print(json.dumps(out))
`;
  it('writes compressed clusters as qsd', async () => {
    const got: Record<string, unknown> = {};
    for (const w of BOTH) {
      const s = pair[w];
      await s.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'cq', file: { driver: 'file', filename: join(s.dir, 'cf.qcow2') } });
      await s.qmp.execute('blockdev-add', { driver: 'compress', 'node-name': 'cz', file: 'cq' });
      await s.qmp.execute('block-export-add', { type: 'nbd', id: 'ec', 'node-name': 'cz', name: 'ec', writable: true });
      const results = await s.py('ec', SCRIPT);
      await s.qmp.execute('block-export-del', { id: 'ec' });
      await waitFor(s.events, (e) => e.event === 'BLOCK_EXPORT_DELETED' && e.data.id === 'ec');
      await s.qmp.execute('blockdev-del', { 'node-name': 'cz' });
      await s.qmp.execute('blockdev-del', { 'node-name': 'cq' });
      const img = join(s.dir, 'cf.qcow2');
      const check = tryRun('qemu-img', ['check', img]);
      const pct = /([\d.]+)% compressed clusters/.exec(check.stdout)?.[1];
      const map = JSON.parse(run('qemu-img', ['map', '--output=json', img])) as { start: number; length: number; data: boolean; offset?: number }[];
      got[w] = { results, check: check.status, pct, compressed: map.filter((m) => m.data && m.offset === undefined).map((m) => [m.start, m.length]), size: statSync(img).size };
    }
    if (process.env.SHOW_SIZES) console.log(JSON.stringify(got));
    const q = got.qsd as { results: unknown[]; check: number; pct: string; compressed: number[][]; size: number };
    const b = got.blockd as typeof q;
    // A write shorter than the filter's 64 KiB cluster alignment is refused (EINVAL) on both.
    expect(q.results.slice(-3)).toEqual([['short write', 'EINVAL'], ['overwrite', 'EIO'], ['read back', 'ok']]);
    expect(q.check).toBe(0);
    expect(Number(q.pct)).toBe(100);
    expect(b.results).toEqual(q.results);
    expect(b.check).toBe(0);
    expect(b.pct).toBe(q.pct);
    expect(b.compressed).toEqual(q.compressed);
    expect(Math.abs(b.size - q.size) / q.size).toBeLessThan(0.05);
  }, 60_000);

  it('refuses a file that cannot take compressed writes as qsd', async () => {
    const r: Record<string, string> = {};
    for (const w of BOTH) {
      try {
        await pair[w].qmp.execute('blockdev-add', { driver: 'compress', 'node-name': 'cr', file: 'rawt' });
        r[w] = 'added';
      } catch (e) {
        r[w] = e instanceof QmpCommandError ? `${e.errorClass}: ${e.desc}` : String(e);
      }
    }
    expect(r.qsd).toBe('GenericError: Compression is not supported for underlying format: raw');
    expect(r.blockd).toBe(r.qsd);
  });
});

