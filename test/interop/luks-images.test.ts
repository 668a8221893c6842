/**
 * LUKS1 headers made by the real tools: `qemu-img create -f luks` and
 * `cryptsetup luksFormat --type luks1` (on an image file; no device-mapper
 * needed). blockd's parser accepts them and its unlock yields the volume key
 * cryptsetup dumps.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { qemuImgCreateLuks } from '../helpers/luks.ts';
import { tempDir } from '../helpers/daemons.ts';
import { parseLuks1Header } from '../../src/crypto/luks1-header.ts';
import { parseCipherSpec } from '../../src/crypto/cipher-spec.ts';
import { findKey } from '../../src/crypto/luks1-keyslot.ts';

const dir = tempDir('blockd-luks-img-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The volume key as `cryptsetup luksDump --dump-volume-key` prints it. */
function dumpedVolumeKey(image: string, keyFile: string): Buffer {
  const out = run('cryptsetup', ['luksDump', '--dump-volume-key', '-q', '--key-file', keyFile, image]);
  const m = /MK dump:\s*([\s0-9a-f]+)/.exec(out);
  if (!m) throw new Error(`no MK dump in: ${out}`);
  return Buffer.from(m[1].replace(/\s+/g, ''), 'hex');
}

async function unlock(image: string, password: string) {
  const h = parseLuks1Header(readFileSync(image).subarray(0, 592));
  const spec = parseCipherSpec(h.cipherName, h.cipherMode, h.hashSpec, h.masterKeyLen);
  const fh = await open(image, 'r');
  try {
    return { header: h, ...(await findKey(h, spec, Buffer.from(password), async (offset, length) => {
      const b = Buffer.alloc(length);
      await fh.read(b, 0, length, offset);
      return b;
    })) };
  } finally {
    await fh.close();
  }
}

describe('LUKS1 images made by the real tools', () => {
  const keyFile = join(dir, 'pw');
  writeFileSync(keyFile, 'correct horse');

  it.each([
    ['qemu-img default (aes-256-xts-plain64, sha256)', []],
    ['qemu-img aes-128 cbc essiv sha512', ['cipher-alg=aes-128', 'cipher-mode=cbc', 'ivgen-alg=essiv', 'hash-alg=sha512']],
  ])('%s', async (_name, opts) => {
    const image = join(dir, `q${opts.length}.img`);
    await qemuImgCreateLuks(image, keyFile, ['iter-time=10', ...opts], '1M');
    const { key, slot, header } = await unlock(image, 'correct horse');
    expect(slot).toBe(0);
    expect(header.payloadOffsetSector).toBe(opts.length ? 1032 : 4040);
    expect(key.equals(dumpedVolumeKey(image, keyFile))).toBe(true);
    await expect(unlock(image, 'wrong')).rejects.toThrow('Invalid password, cannot unlock any keyslot');
  });

  it.each([
    ['cryptsetup default luks1 (aes-xts-plain64, sha256)', []],
    ['cryptsetup aes-cbc-essiv:sha256, sha512, 256-bit key, slot 3', ['--cipher', 'aes-cbc-essiv:sha256', '--key-size', '256', '--hash', 'sha512', '--key-slot', '3']],
  ])('%s', async (_name, opts) => {
    const image = join(dir, `c${opts.length}.img`);
    writeFileSync(image, Buffer.alloc(0));
    run('truncate', ['-s', '16M', image]);
    run('cryptsetup', ['luksFormat', '--type', 'luks1', '-q', '--pbkdf-force-iterations', '1000', '--key-file', keyFile, ...opts, image]);
    const { key, slot, header } = await unlock(image, 'correct horse');
    expect(slot).toBe(opts.length ? 3 : 0);
    expect(header.payloadOffsetSector).toBe(4096);
    expect(key.equals(dumpedVolumeKey(image, keyFile))).toBe(true);
  });
});
