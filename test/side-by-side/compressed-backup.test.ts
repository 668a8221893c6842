/**
 * Compressed backup (blockdev-backup compress=true into a qcow2 target),
 * side by side with qemu-storage-daemon 7.2: a disk of text-like data (with
 * zeroes and an incompressible cluster) is backed up by both daemons; both
 * targets pass qemu-img check, equal the source by qemu-img compare, show
 * compressed clusters in qemu-img map, and are within a few per cent of
 * each other's size (zlib builds differ: node's and the system's). The same
 * job events; the errors for a target that cannot take compressed writes,
 * and for a zstd target (blockd has no zstd compressor: blockdev-backup
 * fails with a clear error, where qsd compresses).
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
    expect(Math.abs(got.blockd!.size - got.qsd!.size) / got.qsd!.size).toBeLessThan(0.05);
  }, 120_000);

  it('a target without compressed writes is refused as qsd refuses it', async () => {
    const [q, b] = [await backup(pair.qsd, 'b1', 'rawt'), await backup(pair.blockd, 'b1', 'rawt')];
    expect(q.error).toMatch(/^GenericError: Compression is not supported for this drive/);
    expect(b).toEqual(q);
  });

  it('zstd: qsd compresses, blockd fails the job with a clear error', async () => {
    const q = await backup(pair.qsd, 'b2', 'zstd');
    expect(q.events).toContain('BLOCK_JOB_COMPLETED');
    const b = await backup(pair.blockd, 'b2', 'zstd');
    if (process.env.SHOW_SIZES) console.log(JSON.stringify({ q, b }));
    expect(b.error).toBe("GenericError: blockd cannot write compressed clusters of compression type 'zstd' (it has no zstd compressor; it only reads zstd clusters)");
  }, 60_000);
});
