/**
 * x-blockdev-amend of LUKS key slots side by side with qemu-storage-daemon
 * 7.2, on a LUKS volume and on a qcow2 with encrypt.format=luks: the same
 * sequence of amend jobs (adding and erasing slots, and every refusal)
 * succeeds or fails with the same text on both daemons, leaves the same slot
 * states in query-named-block-nodes, and the volume then opens with the new
 * passphrase (and cryptsetup agrees for the LUKS file).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { concludedJob, qmpDaemon } from '../helpers/live.ts';
import { run, tryRun } from '../helpers/tools.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import { qemuImgCalibrating, qemuImgCreateLuks } from '../helpers/luks.ts';

/** Runs an amend (or any command that starts a job): the command's error, or the job's. */
async function amend(qmp: QmpClient, id: string, args: Record<string, unknown>): Promise<string> {
  try {
    await qmp.execute('x-blockdev-amend', { 'job-id': id, ...args });
  } catch (e) {
    return `command: ${(e as Error).message}`;
  }
  const j = await concludedJob(qmp, id);
  return j.error === undefined ? `ok (${j.type})` : `job: ${j.error}`;
}

const slots = async (qmp: QmpClient, node: string) => {
  const nodes = (await qmp.execute('query-named-block-nodes')) as { 'node-name': string; image: { 'format-specific': { data: Record<string, unknown> } } }[];
  const data = nodes.find((n) => n['node-name'] === node)!.image['format-specific'].data;
  const luks = (data.encrypt ?? data) as { slots: { active: boolean }[] };
  return luks.slots.map((s) => (s.active ? 1 : 0)).join('');
};

