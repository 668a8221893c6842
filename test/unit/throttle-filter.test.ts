/**
 * The throttle filter in the block layer (in-process, real clock, small
 * limits): writes, write-zeroes and discards count as writes, flushes are
 * not throttled, a drained section lets queued requests through at once,
 * a reopen moves the node to another group, object-del waits for the group
 * to be empty, and qom-set of limits re-times a waiting request.
 */
import { describe, it, expect } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';
import { ObjectRegistry } from '../../src/objects/registry.ts';
import type { ThrottleGroup } from '../../src/util/throttle/group.ts';

async function setup(limits: Record<string, number>, second?: Record<string, number>) {
  const objects = new ObjectRegistry();
  objects.add({ 'qom-type': 'throttle-group', id: 'tg0', limits });
  if (second) objects.add({ 'qom-type': 'throttle-group', id: 'tg1', limits: second });
  const graph = new BlockGraph({ objects });
  registerDrivers(graph);
  await graph.add({ driver: 'null-co', 'node-name': 'n0', size: 1048576 });
  const t0 = await graph.add({ driver: 'throttle', 'node-name': 't0', 'throttle-group': 'tg0', file: 'n0' });
  const group = (id: string) => objects.lookup<ThrottleGroup>(id, 'throttle-group')!;
  return { objects, graph, t0, group };
}

const since = (t: number) => performance.now() - t;

describe('throttle filter', () => {
  it('counts writes, write-zeroes and discards as writes; reads do not wait for them; flush is not throttled', async () => {
    const { t0, group } = await setup({ 'iops-write': 5 });
    const buf = Buffer.alloc(512);
    await t0.write(0, buf, 0); // level 1 over a 0.5 bucket: the next write waits 100 ms
    const t = performance.now();
    await t0.read(0, buf);
    await t0.flush();
    expect(since(t)).toBeLessThan(50);
    const w = t0.writeZeroes(0, 512, 0);
    const d = t0.discard(0, 512);
    await new Promise((r) => setTimeout(r, 10));
    expect(group('tg0').members[0]!.queued('write')).toBe(2);
    await Promise.all([w, d]);
    expect(since(t)).toBeGreaterThan(250); // 100 ms, then 200 ms more for the third write at 5 IOPS
  });

  it('a drained section lets the queued requests through at once', async () => {
    const { t0, group } = await setup({ 'iops-read': 1 });
    const buf = Buffer.alloc(512);
    const t = performance.now();
    const reads = Array.from({ length: 6 }, (_, i) => t0.read(i * 512, Buffer.alloc(512)));
    await new Promise((r) => setTimeout(r, 20));
    expect(group('tg0').members[0]!.queued('read')).toBe(5);
    await t0.drained(() => undefined);
    await Promise.all(reads);
    expect(since(t)).toBeLessThan(500);
    // After the drain the limits hold again (the six reads filled the bucket), until the next drain.
    const again = t0.read(0, buf);
    await new Promise((r) => setTimeout(r, 20));
    expect(group('tg0').members[0]!.queued('read')).toBe(1);
    await t0.drained(() => undefined);
    await again;
    expect(since(t)).toBeLessThan(500);
  });

  it('blockdev-reopen moves the node to another group; object-del is refused while a node is in the group', async () => {
    const { objects, t0, group } = await setup({ 'iops-total': 1000 }, { 'iops-total': 2000 });
    expect(() => objects.del('tg0')).toThrow("object 'tg0' is in use, can not be deleted");
    const tx = await t0.ops.prepareReopen!({ driver: 'throttle', 'node-name': 't0', 'throttle-group': 'tg1', file: 'n0' }, false);
    await t0.drained(() => tx.commit());
    expect(group('tg0').members).toHaveLength(0);
    expect(group('tg1').members).toHaveLength(1);
    objects.del('tg0');
    await expect(t0.ops.prepareReopen!({ driver: 'throttle', 'node-name': 't0', 'throttle-group': 'tg0', file: 'n0' }, false))
      .rejects.toThrow("Throttle group 'tg0' does not exist");
  });

  it('qom-set of limits re-times a waiting request under the new limits', async () => {
    const { objects, t0 } = await setup({ 'iops-read': 1 });
    await t0.read(0, Buffer.alloc(512));
    const t = performance.now();
    const waiting = t0.read(0, Buffer.alloc(512)); // 900 ms at 1 IOPS
    await new Promise((r) => setTimeout(r, 20));
    objects.setProperty({ id: 'tg0' }, 'limits', { 'iops-read': 1000 });
    await waiting;
    expect(since(t)).toBeLessThan(300);
  });
});
