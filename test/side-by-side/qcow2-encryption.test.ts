/**
 * Encrypted qcow2 (encrypt.format=luks, and the legacy aes) side by side
 * with qemu-storage-daemon 7.2: blockdev-create writes the same qcow2 header
 * and LUKS header (salts, digests, uuid and calibrated iteration counts
 * aside) into the same clusters; images qemu-img made open with the same
 * errors for bad options and keys, the same query-named-block-nodes entry,
 * and after the same NBD writes decrypt (qemu-img, with the key) to the same
 * bytes and check clean; a chain whose layers have different secrets reads
 * alike.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { concludedJob, qmpDaemon } from '../helpers/live.ts';
import { run } from '../helpers/tools.ts';
import { qemuImgCalibrating } from '../helpers/luks.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import { parseHeader } from '../../src/blockdev/drivers/qcow2/header.ts';
import { parseLuks1Header, type Luks1Header } from '../../src/crypto/luks1-header.ts';

const MiB = 1024 * 1024;

async function job(qmp: QmpClient, id: string, options: Record<string, unknown>): Promise<string | undefined> {
  await qmp.execute('blockdev-create', { 'job-id': id, options });
  return (await concludedJob(qmp, id)).error;
}

/** What must agree in a LUKS header: everything but what is random or time-calibrated. */
function comparableLuks(h: Luks1Header) {
  return {
    ...h, masterKeyDigest: undefined, masterKeySalt: undefined, uuid: undefined, masterKeyIterations: h.masterKeyIterations >= 1000,
    keySlots: h.keySlots.map((s) => ({ ...s, salt: undefined, iterations: s.iterations >= 1000 })),
  };
}

/** The `--object secret` and `--image-opts` a qemu tool needs to read an encrypted image. */
function imageOpts(file: string, pw: string, format: 'luks' | 'aes' = 'luks'): string[] {
  return ['--object', `secret,id=k,file=${pw}`, '--image-opts', `driver=qcow2,file.filename=${file},encrypt.format=${format},encrypt.key-secret=k`];
}

/** The guest-visible bytes of an encrypted image (qemu-img convert with the key). */
function decrypted(file: string, pw: string, format: 'luks' | 'aes' = 'luks'): Buffer {
  const out = `${file}.plain`;
  run('qemu-img', ['convert', '-U', ...imageOpts(file, pw, format), '-O', 'raw', out]);
  const b = readFileSync(out);
  run('rm', ['-f', out]);
  return b;
}

function checkClean(file: string, pw: string, format: 'luks' | 'aes' = 'luks'): void {
  const out = run('qemu-img', ['check', ...imageOpts(file, pw, format)]);
  expect(out).toContain('No errors were found on the image.');
}

