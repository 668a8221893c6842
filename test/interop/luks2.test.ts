/**
 * LUKS2 volumes made by cryptsetup luksFormat --type luks2 (which qsd 7.2
 * cannot open), through blockd's luks driver: Argon2id and PBKDF2 key
 * slots, 4 KiB and 512-byte sectors, xts-plain64 and cbc-essiv. This kernel
 * has no device-mapper, so what blockd writes is checked against a small
 * model of dm-crypt's sector encryption keyed with the volume key cryptsetup
 * dumps (LUKS2 maps sectors without iv_large_sectors: IVs count 512-byte
 * units from iv_tweak); cryptsetup still unlocks the volume afterwards, and
 * a second key slot, a wrong passphrase and a restart behave.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { run, tryRun } from '../helpers/tools.ts';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';

const MiB = 1024 * 1024;

/** The volume key cryptsetup unlocks with `keyFile`. */
function volumeKey(image: string, keyFile: string): Buffer {
  const out = run('cryptsetup', ['luksDump', '--dump-volume-key', '-q', '--key-file', keyFile, image]);
  return Buffer.from(/MK dump:\s*([\s0-9a-f]+)/.exec(out)![1].replace(/\s+/g, ''), 'hex');
}

/** dm-crypt's view of the payload: sector `s` (of `sectorSize` bytes) has the IV of 512-byte unit s * sectorSize / 512. */
function modelDecrypt(cipher: 'aes-xts-plain64' | 'aes-cbc-essiv:sha256', key: Buffer, data: Buffer, sectorSize: number): Buffer {
  const out = Buffer.alloc(data.length);
  const essiv = cipher.includes('essiv') ? createHash('sha256').update(key).digest() : undefined;
  for (let off = 0; off < data.length; off += sectorSize) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(off / 512));
    let name = `aes-${key.length * 4}-xts`;
    let ivUsed = iv;
    if (essiv) {
      const e = createCipheriv('aes-256-ecb', essiv, null).setAutoPadding(false);
      ivUsed = Buffer.concat([e.update(iv), e.final()]);
      name = `aes-${key.length * 8}-cbc`;
    }
    const d = createDecipheriv(name, key, ivUsed).setAutoPadding(false);
    Buffer.concat([d.update(data.subarray(off, off + sectorSize)), d.final()]).copy(out, off);
  }
  return out;
}

const stops: (() => Promise<void>)[] = [];
afterEach(async () => { for (const s of stops.splice(0)) await s().catch(() => undefined); });

