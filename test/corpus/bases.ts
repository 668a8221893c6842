/**
 * The valid qcow2 images the corrupted-image corpus is mutated from, made
 * with qemu-img and qemu-io at run time (nothing committed): several cluster
 * sizes, v2 and v3, extended L2, refcount widths, lazy refcounts, compressed
 * and zero clusters, an internal snapshot, a persistent bitmap, a backing file.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

export interface BaseImage { name: string; file: string }

const qemuImg = (args: string[]) => execFileSync('qemu-img', args, { stdio: ['ignore', 'ignore', 'pipe'] });
const qemuIo = (file: string, cmds: string[]) =>
  execFileSync('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file], { stdio: ['ignore', 'ignore', 'pipe'] });

const DATA = ['write -P 0x11 0 64k', 'write -P 0x22 1M 8k', 'write -P 0x33 2000k 100k', 'write -z 3M 64k', 'write -P 0x44 4092k 4k'];

export function makeBases(dir: string): { bases: BaseImage[]; backing: string } {
  const backing = join(dir, 'backing.raw');
  qemuImg(['create', '-q', '-f', 'raw', backing, '4M']);
  execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 4M', backing], { stdio: 'ignore' });
  const specs: { name: string; opts: string; extra?: ((file: string) => string[])[]; io?: string[] }[] = [
    { name: 'c64k', opts: 'cluster_size=65536', io: [...DATA, 'write -c -P 0x66 192k 64k'] },
    { name: 'c512', opts: 'cluster_size=512', io: DATA },
    { name: 'c2m', opts: 'cluster_size=2097152', io: DATA },
    { name: 'v2', opts: 'compat=0.10,cluster_size=4096', io: DATA },
    { name: 'extl2', opts: 'extended_l2=on,cluster_size=65536', io: [...DATA, 'write -P 0x77 8k 4k'] },
    { name: 'ref1', opts: 'refcount_bits=1,cluster_size=4096', io: DATA },
    { name: 'ref64', opts: 'refcount_bits=64,cluster_size=16384', io: DATA },
    { name: 'lazy', opts: 'lazy_refcounts=on', io: DATA },
    { name: 'snap', opts: 'cluster_size=8192', io: DATA, extra: [(f) => ['snapshot', '-c', 's1', f], (f) => ['snapshot', '-c', 's2', f]] },
    { name: 'bitmap', opts: 'cluster_size=65536', io: DATA, extra: [(f) => ['bitmap', '--add', f, 'b0'], (f) => ['bitmap', '--add', '-g', '4096', f, 'b1']] },
    { name: 'overlay', opts: `cluster_size=65536,backing_file=${backing},backing_fmt=raw`, io: ['write -P 0x99 64k 64k', 'write -z 1M 64k'] },
  ];
  const bases: BaseImage[] = [];
  for (const s of specs) {
    const file = join(dir, `base-${s.name}.qcow2`);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', s.opts, file, '4M']);
    if (s.name === 'snap') {
      qemuIo(file, DATA.slice(0, 2));
      for (const e of s.extra ?? []) qemuImg(e(file));
      qemuIo(file, DATA.slice(2));
    } else {
      for (const e of s.extra ?? []) qemuImg(e(file));
      qemuIo(file, s.io ?? []);
    }
    bases.push({ name: s.name, file });
  }
  return { bases, backing };
}
