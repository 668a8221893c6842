/**
 * blockdev-create for luks side by side with qemu-storage-daemon 7.2: the
 * same jobs succeed or fail with the same error, and the headers they write
 * agree field by field (salts, digests, uuid and calibrated iteration counts
 * aside), as do the file lengths. The image blockd made is accepted by
 * cryptsetup (luksDump, open --test-passphrase, --dump-volume-key gives the
 * key blockd's own unlock finds) and by qemu-io, which reads what blockd
 * wrote through NBD.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { concludedJob, qmpDaemon } from '../helpers/live.ts';
import { run } from '../helpers/tools.ts';
import { parseLuks1Header, type Luks1Header } from '../../src/crypto/luks1-header.ts';
import { parseCipherSpec } from '../../src/crypto/cipher-spec.ts';
import { findKey } from '../../src/crypto/luks1-keyslot.ts';

const PASS = 'create me';
const MiB = 1024 * 1024;

/** [name, luks options besides file, key-secret and iter-time, expected error] */
const CASES: [string, Record<string, unknown>, string?][] = [
  ['default', { size: 4 * MiB }],
  ['aes-128-cbc-essiv', { size: 4 * MiB, 'cipher-alg': 'aes-128', 'cipher-mode': 'cbc', 'ivgen-alg': 'essiv', 'hash-alg': 'sha512' }],
  ['aes-256-cbc-plain64', { size: 3 * MiB + 512, 'cipher-alg': 'aes-256', 'cipher-mode': 'cbc', 'ivgen-alg': 'plain64', 'hash-alg': 'sha384' }],
  ['xts-plain-with-hash', { size: 4 * MiB, 'cipher-alg': 'aes-128', 'ivgen-alg': 'plain', 'ivgen-hash-alg': 'sha256' }],
  ['essiv-sha512-aes128', { size: 4 * MiB, 'cipher-alg': 'aes-128', 'cipher-mode': 'cbc', 'ivgen-alg': 'essiv', 'ivgen-hash-alg': 'sha512' }, 'No AES cipher with key size 64 available'],
  ['des', { size: 4 * MiB, 'cipher-alg': 'des' }, "Algorithm 'des' not supported"],
  ['preallocation-full', { size: 2 * MiB, preallocation: 'full' }],
  ['no-key-secret', { size: 4 * MiB, 'key-secret': undefined }, "Parameter 'key-secret' is required for cipher"],
  ['missing-secret', { size: 4 * MiB, 'key-secret': 'nosuch' }, "No secret with id 'nosuch'"],
];

async function job(qmp: QmpClient, id: string, options: Record<string, unknown>): Promise<string | undefined> {
  await qmp.execute('blockdev-create', { 'job-id': id, options });
  return (await concludedJob(qmp, id)).error;
}

/** The header without what is random or time-calibrated. */
function comparable(h: Luks1Header) {
  return {
    ...h, masterKeyDigest: undefined, masterKeySalt: undefined, uuid: undefined, masterKeyIterations: h.masterKeyIterations >= 1000,
    keySlots: h.keySlots.map((s) => ({ ...s, salt: undefined, iterations: s.iterations >= 1000 })),
  };
}

