/**
 * The write-ahead that keeps stored bitmaps valid while blockd runs, in
 * process: what a crash at any moment would leave on disk (the image file
 * copied while writes are in flight), and what it costs per write.
 */
import { describe, it, expect, afterEach, afterAll } from 'vitest';
import { join } from 'node:path';
import { copyFileSync, rmSync } from 'node:fs';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';
import type { BlockNode } from '../../src/blockdev/node.ts';
import { addBitmap, existingBitmaps } from '../../src/blockdev/bitmaps/registry.ts';
import { tempDir } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';

const dir = tempDir('blockd-bitmaps-wal-');
let graphs: BlockGraph[] = [];
afterEach(async () => { for (const g of graphs.splice(0)) await g.closeAll(); });
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function open(image: string, name = 'q'): Promise<BlockNode> {
  const g = new BlockGraph();
  registerDrivers(g);
  graphs.push(g);
  return g.add({ driver: 'qcow2', 'node-name': name, file: { driver: 'file', filename: image } });
}

/** Loads the image's bitmaps as a fresh open would (read-only), as dirty byte extents by name. */
async function storedExtents(image: string): Promise<Record<string, [number, number][]>> {
  const g = new BlockGraph();
  registerDrivers(g);
  const node = await g.add({ driver: 'qcow2', 'node-name': 'ro', 'read-only': true, file: { driver: 'file', filename: image, 'read-only': true } });
  const out: Record<string, [number, number][]> = {};
  for (const bm of existingBitmaps(node)) {
    expect(bm.inconsistent, bm.name).toBe(false);
    out[bm.name] = [...bm.extents()];
  }
  await g.closeAll();
  return out;
}

const covered = (ext: [number, number][], off: number, n: number) => ext.some(([a, b]) => a <= off && off + n <= b);

describe('bitmap write-ahead', () => {
  it('a copy of the image taken after any acknowledged write has a valid bitmap covering it', async () => {
    const image = join(dir, 'a.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '256M']);
    const node = await open(image);
    await addBitmap(node, 'p', { persistent: true, granularity: 65536 });
    await addBitmap(node, 'f', { persistent: true, granularity: 512 });
    let r = 3;
    const done: [number, number][] = [];
    for (let i = 0; i < 60; i++) {
      r = (r * 1103515245 + 12345) & 0x7fffffff;
      const off = r % (256 * 1048576 - 200000);
      const n = 1 + (r % 150000);
      // A few writes in flight together, then a "crash" copy.
      const at = [0, 1, 2].map((k) => (off + k * 7 * 1048576) % (256 * 1048576 - 200000));
      await Promise.all(at.map((o) => node.write(o, Buffer.alloc(n, i))));
      for (const o of at) done.push([o, n]);
      if (i % 10 === 9) {
        const copy = join(dir, `crash-${i}.qcow2`);
        copyFileSync(image, copy);
        const stored = await storedExtents(copy);
        for (const name of ['p', 'f']) for (const [o, l] of done) expect(covered(stored[name]!, o, l), `${name} ${o}+${l} after ${i}`).toBe(true);
        expect(run('qemu-img', ['info', '--output=json', '-U', copy])).not.toContain('in-use');
        rmSync(copy);
      }
    }
  }, 120_000);

  it('costs one small metadata write and flush per newly dirty region, nothing for already-dirty ones', async () => {
    // Counted, not timed: the file node's write and flush operations per data write.
    const cost: Record<string, { writes: number; flushes: number }> = {};
    const N = 64;
    for (const mode of ['none', 'persistent'] as const) {
      const image = join(dir, `cost-${mode}.qcow2`);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', image, '1G']);
      const node = await open(image, `c${mode}`);
      if (mode === 'persistent') await addBitmap(node, 'p', { persistent: true });
      const file = node.child('file')!;
      const buf = Buffer.alloc(4096, 1);
      const measure = async (label: string, body: () => Promise<void>) => {
        const w = file.stats.wrOps, f = file.stats.flushOps;
        await body();
        cost[`${mode} ${label}`] = { writes: (file.stats.wrOps - w) / N, flushes: (file.stats.flushOps - f) / N };
      };
      // Fresh granules: one 4k write into each of N different 64k granules.
      await measure('fresh', async () => { for (let i = 0; i < N; i++) await node.write(i * 2 * 1048576, buf); });
      // The same granules again: already dirty.
      await measure('dirty', async () => { for (let i = 0; i < N; i++) await node.write(i * 2 * 1048576 + 8192, buf); });
      // 32 writes in flight into fresh granules: their records share flushes (group commit).
      await measure('fresh qd32', async () => {
        for (let i = 0; i < N; i += 32) {
          await Promise.all(Array.from({ length: 32 }, (_, k) => node.write((i + k) * 2 * 1048576 + 512 * 1024, buf)));
        }
      });
    }
    // Without a bitmap a write is one file write and no flush.
    expect(cost['none fresh']).toEqual({ writes: 1, flushes: 0 });
    expect(cost['none dirty']).toEqual({ writes: 1, flushes: 0 });
    // A write into a fresh granule adds one small metadata write and one flush (before the data write).
    expect(cost['persistent fresh']!.writes).toBeGreaterThan(1.9);
    expect(cost['persistent fresh']!.writes).toBeLessThanOrEqual(2.1);
    expect(cost['persistent fresh']!.flushes).toBeGreaterThanOrEqual(1);
    expect(cost['persistent fresh']!.flushes).toBeLessThanOrEqual(1.1);
    // Writes into already-dirty granules cost exactly what they cost without a bitmap.
    expect(cost['persistent dirty']).toEqual({ writes: 1, flushes: 0 });
    // In flight together, fresh writes share their flushes.
    expect(cost['persistent fresh qd32']!.flushes).toBeLessThan(0.5);
  }, 120_000);
});
