/**
 * `npm run load -- [--connections 1000] [--requests 20] [--flood 20] [--slow 100] [--qmp 100]`:
 * test/load/run.ts against a blockd daemon in a scratch directory (removed
 * afterwards); prints connections held, requests served, errors, RSS figures.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runLoad } from '../test/load/run.ts';

const arg = (name: string, d: number) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? Number(process.argv[i + 1]) : d; };
const dir = mkdtempSync(join(tmpdir(), 'blockd-load-'));
try {
  const f = await runLoad({
    dir, connections: arg('connections', 1000), requests: arg('requests', 20), floodClients: arg('flood', 20),
    slowClients: arg('slow', 100), qmpClients: arg('qmp', 100), log: (s) => process.stderr.write(s + '\n'),
  });
  for (const [k, v] of Object.entries(f)) console.log(`${k.padEnd(40)}${Number.isInteger(v) ? v : v.toFixed(1)}`);
  const bad = f['unix request errors']! + f['tcp request errors']! + f['unix connections failed']! + f['tcp connections failed']! + f['qmp errors']! + f['qmp refused']!
    + (f['flood probe ms']! < 0 ? 1 : 0) + (f['slowloris worst probe ms']! < 0 ? 1 : 0);
  process.exitCode = bad ? 1 : 0;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
