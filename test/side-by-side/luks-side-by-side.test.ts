/**
 * The luks driver side by side with qemu-storage-daemon 7.2, each daemon on
 * its own copy of the same images (made by qemu-img and by cryptsetup):
 * blockdev-add's errors for a missing key-secret, a missing secret, a wrong
 * passphrase and an unknown cipher (the daemon stays up), the node's
 * query-named-block-nodes entry, and the same writes through NBD leaving
 * byte-identical files (same master key, deterministic sector encryption).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { run } from '../helpers/tools.ts';
import { qemuImgCreateLuks } from '../helpers/luks.ts';

const PASS = 'blockd luks test';
const IMAGES: { name: string; make: (file: string, pw: string) => void | Promise<void> }[] = [
  { name: 'qemu-xts', make: (f, pw) => qemuImgCreateLuks(f, pw, ['iter-time=10'], '8M') },
  { name: 'qemu-essiv', make: (f, pw) => qemuImgCreateLuks(f, pw, ['iter-time=10', 'cipher-alg=aes-128', 'cipher-mode=cbc', 'ivgen-alg=essiv', 'hash-alg=sha512'], '8M') },
  { name: 'qemu-cbc-plain64', make: (f, pw) => qemuImgCreateLuks(f, pw, ['iter-time=10', 'cipher-alg=aes-256', 'cipher-mode=cbc', 'ivgen-alg=plain64'], '8M') },
  {
    name: 'cryptsetup', make: (f, pw) => {
      run('truncate', ['-s', '10M', f]);
      run('cryptsetup', ['luksFormat', '--type', 'luks1', '-q', '--pbkdf-force-iterations', '1000', '--key-file', pw, f]);
    },
  },
];

describe('luks side by side with qemu-storage-daemon', () => {
  const dir = tempDir('blockd-luks-sbs-');
  const pw = join(dir, 'pw');
  const d: Record<'qsd' | 'blockd', { proc: Running; qmp: QmpClient; dir: string }> = {} as never;

  beforeAll(async () => {
    writeFileSync(pw, PASS);
    for (const img of IMAGES) {
      const f = join(dir, `${img.name}.img`);
      await img.make(f, pw);
      const opts = `driver=luks,key-secret=s,file.filename=${f}`;
      run('qemu-io', ['--object', `secret,id=s,file=${pw}`, '--image-opts', opts, '-c', 'write -P 0x5a 0 64k', '-c', 'write -P 0xa5 3M 1M']);
    }
    // A header naming a cipher nobody has.
    copyFileSync(join(dir, 'qemu-xts.img'), join(dir, 'foo.img'));
    const foo = readFileSync(join(dir, 'foo.img'));
    foo.fill(0, 8, 40).write('foo', 8, 'latin1');
    writeFileSync(join(dir, 'foo.img'), foo);
    for (const which of ['qsd', 'blockd'] as const) {
      const sub = join(dir, which);
      run('mkdir', ['-p', sub]);
      for (const img of [...IMAGES.map((i) => i.name), 'foo']) copyFileSync(join(dir, `${img}.img`), join(sub, `${img}.img`));
      const sock = join(sub, 'nbd.sock');
      const r = await qmpDaemon(which, sub, ['--object', `secret,id=s0,file=${pw}`, '--object', 'secret,id=wrong,data=nope', '--nbd-server', `addr.type=unix,addr.path=${sock}`]);
      d[which] = { proc: r.proc, qmp: r.qmp, dir: sub };
    }
  }, 120_000);

  afterAll(async () => {
    for (const x of Object.values(d)) { x.qmp.close(); await x.proc.stop(); }
    rmSync(dir, { recursive: true, force: true });
  });

  const both = async (f: (qmp: QmpClient, sub: string) => Promise<unknown>) =>
    Promise.all([f(d.qsd.qmp, d.qsd.dir), f(d.blockd.qmp, d.blockd.dir)]);
  const outcome = (p: Promise<unknown>) => p.then((r) => ({ return: r }), (e: Error) => ({ error: e.message }));

  it('blockdev-add errors: missing key-secret, missing secret, wrong passphrase, unknown cipher; the daemon stays up', async () => {
    const cases = [
      { file: 'qemu-xts.img', text: "Parameter 'key-secret' is required for cipher" },
      { file: 'qemu-xts.img', 'key-secret': 'nosuch', text: "No secret with id 'nosuch'" },
      { file: 'qemu-xts.img', 'key-secret': 'wrong', text: 'Invalid password, cannot unlock any keyslot' },
      { file: 'cryptsetup.img', 'key-secret': 'wrong', text: 'Invalid password, cannot unlock any keyslot' },
      { file: 'foo.img', 'key-secret': 's0', text: "Algorithm 'foo' with key size 32 bytes not supported" },
    ];
    for (const c of cases) {
      const [q, b] = await both((qmp, sub) => outcome(qmp.execute('blockdev-add', {
        driver: 'luks', 'node-name': 'bad', file: { driver: 'file', filename: join(sub, c.file) }, ...(c['key-secret'] ? { 'key-secret': c['key-secret'] } : {}),
      })));
      expect(q).toEqual({ error: `GenericError: ${c.text}` });
      expect(b).toEqual(q);
    }
    const [q, b] = await both((qmp) => qmp.execute('query-named-block-nodes'));
    expect(b).toEqual([]);
    expect(q).toEqual([]);
  });

  it('opens every image with the same query-named-block-nodes entry', async () => {
    for (const img of IMAGES) {
      await both((qmp, sub) => qmp.execute('blockdev-add', { driver: 'file', 'node-name': `f-${img.name}`, filename: join(sub, `${img.name}.img`) }));
      await both((qmp) => qmp.execute('blockdev-add', { driver: 'luks', 'node-name': img.name, file: `f-${img.name}`, 'key-secret': 's0' }));
    }
    const [q, b] = (await both((qmp) => qmp.execute('query-named-block-nodes'))) as Record<string, unknown>[][];
    const norm = (list: Record<string, unknown>[], sub: string) =>
      JSON.parse(JSON.stringify(list.filter((n) => !String(n['node-name']).startsWith('f-'))).replaceAll(sub, 'DIR')) as Record<string, unknown>[];
    const qn = norm(q, d.qsd.dir).sort((x, y) => String(x['node-name']).localeCompare(String(y['node-name'])));
    const bn = norm(b, d.blockd.dir).sort((x, y) => String(x['node-name']).localeCompare(String(y['node-name'])));
    expect(bn.map((n) => n['node-name'])).toEqual(IMAGES.map((i) => i.name).sort());
    expect((bn[0].image as Record<string, Record<string, unknown>>)['format-specific'].type).toBe('luks');
    expect(bn).toEqual(qn);
  });

  it('the same reads and writes through NBD give the same bytes and byte-identical image files', async () => {
    for (const img of IMAGES) {
      await both((qmp) => qmp.execute('block-export-add', { type: 'nbd', id: `e-${img.name}`, 'node-name': img.name, writable: true }));
    }
    const uri = (sub: string, name: string) => `nbd+unix:///${name}?socket=${join(sub, 'nbd.sock')}`;
    for (const img of IMAGES) {
      run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri(d.qsd.dir, img.name), uri(d.blockd.dir, img.name)]);
      for (const sub of [d.qsd.dir, d.blockd.dir]) {
        // Unaligned writes too: the block layer's read-modify-write over 512-byte sectors.
        run('qemu-io', ['-f', 'raw', uri(sub, img.name), '-c', 'write -P 0x11 1000 3000', '-c', 'write -P 0x22 2M 1536k', '-c', 'write -z 6M 64k', '-c', 'discard 3M 4096', '-c', 'flush']);
      }
      run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri(d.qsd.dir, img.name), uri(d.blockd.dir, img.name)]);
      expect(run('qemu-io', ['-f', 'raw', uri(d.blockd.dir, img.name), '-c', 'read -P 0x11 1000 3000', '-c', 'read -P 0x5a 4000 61536', '-c', 'read -P 0 6M 64k'])).not.toMatch(/Pattern verification failed/);
    }
    for (const img of IMAGES) await both((qmp) => qmp.execute('block-export-del', { id: `e-${img.name}` }));
    for (const img of IMAGES) {
      await both((qmp) => qmp.execute('blockdev-del', { 'node-name': img.name }));
      await both((qmp) => qmp.execute('blockdev-del', { 'node-name': `f-${img.name}` }));
      expect(readFileSync(join(d.blockd.dir, `${img.name}.img`)).equals(readFileSync(join(d.qsd.dir, `${img.name}.img`)))).toBe(true);
    }
  }, 120_000);
});
