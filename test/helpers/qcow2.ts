/** Shared by the in-process qcow2 tests: a graph with the real drivers, a qcow2 node over a file, a seeded RNG. */
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';
import type { BlockNode } from '../../src/blockdev/node.ts';

export async function newGraph(): Promise<BlockGraph> {
  const g = new BlockGraph();
  registerDrivers(g);
  return g;
}

export async function openQcow2(g: BlockGraph, filename: string, extra: Record<string, unknown> = {}): Promise<BlockNode> {
  return g.add({ driver: 'qcow2', 'node-name': 'q' + Math.random().toString(36).slice(2, 8), file: { driver: 'file', filename }, ...extra });
}

/** A small deterministic generator (an LCG): the same seed gives the same operation sequence. */
export function rng(seed: number): () => number {
  return () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x80000000;
  };
}
