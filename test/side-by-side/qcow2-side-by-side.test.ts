/**
 * qcow2 images made by qemu-img/qemu-io, exported by qemu-storage-daemon and
 * by blockd with the same arguments: the same bytes and the same block-status
 * maps (base:allocation and qemu:allocation-depth) over NBD.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';

interface Img { name: string; create: string[]; io?: string[]; backing?: string }

const IMAGES: Img[] = [
  { name: 'v2-64k', create: ['-o', 'compat=0.10'], io: ['write -P 1 0 100k', 'write -P 2 1M 64k'] },
  { name: 'v3-512', create: ['-o', 'cluster_size=512,refcount_bits=1'], io: ['write -P 3 1000 5000', 'write -z 8192 4096'] },
  { name: 'v3-2m', create: ['-o', 'cluster_size=2M,refcount_bits=64'], io: ['write -P 4 3M 1M', 'discard 3M 512k'] },
  { name: 'extl2', create: ['-o', 'extended_l2=on,cluster_size=64k'], io: ['write -P 5 4096 8192', 'write -z 1M 128k'] },
  { name: 'lazy', create: ['-o', 'lazy_refcounts=on'], io: ['write -P 6 0 1M', 'discard 256k 256k'] },
  { name: 'zstd', create: ['-o', 'compression_type=zstd'], io: ['write -c -P 7 0 64k', 'write -c -P 8 128k 64k'] },
  { name: 'zlib', create: [], io: ['write -c -P 9 0 64k', 'write -P 10 64k 64k'] },
  { name: 'base', create: [], io: ['write -P 11 0 2M'] },
  { name: 'mid', create: ['-F', 'qcow2'], backing: 'base', io: ['write -P 12 512k 512k'] },
  { name: 'top', create: ['-F', 'qcow2'], backing: 'mid', io: ['write -P 13 1M 64k', 'write -z 0 64k'] },
];
const EXPORTED = IMAGES.filter((i) => i.name !== 'base' && i.name !== 'mid');

function args(dir: string, sock: string): string[] {
  const out: string[] = [];
  for (const img of EXPORTED) {
    out.push('--blockdev', `driver=file,node-name=f-${img.name},filename=${join(dir, `${img.name}.qcow2`)},read-only=on`);
    out.push('--blockdev', `driver=qcow2,node-name=${img.name},file=f-${img.name},read-only=on`);
  }
  out.push('--nbd-server', `addr.type=unix,addr.path=${sock}`);
  for (const img of EXPORTED) out.push('--export', `type=nbd,id=e-${img.name},node-name=${img.name},allocation-depth=on`);
  return out;
}

describe('qcow2 side by side with qemu-storage-daemon', () => {
  const dir = tempDir();
  const qdir = join(dir, 'q');
  const bdir = join(dir, 'b');
  const daemons: Running[] = [];

  beforeAll(async () => {
    run('mkdir', ['-p', qdir, bdir]);
    for (const img of IMAGES) {
      const f = join(dir, `${img.name}.qcow2`);
      const backing = img.backing ? ['-b', `${img.backing}.qcow2`] : [];
      run('qemu-img', ['create', '-q', '-f', 'qcow2', ...img.create, ...backing, f, '4M']);
      for (const c of img.io ?? []) run('qemu-io', ['-f', 'qcow2', '-c', c, f]);
    }
    run('qemu-img', ['snapshot', '-c', 'snap1', join(dir, 'lazy.qcow2')]);
    // One copy per daemon; backing names are relative, so each copy's chain resolves in its own folder.
    for (const d of [qdir, bdir]) for (const img of IMAGES) copyFileSync(join(dir, `${img.name}.qcow2`), join(d, `${img.name}.qcow2`));
    daemons.push(await startDaemon('qsd', args(qdir, join(qdir, 's.sock')), join(qdir, 's.sock')));
    daemons.push(await startDaemon('blockd', args(bdir, join(bdir, 's.sock')), join(bdir, 's.sock')));
  }, 120_000);

  afterAll(async () => { for (const d of daemons) await d.stop(); });

  const uri = (d: string, name: string) => `nbd+unix:///${name}?socket=${join(d, 's.sock')}`;

  for (const img of EXPORTED) {
    it(`${img.name}: same bytes, same allocation map, same allocation depth`, () => {
      run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri(qdir, img.name), uri(bdir, img.name)]);
      expect(run('nbdinfo', ['--map', uri(bdir, img.name)])).toBe(run('nbdinfo', ['--map', uri(qdir, img.name)]));
      expect(run('nbdinfo', ['--map=qemu:allocation-depth', uri(bdir, img.name)]))
        .toBe(run('nbdinfo', ['--map=qemu:allocation-depth', uri(qdir, img.name)]));
    });
  }
});
