/**
 * One model-test case, as npm test and the long runner check it: the scenario
 * runs on blockd in a scratch directory (removed afterwards); if a qcow2 file
 * ends with leaked clusters, the same scenario runs on qemu-storage-daemon 7.2
 * and blockd may leak no more than it does, file by file.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Scenario } from './commands.ts';
import { runScenario, type RunResult } from './run.ts';

export interface ModelStats { sequences: number; steps: number; skipped: number; jobs: number; qsdReruns: number }

export const newStats = (): ModelStats => ({ sequences: 0, steps: 0, skipped: 0, jobs: 0, qsdReruns: 0 });

async function inScratch<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'blockd-model-'));
  try {
    return await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function checkScenario(s: Scenario, stats?: ModelStats): Promise<RunResult> {
  const r = await inScratch((dir) => runScenario(s, { which: 'blockd', dir }));
  if (stats) { stats.sequences++; stats.steps += r.steps; stats.skipped += r.skipped; stats.jobs += r.jobs; }
  if (Object.values(r.leaks).some((n) => n > 0)) {
    if (stats) stats.qsdReruns++;
    const q = await inScratch((dir) => runScenario(s, { which: 'qsd', dir }));
    for (const [file, n] of Object.entries(r.leaks)) {
      if (n > (q.leaks[file] ?? 0)) throw new Error(`blockd leaks ${n} cluster(s) in ${file}, qemu-storage-daemon ${q.leaks[file] ?? 0} on the same sequence`);
    }
  }
  return r;
}
