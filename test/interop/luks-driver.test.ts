/**
 * The luks driver with real clients: images made by `qemu-img create -f luks`
 * and by `cryptsetup luksFormat --type luks1` are read and written through
 * blockd's NBD export (qemu-io over NBD, large and unaligned requests), then
 * checked with qemu-io opening the image itself (--object secret
 * --image-opts) and with cryptsetup (the header and key slot untouched). A
 * wrong passphrase on the command line fails as qsd's does.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { BLOCKD, startDaemon, tempDir } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';
import { qemuImgCreateLuks } from '../helpers/luks.ts';

const dir = tempDir('blockd-luks-drv-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const pw = join(dir, 'pw');
writeFileSync(pw, 'p\u00e4ssw\u00f6rd');

const images: [string, (f: string) => void | Promise<void>][] = [
  ['qemu-img', (f) => qemuImgCreateLuks(f, pw, ['iter-time=10'], '32M')],
  ['cryptsetup', (f) => {
    run('truncate', ['-s', '34M', f]);
    run('cryptsetup', ['luksFormat', '--type', 'luks1', '-q', '--pbkdf-force-iterations', '1000', '--key-file', pw, f]);
  }],
];

describe('luks images through blockd', () => {
  it.each(images)('%s image: written through blockd, read back by qemu-io and still unlocked by cryptsetup', async (name, make) => {
    const img = join(dir, `${name}.img`);
    await make(img);
    const secret = ['--object', `secret,id=s,file=${pw}`];
    const imageOpts = `driver=luks,key-secret=s,file.filename=${img}`;
    run('qemu-io', [...secret, '--image-opts', imageOpts, '-c', 'write -P 0x61 0 1M', '-c', 'write -P 0x62 31M 1M']);
    const sock = join(dir, `${name}.sock`);
    const blockd = await startDaemon('blockd', [...secret, '--blockdev', `driver=file,node-name=f,filename=${img}`, '--blockdev', 'driver=luks,node-name=disk,file=f,key-secret=s',
      '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e,node-name=disk,writable=on'], sock);
    try {
      const uri = `nbd+unix:///disk?socket=${sock}`;
      expect(run('qemu-img', ['info', '--output=json', '-f', 'raw', uri])).toMatch(/"virtual-size": 33554432/);
      // (Never-written sectors decrypt to noise: a new volume's payload is not encrypted zeroes.)
      const read = run('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0x61 0 1M', '-c', 'read -P 0x62 31M 1M']);
      expect(read).not.toMatch(/verification failed|error/i);
      // A 4 MiB write (split into 1 MiB encrypted runs), unaligned writes, write-zeroes.
      run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x71 2M 4M', '-c', 'write -P 0x72 511 1025', '-c', 'write -P 0x73 20M 3', '-c', 'write -z 31M 64k', '-c', 'flush']);
    } finally {
      expect(await blockd.stop()).toBe(0);
    }
    const check = run('qemu-io', [...secret, '--image-opts', imageOpts, '-r',
      '-c', 'read -P 0x61 0 511', '-c', 'read -P 0x72 511 1025', '-c', 'read -P 0x61 1536 1047040', '-c', 'read -P 0x71 2M 4M',
      '-c', 'read -P 0x73 20M 3', '-c', 'read -P 0 31M 64k', '-c', 'read -P 0x62 31808k 960k']);
    expect(check).not.toMatch(/verification failed|error/i);
    expect(check.match(/^read /gm)).toHaveLength(7);
    run('cryptsetup', ['open', '--test-passphrase', '--key-file', pw, img]);
  }, 120_000);

  it('a wrong passphrase, a missing key-secret and a missing secret end the start-up with qsd\'s messages', () => {
    const img = join(dir, 'qemu-img.img');
    for (const [extra, text] of [
      [['--object', 'secret,id=s,data=wrong'], 'Invalid password, cannot unlock any keyslot'],
      [[], "Parameter 'key-secret' is required for cipher"],
      [['--object', 'secret,id=t,data=x'], "No secret with id 's'"],
    ] as const) {
      const spec = `driver=luks,node-name=disk,file.driver=file,file.filename=${img}${text.startsWith('Parameter') ? '' : ',key-secret=s'}`;
      const r = spawnSync(BLOCKD, [...extra, '--blockdev', spec], { encoding: 'utf8', timeout: 30_000 });
      expect(r.status).toBe(1);
      expect(r.stderr.trim()).toBe(`blockd: --blockdev ${spec}: ${text}`);
    }
  });
});
