/**
 * Real NBD clients against a running blockd (bin/blockd as a process): nbdinfo,
 * nbdcopy, qemu-img, qemu-io, nbd-client -l, and an ext4 filesystem through nbdfuse.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync, mkdirSync, existsSync, truncateSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { run, tryRun, requireTool } from '../helpers/tools.ts';
import { getPort } from '../helpers/port.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('real clients against blockd', () => {
  let dir: string;
  let daemon: Running;
  let sock: string;
  let port: number;
  let unix: (name: string) => string;
  let tcp: (name: string) => string;
  const seed = randomBytes(4 << 20);

  beforeAll(async () => {
    dir = tempDir();
    sock = join(dir, 'nbd.sock');
    port = await getPort();
    writeFileSync(join(dir, 'seed.img'), seed);
    truncateSync(join(dir, 'seed.img'), 64 << 20);
    writeFileSync(join(dir, 'scratch.img'), Buffer.alloc(0));
    truncateSync(join(dir, 'scratch.img'), 64 << 20);
    writeFileSync(join(dir, 'fs.img'), Buffer.alloc(0));
    truncateSync(join(dir, 'fs.img'), 128 << 20);
    daemon = await startDaemon('blockd', [
      '--blockdev', `driver=file,node-name=seedf,filename=${join(dir, 'seed.img')}`,
      '--blockdev', 'driver=raw,node-name=seed,file=seedf',
      '--blockdev', `driver=file,node-name=scratchf,filename=${join(dir, 'scratch.img')},discard=unmap`,
      '--blockdev', 'driver=raw,node-name=scratch,file=scratchf,discard=unmap',
      '--blockdev', `driver=file,node-name=fsf,filename=${join(dir, 'fs.img')}`,
      '--blockdev', 'driver=raw,node-name=fs,file=fsf',
      '--nbd-server', `addr.type=unix,addr.path=${sock}`,
      '--nbd-server', `addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`,
      '--export', 'type=nbd,id=e-seed,node-name=seed,description=the seed image',
      '--export', 'type=nbd,id=e-scratch,node-name=scratch,writable=on',
      '--export', 'type=nbd,id=e-fs,node-name=fs,writable=on',
    ], sock);
    unix = (name) => `nbd+unix:///${name}?socket=${sock}`;
    tcp = (name) => `nbd://127.0.0.1:${port}/${name}`;
  }, 60_000);

  afterAll(async () => {
    const code = await daemon?.stop();
    expect(code).toBe(0);
  });

  it('nbdinfo shows the export, its description, flags and block sizes', () => {
    const info = JSON.parse(run('nbdinfo', ['--json', unix('seed')]));
    const e = info.exports[0];
    expect(e['export-name']).toBe('seed');
    expect(e.description).toBe('the seed image');
    expect(e['export-size']).toBe(64 << 20);
    expect(e.is_read_only).toBe(true);
    expect(e.block_size_minimum).toBe(1);
    expect(e.block_size_preferred).toBe(4096);
    expect(e.block_size_maximum).toBe(32 << 20);
    expect(e.contexts).toContain('base:allocation');
    const w = JSON.parse(run('nbdinfo', ['--json', tcp('scratch')])).exports[0];
    expect(w.is_read_only).toBe(false);
    expect(w.can_multi_conn).toBe(true);
    expect(w.can_trim).toBe(true);
    expect(w.can_zero).toBe(true);
  });

  it('nbdinfo --list lists every export', () => {
    const list = JSON.parse(run('nbdinfo', ['--list', '--json', `nbd+unix://?socket=${sock}`]));
    expect(list.exports.map((x: { 'export-name': string }) => x['export-name']).sort()).toEqual(['fs', 'scratch', 'seed']);
  });

  it('nbdinfo --map sees the hole after the data', () => {
    const map = JSON.parse(run('nbdinfo', ['--map', '--json', unix('seed')]));
    const data = map.filter((m: { type: number }) => (m.type & 1) === 0).reduce((a: number, m: { length: number }) => a + m.length, 0);
    expect(data).toBeGreaterThanOrEqual(4 << 20);
    expect(data).toBeLessThan(64 << 20);
    const last = map[map.length - 1];
    expect(last.type & 1).toBe(1);
  });

  it('nbdcopy copies out and back in, byte for byte', () => {
    const out = join(dir, 'copy.raw');
    run('nbdcopy', [unix('seed'), out]);
    const copied = readFileSync(out);
    expect(copied.length).toBe(64 << 20);
    expect(sha(copied.subarray(0, seed.length))).toBe(sha(seed));
    run('nbdcopy', [out, tcp('scratch')]);
    const back = join(dir, 'back.raw');
    run('nbdcopy', [tcp('scratch'), back]);
    expect(sha(readFileSync(back))).toBe(sha(copied));
  });

  it('qemu-img info, convert and compare work on nbd:// and nbd+unix://', () => {
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', tcp('seed')]));
    expect(info['virtual-size']).toBe(64 << 20);
    const q = join(dir, 'conv.qcow2');
    run('qemu-img', ['convert', '-O', 'qcow2', unix('seed'), q]);
    run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', unix('seed'), q]);
    run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', tcp('seed'), join(dir, 'seed.img')]);
  });

  it('qemu-io writes and reads patterns, and read-only exports refuse writes', () => {
    const out = run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1000 70000', '-c', 'read -P 0x5a 1000 70000', '-c', 'write -z 65536 65536', '-c', 'read -P 0 65536 65536', '-c', 'discard 0 4096', '-c', 'flush', unix('scratch')]);
    expect(out).not.toMatch(/fail|error|Pattern verification/i);
    const r = tryRun('qemu-io', ['-f', 'raw', '-c', 'write 0 512', tcp('seed')]);
    expect(r.stdout + r.stderr).toMatch(/Operation not permitted|read-only|Permission denied/i);
  });

  it('nbd-client -l lists the exports', () => {
    const out = run('nbd-client', ['-l', '127.0.0.1', String(port)]);
    expect(out).toMatch(/seed/);
    expect(out).toMatch(/scratch/);
  });

  it('an ext4 filesystem made and used through nbdfuse and a loop device passes fsck', async () => {
    requireTool('nbdfuse'); requireTool('mkfs.ext4'); requireTool('losetup'); requireTool('fsck.ext4');
    const mnt = join(dir, 'fuse');
    const fsmnt = join(dir, 'mnt');
    mkdirSync(mnt); mkdirSync(fsmnt);
    const fuse = spawn('nbdfuse', [mnt, unix('fs')], { stdio: 'ignore' });
    try {
      const file = join(mnt, 'nbd');
      for (let i = 0; i < 100 && !existsSync(file); i++) await new Promise((r) => setTimeout(r, 100));
      expect(existsSync(file)).toBe(true);
      const loop = run('losetup', ['--find', '--show', '--direct-io=off', file]).trim();
      try {
        run('mkfs.ext4', ['-q', '-F', loop]);
        run('mount', [loop, fsmnt]);
        try {
          for (let i = 0; i < 20; i++) writeFileSync(join(fsmnt, `f${i}`), randomBytes(100_000 + i));
          writeFileSync(join(fsmnt, 'big'), seed);
          run('sync', []);
          expect(sha(readFileSync(join(fsmnt, 'big')))).toBe(sha(seed));
        } finally {
          run('umount', [fsmnt]);
        }
        run('fsck.ext4', ['-fn', loop]);
      } finally {
        run('losetup', ['-d', loop]);
      }
    } finally {
      run('fusermount3', ['-u', mnt]);
      fuse.kill();
    }
  }, 120_000);
});
