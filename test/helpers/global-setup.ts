/**
 * One temporary root per test run: $TMPDIR points into it for every worker
 * and every process a test starts (os.tmpdir(), mkdtemp, qemu-img, daemons),
 * so whatever a test makes in "/tmp" is in the run's root. The teardown
 * fails the run if anything is left there (tests remove what they make:
 * tempDir() in temp.ts does it for them), then removes it.
 */
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  // vitest calls a global setup once more for a project that inherits it (vitest.config.ts's
  // projects extend the root): the first call owns the run's root.
  if (process.env.BLOCKD_TEST_ROOT) return () => undefined;
  removeRootsOfDeadRuns();
  const run = `${process.pid}x${Date.now().toString(36)}`;
  const root = join(tmpdir(), `blockd-test-${run}`);
  mkdirSync(root);
  process.env.BLOCKD_TEST_RUN = run;
  process.env.BLOCKD_TEST_ROOT = root;
  process.env.TMPDIR = root;
  return () => {
    // tsx-<uid> is the compile cache of the blockd processes the tests start (tsx keeps it in $TMPDIR), not scratch.
    const left = readdirSync(root).filter((name) => !/^tsx-\d+$/.test(name));
    let stuck = false;
    try { rmSync(root, { recursive: true, force: true }); } catch { stuck = true; /* still mounted */ }
    if (left.length > 0) {
      throw new Error(`the tests left ${left.length} entr${left.length === 1 ? 'y' : 'ies'} in the temporary directory` +
        `${stuck ? ` (some still busy in ${root})` : ''}: ${left.join(', ')}. ` +
        'A test removes what it makes, also on failure: use tempDir() from test/helpers/temp.ts (see test/helpers/README.md).');
    }
  };
}

/** A run that was killed (timeout, SIGKILL) never ran its teardown: remove roots whose vitest process is gone. */
function removeRootsOfDeadRuns(): void {
  for (const name of readdirSync(tmpdir())) {
    const m = /^blockd-test-(\d+)x/.exec(name);
    if (!m) continue;
    try { process.kill(Number(m[1]), 0); continue; } catch { /* no such process: the run is over */ }
    try { rmSync(join(tmpdir(), name), { recursive: true, force: true }); } catch { /* still mounted: leave it */ }
  }
}
