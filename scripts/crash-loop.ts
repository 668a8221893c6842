/**
 * `npm run crash-loop -- [--kills N] [--seed S]`: test/crash/loop.ts in a
 * scratch directory removed afterwards. Prints kills, images checked, writes
 * verified, corruptions; exit status 1 on any corruption or lost write.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crashLoop } from '../test/crash/loop.ts';

const arg = (name: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : undefined; };
const kills = Number(arg('kills') ?? 20);
const seed = Number(arg('seed') ?? 1);
const dir = mkdtempSync(join(tmpdir(), 'blockd-crash-'));
try {
  const t0 = Date.now();
  const r = await crashLoop({ dir, kills, seed, log: (s) => process.stderr.write(s + '\n') });
  console.log(`kills ${r.kills} (with a backup job running: ${r.jobsKilled}) in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  console.log(`images checked ${r.imagesChecked}`);
  console.log(`writes verified ${r.writesVerified} (acknowledged with FUA or before a flush, read back)`);
  console.log(`bitmap coverage ${r.bitmapWritesCovered} acknowledged writes in the persistent bitmap`);
  console.log(`corruptions ${r.corruptions}`);
  for (const f of r.failures.slice(0, 20)) console.log(`  ${f}`);
  process.exitCode = r.corruptions || r.failures.length ? 1 : 0;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