describe('encrypted qcow2 side by side with qemu-storage-daemon', () => {
  const dir = tempDir('blockd-qcow2-enc-');
  const pw = join(dir, 'pw');
  const pw2 = join(dir, 'pw2');
  const d = {} as Record<Who, { proc: Running; qmp: QmpClient; dir: string }>;

  beforeAll(async () => {
    writeFileSync(pw, 'qcow2 secret');
    writeFileSync(pw2, 'another one');
    for (const which of BOTH) {
      const sub = join(dir, which);
      run('mkdir', ['-p', sub]);
      const r = await qmpDaemon(which, sub, ['--object', `secret,id=s0,file=${pw}`, '--object', `secret,id=s1,file=${pw2}`,
        '--nbd-server', `addr.type=unix,addr.path=${join(sub, 'nbd.sock')}`]);
      d[which] = { proc: r.proc, qmp: r.qmp, dir: sub };
    }
  }, 60_000);
  afterAll(async () => {
    for (const x of Object.values(d)) { x.qmp.close(); await x.proc.stop(); }
  });

  /** [name, qcow2 create options besides file, expected error] */
  const CREATE: [string, Record<string, unknown>, string?][] = [
    ['luks-default', { size: 64 * MiB, encrypt: { format: 'luks', 'key-secret': 's0', 'iter-time': 10 } }],
    ['luks-cbc-essiv', { size: 16 * MiB, encrypt: { format: 'luks', 'key-secret': 's0', 'iter-time': 10, 'cipher-alg': 'aes-128', 'cipher-mode': 'cbc', 'ivgen-alg': 'essiv', 'hash-alg': 'sha512' } }],
    ['luks-metadata-4k', { size: 16 * MiB, 'cluster-size': 4096, preallocation: 'metadata', encrypt: { format: 'luks', 'key-secret': 's0', 'iter-time': 10 } }],
    ['luks-v2', { size: 8 * MiB, version: 'v2', encrypt: { format: 'luks', 'key-secret': 's0', 'iter-time': 10 } }],
    ['aes', { size: 8 * MiB, encrypt: { format: 'qcow', 'key-secret': 's0' } }],
    ['no-key-secret', { size: 8 * MiB, encrypt: { format: 'luks', 'iter-time': 10 } }, "Parameter 'encrypt.key-secret' is required for cipher"],
  ];

  it.each(CREATE)('blockdev-create %s', async (name, extra, error) => {
    const got: Record<string, { error?: string; header?: ReturnType<typeof parseHeader>; luks?: Luks1Header; length?: number }> = {};
    for (const which of BOTH) {
      const { qmp, dir: sub } = d[which];
      const file = join(sub, `${name}.qcow2`);
      expect(await job(qmp, `${name}-f`, { driver: 'file', filename: file, size: 0 })).toBeUndefined();
      await qmp.execute('blockdev-add', { driver: 'file', 'node-name': `f-${name}`, filename: file });
      let err = await job(qmp, name, { driver: 'qcow2', file: `f-${name}`, ...extra });
      // qsd's PBKDF2 calibration reads the thread's CPU clock and gives up on a 0 ms reading (busy machines).
      for (let i = 0; which === 'qsd' && err === 'Unable to get accurate CPU usage' && i < 5; i++) err = await job(qmp, name, { driver: 'qcow2', file: `f-${name}`, ...extra });
      await qmp.execute('blockdev-del', { 'node-name': `f-${name}` });
      if (err !== undefined) { got[which] = { error: err }; continue; }
      const bytes = readFileSync(file);
      const header = parseHeader(bytes.subarray(0, 65536));
      got[which] = { header, length: statSync(file).size, luks: header.crypto ? parseLuks1Header(bytes.subarray(header.crypto.offset, header.crypto.offset + 592)) : undefined };
    }
    expect(got.qsd.error).toBe(error);
    expect(got.blockd.error).toBe(got.qsd.error);
    if (error) return;
    expect(got.blockd.header).toEqual(got.qsd.header);
    expect(got.blockd.length).toBe(got.qsd.length);
    if (got.qsd.luks) expect(comparableLuks(got.blockd.luks!)).toEqual(comparableLuks(got.qsd.luks));
    const format = (extra.encrypt as { format: string }).format === 'qcow' ? 'aes' : 'luks';
    checkClean(join(d.blockd.dir, `${name}.qcow2`), pw, format);
  }, 60_000);

  it('the image blockd created opens in qemu-io, and what qemu-io writes reads back through blockd', async () => {
    const file = join(d.blockd.dir, 'luks-default.qcow2');
    run('qemu-io', [...imageOpts(file, pw), '-c', 'write -P 0x71 1M 128k']);
    const { qmp, dir: sub } = d.blockd;
    await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'reopened', file: { driver: 'file', filename: file }, encrypt: { format: 'luks', 'key-secret': 's0' } });
    await qmp.execute('block-export-add', { type: 'nbd', id: 'e-reopened', 'node-name': 'reopened' });
    const out = run('qemu-io', ['-r', '-f', 'raw', `nbd+unix:///reopened?socket=${join(sub, 'nbd.sock')}`, '-c', 'read -P 0x71 1M 128k', '-c', 'read -P 0 0 1M']);
    expect(out).not.toMatch(/verification failed/);
    await qmp.execute('block-export-del', { id: 'e-reopened' });
    await qmp.execute('blockdev-del', { 'node-name': 'reopened' });
  });

  describe('images qemu-img made', () => {
    const images: Record<'luks' | 'aes', string> = { luks: join(dir, 'ref-luks.qcow2'), aes: join(dir, 'ref-aes.qcow2') };
    beforeAll(async () => {
      await qemuImgCalibrating(['create', '-q', '-f', 'qcow2', '--object', `secret,id=k,file=${pw}`, '-o', 'encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10', images.luks, '32M']);
      await qemuImgCalibrating(['create', '-q', '-f', 'qcow2', '--object', `secret,id=k,file=${pw}`, '-o', 'encrypt.format=aes,encrypt.key-secret=k', images.aes, '32M']);
      for (const f of Object.values(images)) {
        const fmt = f === images.aes ? 'aes' : 'luks';
        run('qemu-io', [...imageOpts(f, pw, fmt), '-c', 'write -P 0x5a 0 1M', '-c', 'write -P 0x33 5M 64k']);
      }
    }, 120_000);

    const OPEN_ERRORS: [string, (file: string) => Record<string, unknown>][] = [
      ['no key-secret', (file) => ({ driver: 'qcow2', file: { driver: 'file', filename: file } })],
      ['no format', (file) => ({ driver: 'qcow2', file: { driver: 'file', filename: file }, encrypt: { 'key-secret': 's0' } })],
      ['wrong format', (file) => ({ driver: 'qcow2', file: { driver: 'file', filename: file }, encrypt: { format: 'aes', 'key-secret': 's0' } })],
      ['wrong passphrase', (file) => ({ driver: 'qcow2', file: { driver: 'file', filename: file }, encrypt: { format: 'luks', 'key-secret': 's1' } })],
      ['missing secret', (file) => ({ driver: 'qcow2', file: { driver: 'file', filename: file }, encrypt: { format: 'luks', 'key-secret': 'nosuch' } })],
    ];
    it.each(OPEN_ERRORS)('blockdev-add with %s fails alike, and the daemon stays up', async (_name, opts) => {
      const texts: string[] = [];
      for (const which of BOTH) {
        const err = await d[which].qmp.execute('blockdev-add', { 'node-name': 'bad', ...opts(images.luks) }).then(() => 'opened', (e: Error) => e.message);
        texts.push(err);
        await d[which].qmp.execute('query-version');
      }
      expect(texts[1]).toBe(texts[0]);
      expect(texts[0]).not.toBe('opened');
    });

    it('options for an unencrypted image fail alike', async () => {
      const plain = join(dir, 'plain.qcow2');
      run('qemu-img', ['create', '-q', '-f', 'qcow2', plain, '1M']);
      const texts: string[] = [];
      for (const which of BOTH) {
        texts.push(await d[which].qmp.execute('blockdev-add', { 'node-name': 'bad', driver: 'qcow2', file: { driver: 'file', filename: plain }, encrypt: { format: 'luks', 'key-secret': 's0' } })
          .then(() => 'opened', (e: Error) => e.message));
      }
      expect(texts[1]).toBe(texts[0]);
      expect(texts[0]).toBe("GenericError: No encryption in image header, but options specified format 'luks'");
    });

    it.each(['luks', 'aes'] as const)('%s: the same node entry, the same NBD writes give the same decrypted bytes, both check clean', async (format) => {
      const entries: Record<string, unknown>[] = [];
      const maps: string[] = [];
      for (const which of BOTH) {
        const { qmp, dir: sub } = d[which];
        const copy = join(sub, `copy-${format}.qcow2`);
        copyFileSync(images[format], copy);
        await qmp.execute('blockdev-add', { driver: 'file', 'node-name': `cf-${format}`, filename: copy });
        await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': `c-${format}`, file: `cf-${format}`, encrypt: { format, 'key-secret': 's0' } });
        const nodes = (await qmp.execute('query-named-block-nodes')) as Record<string, unknown>[];
        entries.push(nodes.find((n) => n['node-name'] === `c-${format}`)!);
        await qmp.execute('block-export-add', { type: 'nbd', id: `e-${format}`, 'node-name': `c-${format}`, writable: true });
        const uri = `nbd+unix:///c-${format}?socket=${join(sub, 'nbd.sock')}`;
        const out = run('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0x5a 0 1M', '-c', 'write -P 0x61 2M 100k', '-c', 'write -P 0x62 5 7',
          '-c', 'write -P 0x63 5M 4k', '-c', 'write -z 8M 1M', '-c', 'write -P 0x64 31M 1M', '-c', 'flush']);
        expect(out).not.toMatch(/verification failed/);
        maps.push(run('nbdinfo', ['--map', uri]));
        // nbdinfo has exited, but the server may not have seen its disconnect yet.
        await qmp.execute('block-export-del', { id: `e-${format}`, mode: 'hard' });
        await qmp.execute('blockdev-del', { 'node-name': `c-${format}` });
        await qmp.execute('blockdev-del', { 'node-name': `cf-${format}` });
      }
      const norm = (e: Record<string, unknown>) => JSON.parse(JSON.stringify(e).replaceAll(d.qsd.dir, '@').replaceAll(d.blockd.dir, '@'));
      expect(norm(entries[1])).toEqual(norm(entries[0]));
      expect(maps[1]).toBe(maps[0]);
      const [q, b] = BOTH.map((w) => join(d[w].dir, `copy-${format}.qcow2`));
      expect(decrypted(b, pw, format).equals(decrypted(q, pw, format))).toBe(true);
      checkClean(b, pw, format);
    }, 60_000);

    it('a chain whose layers have different secrets reads alike', async () => {
      const base = images.luks;
      const top = join(dir, 'top.qcow2');
      await qemuImgCalibrating(['create', '-q', '-f', 'qcow2', '--object', `secret,id=k,file=${pw2}`, '-o', `encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10,backing_file=${base},backing_fmt=qcow2`, '-u', top, '32M']);
      run('qemu-io', ['--object', `secret,id=k,file=${pw2}`, '--object', `secret,id=b,file=${pw}`, '--image-opts',
        `driver=qcow2,file.filename=${top},encrypt.format=luks,encrypt.key-secret=k,backing.driver=qcow2,backing.file.filename=${base},backing.encrypt.format=luks,backing.encrypt.key-secret=b`,
        '-c', 'write -P 0x77 512k 1M']);
      const reads: string[] = [];
      for (const which of BOTH) {
        const { qmp, dir: sub } = d[which];
        await qmp.execute('blockdev-add', {
          driver: 'qcow2', 'node-name': 'chain', 'read-only': true, file: { driver: 'file', filename: top }, encrypt: { format: 'luks', 'key-secret': 's1' },
          backing: { driver: 'qcow2', file: { driver: 'file', filename: base }, encrypt: { format: 'luks', 'key-secret': 's0' } },
        });
        await qmp.execute('block-export-add', { type: 'nbd', id: 'e-chain', 'node-name': 'chain' });
        reads.push(run('qemu-io', ['-r', '-f', 'raw', `nbd+unix:///chain?socket=${join(sub, 'nbd.sock')}`,
          '-c', 'read -P 0x5a 0 512k', '-c', 'read -P 0x77 512k 1M', '-c', 'read -P 0x33 5M 64k', '-c', 'read -P 0 6M 1M']).split('\n').filter((l) => !/ops; /.test(l)).join('\n'));
        await qmp.execute('block-export-del', { id: 'e-chain' });
        await qmp.execute('blockdev-del', { 'node-name': 'chain' });
      }
      expect(reads[1]).toBe(reads[0]);
      expect(reads[0]).not.toMatch(/verification failed/);
    }, 60_000);
  });
});
