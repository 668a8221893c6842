/**
 * Image locks as other processes see them: for the same command line, the
 * lock bytes blockd and qemu-storage-daemon 7.2 hold on each image file
 * (/proc/locks) are the same. They follow the users of each node: a format
 * node keeps others from writing or resizing its file, read-only or not; a
 * backing file is held for consistent reads; an export adds what it uses.
 */
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { requireTool, run } from '../helpers/tools.ts';

/** The bytes (100.. perm, 200.. unshared) OFD-locked on `file` by anyone. */
function lockBytes(file: string): number[] {
  const ino = statSync(file).ino;
  const bytes = new Set<number>();
  for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'OFDLCK' || Number(f[5]?.split(':')[2]) !== ino) continue;
    for (let b = Number(f[6]); b <= Number(f[7]); b++) bytes.add(b);
  }
  return [...bytes].sort((a, b) => a - b);
}

async function locksUnder(who: 'qsd' | 'blockd', args: string[], files: string[], dir: string): Promise<Record<string, number[]>> {
  const pid = join(dir, `${who}.pid`);
  const proc = spawn(who === 'qsd' ? requireTool('qemu-storage-daemon') : BLOCKD, [...args, '--pidfile', pid], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  try {
    for (let i = 0; i < 200 && !existsSync(pid); i++) {
      if (proc.exitCode !== null) throw new Error(`${who} exited: ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return Object.fromEntries(files.map((f) => [f.split('/').pop()!, lockBytes(f)]));
  } finally {
    proc.kill('SIGTERM');
    await exited;
  }
}

describe('image locks, blockd and qsd side by side', () => {
  const dir = tempDir('blockd-locks-');
  const base = join(dir, 'base.qcow2');
  const top = join(dir, 'top.qcow2');
  const raw = join(dir, 'r.raw');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '4M']);
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  run('qemu-img', ['create', '-q', '-f', 'raw', raw, '4M']);
  const nbd = (node: string, writable: boolean) => [
    '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`, '--export', `type=nbd,id=e,node-name=${node},writable=${writable ? 'on' : 'off'}`,
  ];
  const cases: [string, string[], number[][]][] = [
    ['a writable qcow2 with its backing file', ['--blockdev', `driver=file,node-name=f,filename=${top}`, '--blockdev', 'driver=qcow2,node-name=q,file=f'],
      [[100, 101, 103, 201, 203], [100, 201, 203]]],
    ['a read-only qcow2', ['--blockdev', `driver=file,node-name=f,filename=${top},read-only=on`, '--blockdev', 'driver=qcow2,node-name=q,file=f,read-only=on'],
      [[100, 201, 203], [100, 201, 203]]],
    ['a writable qcow2 export', ['--blockdev', `driver=file,node-name=f,filename=${top}`, '--blockdev', 'driver=qcow2,node-name=q,file=f', ...nbd('q', true)],
      [[100, 101, 103, 201, 203], [100, 201, 203]]],
    ['a writable raw export', ['--blockdev', `driver=file,node-name=f,filename=${raw}`, '--blockdev', 'driver=raw,node-name=r,file=f', ...nbd('r', true)],
      [[100, 101, 203]]],
    ['a read-only export of a file node', ['--blockdev', `driver=file,node-name=f,filename=${raw}`, ...nbd('f', false)],
      [[100, 203]]],
  ];
  for (const [what, args, expected] of cases) {
    it(what, async () => {
      const files = expected.length === 2 ? [top, base] : [raw];
      const qsd = await locksUnder('qsd', args, files, dir);
      const blockd = await locksUnder('blockd', args, files, dir);
      expect(blockd).toEqual(qsd);
      expect(Object.values(blockd)).toEqual(expected);
    });
  }
});
