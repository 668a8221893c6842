/**
 * The corrupted-image corpus (test/corpus, `npm run corpus` for the full
 * 1,000), a slice of it under npm test: seeded mutations of valid qcow2
 * images opened, read, written, flushed and closed through blockd's block
 * layer. Each works, is refused, or is marked corrupt / fails with a
 * BlockError; none crashes, hangs, writes another file or damages the image
 * where QEMU would not. Plus the seeds that found bugs, as regressions.
 */
import { describe, it, expect } from 'vitest';
import { requireTool } from '../helpers/tools.ts';
import { tempDir } from '../helpers/temp.ts';
import { BAD, formatResult, runCorpus } from '../corpus/run.ts';

describe('corrupted qcow2 corpus', () => {
  it('regression seeds: metadata write-back over an active L2 table, a close that cannot flush', async () => {
    requireTool('qemu-img');
    requireTool('qemu-io');
    // 90: L1[35] points at a refcount block: writing the refcount block back must be refused and the image marked
    //     corrupt (QEMU: "Preventing invalid write on metadata (overlaps with active L2 table)"); blockd wrote it.
    // 94: L1[1] points at 2^55: the last L2 flush fails at close; the file node was left open and locked.
    // 71, 155: the same overlap as 90 through other mutations.
    // 901: a bitmap directory entry with a huge table size: Buffer.alloc threw a RangeError (QEMU's check_dir_entry refuses it).
    // 978: the same with a table size just small enough to allocate: reading it cluster by cluster took minutes.
    const r = await runCorpus({ dir: tempDir('blockd-corpus-'), images: 0, seed: 0, seeds: [90, 94, 71, 155, 901, 978] });
    expect(BAD.map((k) => r.counts[k]), formatResult(r)).toEqual([0, 0, 0, 0]);
    expect(r.bySeed.get(90)).toBe('corrupt');
    expect(r.bySeed.get(94)).toBe('io-error');
    expect(r.bySeed.get(901)).toBe('refused');
    expect(r.bySeed.get(978)).toBe('refused');
  }, 120_000);

  it('60 seeded images: works, refused or corrupt; no crash, hang, outside write or damage', async () => {
    requireTool('qemu-img');
    requireTool('qemu-io');
    const r = await runCorpus({ dir: tempDir('blockd-corpus-'), images: 60, seed: 1000 });
    expect(BAD.map((k) => r.counts[k]), formatResult(r)).toEqual([0, 0, 0, 0]);
    // The corpus reaches every good outcome (mutations that are too gentle or too harsh would not).
    expect(r.counts.works).toBeGreaterThan(0);
    expect(r.counts.refused).toBeGreaterThan(0);
    expect(r.counts.corrupt).toBeGreaterThan(0);
  }, 180_000);
});
