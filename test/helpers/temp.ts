/**
 * Scratch directories for tests, removed automatically (see README.md here):
 *
 * - tempDir() called inside a test: removed when that test finishes, passed
 *   or failed (after its afterEach hooks, so daemons are stopped first).
 * - called anywhere else (file scope, beforeAll, describe): removed after the
 *   file's last afterAll (temp-cleanup.ts, a setupFiles entry).
 * - whatever a crashed or killed worker left behind is in this run's root
 *   ($TMPDIR points there, global-setup.ts), which the global teardown
 *   checks: anything left there fails the run (and is removed).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onTestFinished } from 'vitest';

const fileScoped: string[] = [];

/** A fresh directory under this run's temporary root; it is removed for you (see above). */
export function tempDir(prefix = 'blockd-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  try {
    onTestFinished(() => removeDir(dir));
  } catch {
    // Not inside a test: the file's clean-up takes it.
    fileScoped.push(dir);
  }
  return dir;
}

/** The file-scoped directories made so far, removed (temp-cleanup.ts calls it after the file's hooks). */
export function removeFileScopedDirs(): void {
  for (const d of fileScoped.splice(0)) removeDir(d);
}

function removeDir(dir: string): void {
  // A mount still busy (nbdfuse) stays; the run's teardown then reports it.
  try { rmSync(dir, { recursive: true, force: true }); } catch { /* reported at teardown */ }
}
