/**
 * Gives this test run an id for its temporary directories and removes them
 * all at the end (worker processes may be ended without running exit hooks).
 */
import { readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const run = `${process.pid}x${Date.now().toString(36)}`;
  process.env.BLOCKD_TEST_RUN = run;
  return () => {
    for (const name of readdirSync(tmpdir())) {
      if (!name.startsWith(`blockd-test-${run}-`)) continue;
      try { rmSync(join(tmpdir(), name), { recursive: true, force: true }); } catch { /* still mounted: leave it */ }
    }
  };
}
