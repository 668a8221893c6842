import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runScenario } from './test/model/run.ts';
const s = JSON.parse(readFileSync(process.argv[2]!, 'utf8')).input;
for (const which of (process.argv[3] ?? 'qsd,blockd').split(',') as ('qsd' | 'blockd')[]) {
  const dir = mkdtempSync(join(tmpdir(), 'model-'));
  try { console.log(which, JSON.stringify(await runScenario(s, { which, dir, log: console.log }))); }
  catch (e) { console.log(which, 'FAIL', (e as Error).message, (e as Error).cause); }
  finally { rmSync(dir, { recursive: true, force: true }); }
}