async function daemon(dir: string): Promise<{ qmp: QmpClient; proc: Running; uri: (n: string) => string }> {
  const d = await qmpDaemon('blockd', dir, ['--object', `secret,id=s0,file=${join(dir, 'pw')}`, '--object', `secret,id=s1,file=${join(dir, 'pw-b')}`,
    '--object', `secret,id=bad,file=${join(dir, 'pw-bad')}`, '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`]);
  stops.push(async () => { d.qmp.close(); await d.proc.stop(); });
  return { ...d, uri: (n) => `nbd+unix:///${n}?socket=${join(dir, 'nbd.sock')}` };
}

const CASES: [string, string[], 'aes-xts-plain64' | 'aes-cbc-essiv:sha256', number][] = [
  ['argon2id, 4 KiB sectors, xts', ['--pbkdf', 'argon2id', '--pbkdf-force-iterations', '4', '--pbkdf-memory', '32768'], 'aes-xts-plain64', 4096],
  ['pbkdf2, 512-byte sectors, cbc-essiv', ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--sector-size', '512', '--cipher', 'aes-cbc-essiv:sha256', '--key-size', '256'], 'aes-cbc-essiv:sha256', 512],
  ['argon2i, 4 KiB sectors, xts-256', ['--pbkdf', 'argon2i', '--pbkdf-force-iterations', '4', '--pbkdf-memory', '32768', '--key-size', '256'], 'aes-xts-plain64', 4096],
];

describe('LUKS2 volumes made by cryptsetup, through the luks driver', () => {
  it.each(CASES)('%s: writes through NBD are what dm-crypt would store; cryptsetup still unlocks it', async (_name, fmt, cipher, sectorSize) => {
    const dir = tempDir('blockd-luks2-');
    const image = join(dir, 'v.img');
    writeFileSync(join(dir, 'pw'), 'first passphrase');
    writeFileSync(join(dir, 'pw-b'), 'second passphrase');
    writeFileSync(join(dir, 'pw-bad'), 'not it');
    run('truncate', ['-s', '24M', image]);
    run('cryptsetup', ['luksFormat', '-q', '--type', 'luks2', ...fmt, '--key-file', join(dir, 'pw'), image]);
    run('cryptsetup', ['luksAddKey', '-q', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', join(dir, 'pw'), image, join(dir, 'pw-b')]);
    const dump = run('cryptsetup', ['luksDump', image]);
    expect(dump).toMatch(/Version:\s+2/);
    const offset = Number(/offset: (\d+) \[bytes\]/.exec(dump)![1]);
    const d = await daemon(dir);

    // A wrong passphrase is refused and the daemon stays up.
    const err = await d.qmp.execute('blockdev-add', { driver: 'luks', 'node-name': 'nope', file: { driver: 'file', filename: image }, 'key-secret': 'bad' }).then(() => 'opened', (e: Error) => e.message);
    expect(err).toBe('GenericError: Invalid password, cannot unlock any keyslot');

    // Either key slot opens it; the second one writes.
    await d.qmp.execute('blockdev-add', { driver: 'luks', 'node-name': 'v', file: { driver: 'file', filename: image }, 'key-secret': 's1' });
    await d.qmp.execute('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'v', writable: true });
    const info = run('nbdinfo', ['--json', d.uri('v')]);
    expect(JSON.parse(info).exports[0]).toMatchObject({ 'export-size': 24 * MiB - offset, block_size_minimum: sectorSize });
    // An unaligned write goes through the block layer's read-modify-write.
    run('qemu-io', ['-f', 'raw', d.uri('v'), '-c', 'write -P 0x61 0 1M', '-c', 'write -P 0x62 8k 100', '-c', 'write -P 0x63 3M 64k', '-c', 'flush']);
    await d.qmp.execute('block-export-del', { id: 'e', mode: 'hard' });
    await d.qmp.execute('blockdev-del', { 'node-name': 'v' });

    const expected = Buffer.alloc(4 * MiB);
    expected.fill(0x61, 0, MiB);
    expected.fill(0x62, 8192, 8292);
    expected.fill(0x63, 3 * MiB, 3 * MiB + 65536);
    const raw = readFileSync(image).subarray(offset, offset + 4 * MiB);
    const plain = modelDecrypt(cipher, volumeKey(image, join(dir, 'pw')), raw, sectorSize);
    // Sectors never written hold what luksFormat left (random or zero ciphertext): compare the written ones.
    for (const [from, to] of [[0, MiB], [3 * MiB, 3 * MiB + 65536]]) expect(plain.subarray(from, to).equals(expected.subarray(from, to))).toBe(true);
    expect(tryRun('cryptsetup', ['open', '--test-passphrase', '--key-file', join(dir, 'pw'), image]).status).toBe(0);

    // Reopened with the first slot, blockd reads back what it wrote.
    await d.qmp.execute('blockdev-add', { driver: 'luks', 'node-name': 'again', 'read-only': true, file: { driver: 'file', filename: image }, 'key-secret': 's0' });
    await d.qmp.execute('block-export-add', { type: 'nbd', id: 'e2', 'node-name': 'again' });
    const out = run('qemu-io', ['-r', '-f', 'raw', d.uri('again'), '-c', 'read -P 0x61 0 8k', '-c', 'read -P 0x62 8k 100', '-c', 'read -P 0x61 8292 1040284', '-c', 'read -P 0x63 3M 64k']);
    expect(out).not.toMatch(/verification failed/);
    const nodes = (await d.qmp.execute('query-named-block-nodes')) as { 'node-name': string; image: { 'format-specific': { data: Record<string, unknown> } } }[];
    expect(nodes.find((n) => n['node-name'] === 'again')!.image['format-specific'].data).toMatchObject({ 'payload-offset': offset, 'sector-size': sectorSize, 'cipher-alg': cipher.includes('cbc') ? 'aes-256' : `aes-${fmt.includes('256') ? 128 : 256}` });
  }, 120_000);
});
