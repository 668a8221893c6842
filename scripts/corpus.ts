/**
 * `npm run corpus -- [--images N] [--seed S]`: the corrupted-image corpus
 * (test/corpus/run.ts) in a scratch directory removed afterwards; prints the
 * outcome counts. Exit status 1 on any crash, hang, write outside the image
 * or silent damage.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BAD, formatResult, runCorpus } from '../test/corpus/run.ts';

const arg = (name: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : undefined; };
const images = Number(arg('images') ?? 1000);
const seed = Number(arg('seed') ?? 1);
const dir = mkdtempSync(join(tmpdir(), 'blockd-corpus-'));
try {
  const r = await runCorpus({ dir, images, seed, progress: (n) => { if (n % 100 === 0) process.stderr.write(`${n} images\n`); } });
  console.log(formatResult(r));
  process.exitCode = BAD.some((k) => r.counts[k] > 0) ? 1 : 0;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
