/**
 * A mirror whose source has an injected read error (raw over blkdebug, the
 * error on read_aio at one sector), side by side with qemu-storage-daemon
 * 7.2, once per on-source-error policy: report (the job fails with EIO),
 * ignore (the error is reported and the area copied again), stop (the job
 * pauses with a failed I/O status until block-job-resume), enospc with EIO
 * (reported as report) and with ENOSPC (stops). The same QMP script must give
 * the same job status sequence, BLOCK_JOB_ERROR events (operation, action),
 * the same end (error text or completion) and, where the job completes, a
 * target equal to the source.
 */
import { describe, it, expect, afterAll, beforeAll } from 'vitest';
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';
import { QmpCommandError } from '../../src/qmp/client/qmp-client.ts';

const SIZE = 1024 * 1024;
let pair: Pair;

beforeAll(async () => {
  pair = await startPair((d) => {
    const data = Buffer.alloc(SIZE);
    for (let i = 0; i < SIZE; i += 512) data.fill(i / 512 % 251 + 1, i, i + 512);
    writeFileSync(join(d, 'src.img'), data);
  }, () => []);
}, 60_000);
afterAll(async () => { await pair?.stop(); });

interface Outcome { sequence: unknown[]; error?: string; copied?: boolean }

async function exec(s: Side, cmd: string, args: Record<string, unknown>): Promise<unknown> {
  try { return await s.qmp.execute(cmd, args); } catch (e) {
    if (e instanceof QmpCommandError) return { error: e.desc };
    throw e;
  }
}

async function mirrorWithError(s: Side, n: number, policy: string, errno: number, once: boolean): Promise<Outcome> {
  const id = `j${n}`;
  writeFileSync(join(s.dir, `tgt${n}.img`), Buffer.alloc(SIZE));
  await s.qmp.execute('blockdev-add', {
    driver: 'raw', 'node-name': `src${n}`,
    file: {
      driver: 'blkdebug', 'node-name': `dbg${n}`,
      image: { driver: 'file', filename: join(s.dir, 'src.img') },
      'inject-error': [{ event: 'read_aio', sector: 700, errno, once }],
    },
  });
  await s.qmp.execute('blockdev-add', { driver: 'raw', 'node-name': `tgt${n}`, file: { driver: 'file', filename: join(s.dir, `tgt${n}.img`) } });
  await s.qmp.execute('blockdev-mirror', { 'job-id': id, device: `src${n}`, target: `tgt${n}`, sync: 'full', 'on-source-error': policy });
  const mine = () => s.events.filter((e) => e.data.id === id || e.data.device === id);
  const has = (pred: (e: { event: string; data: Record<string, unknown> }) => boolean) => mine().some(pred);
  const settled = (e: { event: string; data: Record<string, unknown> }) =>
    (e.data.device === id && e.event === 'BLOCK_JOB_READY') || (e.data.id === id && (e.data.status === 'null' || e.data.status === 'paused'));
  await waitFor(s.events, settled);
  if (has((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.status === 'paused')) {
    const q = (await s.qmp.execute('query-block-jobs', {})) as { device: string; 'io-status': string }[];
    expect(q.find((j) => j.device === id)?.['io-status']).toBe(errno === 28 ? 'nospace' : 'failed');
    await s.qmp.execute('block-job-resume', { device: id });
    await waitFor(s.events, (e) => (e.data.device === id && e.event === 'BLOCK_JOB_READY') || (e.data.id === id && e.data.status === 'null'));
  }
  let copied: boolean | undefined;
  if (has((e) => e.event === 'BLOCK_JOB_READY')) {
    await s.qmp.execute('block-job-complete', { device: id });
    await waitFor(s.events, (e) => e.data.id === id && e.data.status === 'null');
    copied = readFileSync(join(s.dir, `tgt${n}.img`)).equals(readFileSync(join(s.dir, 'src.img')));
  }
  const sequence = mine().map((e) => {
    if (e.event === 'JOB_STATUS_CHANGE') return e.data.status;
    if (e.event === 'BLOCK_JOB_ERROR') return `ERROR ${e.data.operation} ${e.data.action}`;
    return e.event;
  });
  const done = mine().find((e) => e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_CANCELLED');
  await exec(s, 'blockdev-del', { 'node-name': `src${n}` });
  await exec(s, 'blockdev-del', { 'node-name': `tgt${n}` });
  return { sequence, error: done?.data.error as string | undefined, copied };
}

describe('mirror from a source with an injected read error, as qsd', () => {
  const cases: [string, number, boolean][] = [
    ['report', 5, false], ['ignore', 5, true], ['stop', 5, true], ['enospc', 5, false], ['enospc', 28, true],
  ];
  cases.forEach(([policy, errno, once], i) => {
    it(`on-source-error=${policy}, errno ${errno}`, async () => {
      const got: Record<string, Outcome> = {};
      for (const w of BOTH) got[w] = await mirrorWithError(pair[w], i, policy, errno, once);
      expect(got.blockd).toEqual(got.qsd);
      // The policy did what it says (so equality above is not two daemons ignoring the rule alike).
      const errors = got.qsd.sequence.filter((x) => String(x).startsWith('ERROR'));
      expect(errors.length).toBeGreaterThan(0);
      const action = policy === 'enospc' ? (errno === 28 ? 'stop' : 'report') : policy;
      expect(errors[0]).toBe(`ERROR read ${action}`);
      if (action === 'report') expect(got.qsd.error).toBe('Input/output error');
      else expect(got.qsd.copied).toBe(true);
    }, 60_000);
  });
});