describe('x-blockdev-amend of LUKS key slots, side by side with qemu-storage-daemon', () => {
  const dir = tempDir('blockd-amend-');
  const d = {} as Record<Who, { proc: Running; qmp: QmpClient }>;
  const luks = (who: Who) => join(dir, `${who}.luks`);
  const qcow2 = (who: Who) => join(dir, `${who}.qcow2`);
  const plain = (who: Who) => join(dir, `${who}-plain.qcow2`);

  beforeAll(async () => {
    for (const [n, p] of [['pw0', 'zero'], ['pw1', 'one'], ['pw2', 'two']]) writeFileSync(join(dir, n), p);
    for (const who of BOTH) {
      await qemuImgCreateLuks(luks(who), join(dir, 'pw0'), ['iter-time=10'], '4M');
      await qemuImgCalibrating(['create', '-q', '-f', 'qcow2', '--object', `secret,id=k,file=${join(dir, 'pw0')}`, '-o', 'encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10', qcow2(who), '4M']);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', plain(who), '4M']);
      const r = await qmpDaemon(who, join(dir), ['--object', `secret,id=s0,file=${join(dir, 'pw0')}`, '--object', `secret,id=s1,file=${join(dir, 'pw1')}`,
        '--object', `secret,id=s2,file=${join(dir, 'pw2')}`,
        '--blockdev', `driver=file,node-name=lf,filename=${luks(who)}`, '--blockdev', 'driver=luks,node-name=l,file=lf,key-secret=s0',
        '--blockdev', `driver=file,node-name=qf,filename=${qcow2(who)}`, '--blockdev', 'driver=qcow2,node-name=q,file=qf,encrypt.format=luks,encrypt.key-secret=s0',
        '--blockdev', `driver=file,node-name=pf,filename=${plain(who)}`, '--blockdev', 'driver=qcow2,node-name=p,file=pf']);
      d[who] = { proc: r.proc, qmp: r.qmp };
    }
  }, 60_000);
  afterAll(async () => {
    for (const x of Object.values(d)) { x.qmp.close(); await x.proc.stop(); }
  });

  /** [what, node, options (as for luks; wrapped in encrypt for qcow2), force] */
  const STEPS: [string, Record<string, unknown>, boolean?][] = [
    ['add without new-secret', { state: 'active' }],
    ['add with old-secret', { state: 'active', 'new-secret': 's1', 'old-secret': 's0' }],
    ['add over active slot 0', { state: 'active', 'new-secret': 's1', keyslot: 0 }],
    ['add at slot 9', { state: 'active', 'new-secret': 's1', keyslot: 9 }],
    ['add with a wrong current secret', { state: 'active', 'new-secret': 's1', secret: 's2', 'iter-time': 10 }],
    ['add a missing secret', { state: 'active', 'new-secret': 'nosuch', 'iter-time': 10 }],
    ['add s1 (first free slot)', { state: 'active', 'new-secret': 's1', 'iter-time': 10 }],
    ['add s2 at slot 5', { state: 'active', 'new-secret': 's2', keyslot: 5, 'iter-time': 10 }],
    ['erase with new-secret', { state: 'inactive', 'new-secret': 's1' }],
    ['erase with iter-time', { state: 'inactive', 'iter-time': 10 }],
    ['erase with secret', { state: 'inactive', secret: 's0' }],
    ['erase with neither', { state: 'inactive' }],
    ['erase slot 3 (inactive)', { state: 'inactive', keyslot: 3 }],
    ['erase slot -1', { state: 'inactive', keyslot: -1 }],
    ['erase slot 5 holding s1?', { state: 'inactive', keyslot: 5, 'old-secret': 's1' }],
    ['erase slots holding s2', { state: 'inactive', 'old-secret': 's2' }],
    ['erase slots holding s2 again', { state: 'inactive', 'old-secret': 's2' }],
    ['erase slot 0', { state: 'inactive', keyslot: 0 }],
    ['erase the last slot', { state: 'inactive', keyslot: 1 }],
    ['erase every slot holding s1', { state: 'inactive', 'old-secret': 's1' }],
  ];

  it.each([['luks', 'l'], ['qcow2', 'q']] as const)('%s: the same amend sequence gives the same results and slots', async (driver, node) => {
    const seen: Record<Who, string[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const { qmp } = d[who];
      let n = 0;
      for (const [what, o, force] of STEPS) {
        const options = driver === 'luks' ? { driver, ...o } : { driver, encrypt: { format: 'luks', ...o } };
        let r = await amend(qmp, `${node}${n++}`, { 'node-name': node, options, ...(force ? { force } : {}) });
        // qsd's PBKDF2 calibration reads the thread's CPU clock and gives up on a 0 ms reading (busy machines).
        for (let i = 0; who === 'qsd' && r.includes('Unable to get accurate CPU usage') && i < 5; i++) r = await amend(qmp, `${node}${n++}`, { 'node-name': node, options });
        seen[who].push(`${what}: ${r} -> ${await slots(qmp, node)}`);
      }
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd.at(-1)).toMatch(/-> 01000000$/);
  }, 120_000);

  it('the amended volumes open with the new passphrase only; cryptsetup agrees', async () => {
    for (const who of BOTH) {
      const { qmp } = d[who];
      for (const n of ['l', 'q']) await qmp.execute('blockdev-del', { 'node-name': n });
      const open = (key: string) => qmp.execute('blockdev-add', { driver: 'luks', 'node-name': `l-${key}`, file: 'lf', 'key-secret': key }).then(() => 'ok', (e: Error) => e.message);
      expect(await open('s0')).toBe('GenericError: Invalid password, cannot unlock any keyslot');
      expect(await open('s1')).toBe('ok');
      await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'q1', file: 'qf', encrypt: { format: 'luks', 'key-secret': 's1' } });
    }
    for (const who of BOTH) {
      expect(tryRun('cryptsetup', ['open', '--test-passphrase', '--key-file', join(dir, 'pw1'), luks(who)]).status).toBe(0);
      expect(tryRun('cryptsetup', ['open', '--test-passphrase', '--key-file', join(dir, 'pw0'), luks(who)]).status).not.toBe(0);
    }
  }, 60_000);

  it('refusals before a job: a missing node, another driver, a driver that cannot amend, an unencrypted qcow2', async () => {
    const seen: Record<Who, string[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const { qmp } = d[who];
      seen[who].push(await amend(qmp, 'x1', { 'node-name': 'nosuch', options: { driver: 'luks', state: 'active' } }));
      seen[who].push(await amend(qmp, 'x2', { 'node-name': 'p', options: { driver: 'luks', state: 'active' } }));
      seen[who].push(await amend(qmp, 'x3', { 'node-name': 'pf', options: { driver: 'file' } }));
      seen[who].push(await amend(qmp, 'x4', { 'node-name': 'p', options: { driver: 'qcow2', encrypt: { format: 'luks', state: 'active', 'new-secret': 's1' } } }));
      seen[who].push(await amend(qmp, 'x5', { 'node-name': 'p', options: { driver: 'qcow2' } }));
    }
    expect(seen.blockd).toEqual(seen.qsd);
  });
});