describe('blockdev-create luks side by side with qemu-storage-daemon', () => {
  const dir = tempDir('blockd-luks-create-');
  const pw = join(dir, 'pw');
  const d = {} as Record<'qsd' | 'blockd', { proc: Running; qmp: QmpClient; dir: string }>;

  beforeAll(async () => {
    writeFileSync(pw, PASS);
    for (const which of ['qsd', 'blockd'] as const) {
      const sub = join(dir, which);
      run('mkdir', ['-p', sub]);
      const r = await qmpDaemon(which, sub, ['--object', `secret,id=s0,file=${pw}`, '--nbd-server', `addr.type=unix,addr.path=${join(sub, 'nbd.sock')}`]);
      d[which] = { proc: r.proc, qmp: r.qmp, dir: sub };
    }
  }, 60_000);
  afterAll(async () => {
    for (const x of Object.values(d)) { x.qmp.close(); await x.proc.stop(); }
    rmSync(dir, { recursive: true, force: true });
  });

  it.each(CASES)('%s', async (name, extra, error) => {
    const results: Record<string, { error?: string; header?: Luks1Header; length?: number }> = {};
    for (const which of ['qsd', 'blockd'] as const) {
      const { qmp, dir: sub } = d[which];
      const file = join(sub, `${name}.luks`);
      expect(await job(qmp, `${name}-f`, { driver: 'file', filename: file, size: 0 })).toBeUndefined();
      await qmp.execute('blockdev-add', { driver: 'file', 'node-name': `f-${name}`, filename: file });
      const options: Record<string, unknown> = { driver: 'luks', file: `f-${name}`, 'key-secret': 's0', 'iter-time': 10, ...extra };
      for (const k of Object.keys(options)) if (options[k] === undefined) delete options[k];
      let err = await job(qmp, name, options);
      // qsd times PBKDF2 calibration runs on the thread's CPU clock, which on a
      // busy machine can show 0 ms for a run; it then gives up with this text.
      for (let i = 0; which === 'qsd' && err === 'Unable to get accurate CPU usage' && i < 5; i++) err = await job(qmp, name, options);
      await qmp.execute('blockdev-del', { 'node-name': `f-${name}` });
      results[which] = err !== undefined ? { error: err } : { header: parseLuks1Header(readFileSync(file).subarray(0, 592)), length: statSync(file).size };
    }
    expect(results.qsd.error).toBe(error);
    expect(results.blockd.error).toBe(results.qsd.error);
    if (!error) {
      expect(comparable(results.blockd.header!)).toEqual(comparable(results.qsd.header!));
      expect(results.blockd.length).toBe(results.qsd.length);
      expect(results.blockd.length).toBe(results.qsd.header!.payloadOffsetSector * 512 + (extra.size as number));
    }
  }, 60_000);

  it('the image blockd made: cryptsetup accepts it and dumps the key blockd unlocks; qemu-io reads what blockd wrote', async () => {
    const { qmp, dir: sub } = d.blockd;
    const file = join(sub, 'default.luks');
    const dump = run('cryptsetup', ['luksDump', file]);
    expect(dump).toMatch(/Version:\s+1/);
    expect(dump).toMatch(/Cipher mode:\s+xts-plain64/);
    expect(dump).toMatch(/Key Slot 0: ENABLED/);
    run('cryptsetup', ['open', '--test-passphrase', '--key-file', pw, file]);
    const mk = /MK dump:\s*([\s0-9a-f]+)/.exec(run('cryptsetup', ['luksDump', '--dump-volume-key', '-q', '--key-file', pw, file]))![1].replace(/\s+/g, '');
    const h = parseLuks1Header(readFileSync(file).subarray(0, 592));
    const fh = await open(file, 'r');
    const { key } = await findKey(h, parseCipherSpec(h.cipherName, h.cipherMode, h.hashSpec, h.masterKeyLen), Buffer.from(PASS), async (o, l) => {
      const b = Buffer.alloc(l);
      await fh.read(b, 0, l, o);
      return b;
    });
    await fh.close();
    expect(key.toString('hex')).toBe(mk);

    await qmp.execute('blockdev-add', { driver: 'luks', 'node-name': 'new', file: { driver: 'file', filename: file }, 'key-secret': 's0' });
    await qmp.execute('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'new', writable: true });
    run('qemu-io', ['-f', 'raw', `nbd+unix:///new?socket=${join(sub, 'nbd.sock')}`, '-c', 'write -P 0x3c 0 4M', '-c', 'flush']);
    await qmp.execute('block-export-del', { id: 'e' });
    await qmp.execute('blockdev-del', { 'node-name': 'new' });
    const out = run('qemu-io', ['--object', `secret,id=s,file=${pw}`, '--image-opts', `driver=luks,key-secret=s,file.filename=${file}`, '-r', '-c', 'read -P 0x3c 0 4M']);
    expect(out).toMatch(/read 4194304\/4194304 bytes/);
    expect(out).not.toMatch(/verification failed/);
  });
});
