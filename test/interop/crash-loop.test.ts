/**
 * The crash loop (test/crash/loop.ts; `npm run crash-loop -- --kills N` for
 * long runs), three kills under npm test: one with a backup job running, the
 * persistent bitmap checked after each.
 */
import { describe, it, expect } from 'vitest';
import { requireTool, SYSTEM_PYTHON } from '../helpers/tools.ts';
import { tempDir } from '../helpers/temp.ts';
import { crashLoop } from '../crash/loop.ts';

describe('crash loop', () => {
  it('3 SIGKILLs during writes, flushes, FUA and a backup job: no corruption, durable writes read back, bitmap covers acknowledged writes', async () => {
    requireTool('qemu-img');
    requireTool(SYSTEM_PYTHON);
    const r = await crashLoop({ dir: tempDir('blockd-crash-'), kills: 3, seed: 11 });
    expect(r.failures).toEqual([]);
    expect(r.corruptions).toBe(0);
    expect(r.kills).toBe(3);
    expect(r.jobsKilled).toBe(1);
    expect(r.imagesChecked).toBe(4);
    expect(r.bitmapWritesCovered).toBeGreaterThan(0);
  }, 180_000);
});
