/**
 * blockd's FUSE export with real programs on the mounted file: qemu-img,
 * dd and cmp, fio (psync and libaio, verify=crc32c), a loop device with
 * ext4 and 300 files checked by fsck, truncate with growable, fallocate
 * punch-hole and zero-range, SEEK_DATA/SEEK_HOLE and cp --sparse=always;
 * block-export-del, shutdown and SIGKILL (a stale mount cleaned at the
 * next start). Every mount is removed in afterEach, also on failure.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { existsSync, readFileSync, statSync, writeFileSync, mkdirSync, openSync, closeSync, readSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { tempDir } from '../helpers/temp.ts';
import { run } from '../helpers/tools.ts';
import { httpGetUnix, parsePrometheusText, sampleValue } from '../helpers/prometheus.ts';
import { commandWithEvents, mountpointFile, mountsUnder, runAsync, runOk, startWithQmp, unmountAll, type FuseDaemon } from '../helpers/fuse.ts';

const MiB = 1024 * 1024;
let daemons: FuseDaemon[] = [];
let dirs: string[] = [];

afterEach(async () => {
  for (const d of daemons) await d.stop().catch(() => undefined);
  daemons = [];
  for (const dir of dirs) unmountAll(dir);
  dirs = [];
});

function scratch(): string {
  const dir = tempDir('blockd-fuse-');
  dirs.push(dir);
  return dir;
}

async function blockd(dir: string, args: string[]): Promise<FuseDaemon> {
  const d = await startWithQmp('blockd', dir, args);
  daemons.push(d);
  return d;
}

function rawFile(dir: string, size: number, name = 'disk.img'): string {
  const p = join(dir, name);
  run('qemu-img', ['create', '-q', '-f', 'raw', p, String(size)]);
  return p;
}

function fileNode(img: string, extra = ''): string[] {
  return ['--blockdev', `driver=file,node-name=f0,filename=${img}${extra}`];
}

function fuseExport(mnt: string, opts = 'writable=on'): string[] {
  return ['--export', `type=fuse,id=e0,node-name=f0,mountpoint=${mnt}${opts ? ',' + opts : ''}`];
}

describe('FUSE export: real programs on the file', () => {
  it('qemu-img info/convert/compare, dd and cmp', async () => {
    const dir = scratch();
    const img = rawFile(dir, 16 * MiB);
    const mnt = mountpointFile(dir);
    // discard=unmap: qemu-img zeroes the target with fallocate(PUNCH_HOLE), which
    // (as in qsd) discards only on a node that passes discards down.
    await blockd(dir, [...fileNode(img, ',discard=unmap'), ...fuseExport(mnt)]);
    expect(statSync(mnt).size).toBe(16 * MiB);
    const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', '-f', 'raw', mnt]));
    expect(info['virtual-size']).toBe(16 * MiB);

    const src = join(dir, 'src.bin');
    writeFileSync(src, randomBytes(5 * MiB + 4096));
    await runOk('dd', [`if=${src}`, `of=${mnt}`, 'bs=1M', 'seek=3', 'oflag=seek_bytes', 'conv=notrunc,fsync', 'status=none']);
    await runOk('cmp', ['-n', String(5 * MiB + 4096), src, mnt, '0', String(3)]);
    // The data reached the image file itself.
    await runOk('cmp', ['-n', String(5 * MiB + 4096), src, img, '0', String(3)]);

    // A qcow2 image converted into the file, compared back through it.
    const q = join(dir, 'src.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', q, String(16 * MiB)]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1M 2M', '-c', 'write -P 0xa5 9M 512k', q]);
    await runOk('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', q, mnt]);
    await runOk('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', q, mnt]);
    await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', mnt, q]);
  });

  it('serves a qcow2 node: what is written through the file is in the image', async () => {
    const dir = scratch();
    const q = join(dir, 'disk.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', q, String(32 * MiB)]);
    const mnt = mountpointFile(dir);
    const d = await blockd(dir, ['--blockdev', `driver=file,node-name=p0,filename=${q}`, '--blockdev', 'driver=qcow2,node-name=f0,file=p0', ...fuseExport(mnt)]);
    const src = join(dir, 'src.bin');
    writeFileSync(src, randomBytes(7 * MiB));
    await runOk('dd', [`if=${src}`, `of=${mnt}`, 'bs=64k', 'seek=1', 'conv=notrunc,fsync', 'status=none']);
    await d.stop();
    daemons = [];
    expect(mountsUnder(dir)).toEqual([]);
    const out = join(dir, 'out.raw');
    run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', q, out]);
    await runOk('cmp', ['-n', String(7 * MiB), src, out, '0', String(65536)]);
  });

  it('fio psync and libaio with verify=crc32c', async () => {
    const dir = scratch();
    const img = rawFile(dir, 32 * MiB);
    const mnt = mountpointFile(dir);
    const metrics = join(dir, 'metrics.sock');
    await blockd(dir, [...fileNode(img), ...fuseExport(mnt), '--metrics', `addr.type=unix,addr.path=${metrics}`]);
    for (const [engine, depth, direct] of [['psync', '1', '0'], ['libaio', '16', '1']]) {
      const out = await runOk('fio', ['--name=v', `--filename=${mnt}`, `--ioengine=${engine}`, `--iodepth=${depth}`, `--direct=${direct}`,
        '--rw=randwrite', '--bs=4k', '--size=8M', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0', '--output-format=json'], { timeout: 120_000 });
      const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
      expect(job.error, engine).toBe(0);
      expect(job.write.io_bytes, engine).toBe(8 * MiB);
      expect(job.read.io_bytes, engine).toBe(8 * MiB);
    }
    // The export's counters (/metrics) saw the writes (all of them reach the file) and at least the direct reads.
    const m = parsePrometheusText((await httpGetUnix(metrics, '/metrics')).body);
    expect(sampleValue(m, 'blockd_export_bytes_total', 'blockd_export_bytes_total', { export: 'e0', op: 'write' })).toBeGreaterThanOrEqual(16 * MiB);
    expect(sampleValue(m, 'blockd_export_bytes_total', 'blockd_export_bytes_total', { export: 'e0', op: 'read' })).toBeGreaterThanOrEqual(8 * MiB);
    expect(sampleValue(m, 'blockd_export_errors_total', 'blockd_export_errors_total', { export: 'e0', op: 'write' })).toBe(0);
  });

  it('losetup + mkfs.ext4 + mount + 300 files + fsck.ext4 -fn', async () => {
    const dir = scratch();
    const img = rawFile(dir, 64 * MiB);
    const mnt = mountpointFile(dir);
    await blockd(dir, [...fileNode(img), ...fuseExport(mnt)]);
    const loop = (await runOk('losetup', ['--find', '--show', mnt])).trim();
    const fsdir = join(dir, 'fs');
    mkdirSync(fsdir);
    try {
      await runOk('mkfs.ext4', ['-q', '-F', loop]);
      await runOk('mount', [loop, fsdir]);
      try {
        for (let i = 0; i < 300; i++) writeFileSync(join(fsdir, `f${i}`), `file ${i}\n`.repeat(i + 1));
        await runOk('sync', []);
      } finally {
        await runOk('umount', [fsdir]);
      }
      const r = await runAsync('fsck.ext4', ['-fn', loop]);
      expect(r.status, r.stdout + r.stderr).toBe(0);
      await runOk('mount', ['-o', 'ro', loop, fsdir]);
      try {
        expect(readFileSync(join(fsdir, 'f299'), 'utf8')).toBe('file 299\n'.repeat(300));
      } finally {
        await runOk('umount', [fsdir]);
      }
    } finally {
      await runAsync('losetup', ['-d', loop]);
    }
  });

  it('truncate and writes past EOF grow a growable export; without growable, writes stop at EOF', async () => {
    const dir = scratch();
    const img = rawFile(dir, 1 * MiB);
    const img2 = rawFile(dir, 1 * MiB, 'fixed.img');
    const mnt = mountpointFile(dir);
    const mnt2 = mountpointFile(dir, 'mnt2');
    await blockd(dir, [...fileNode(img), ...fuseExport(mnt, 'writable=on,growable=on'),
      '--blockdev', `driver=file,node-name=f1,filename=${img2}`, '--export', `type=fuse,id=e1,node-name=f1,mountpoint=${mnt2},writable=on`]);
    await runOk('truncate', ['-s', String(3 * MiB), mnt]);
    expect(statSync(mnt).size).toBe(3 * MiB);
    expect(statSync(img).size).toBe(3 * MiB);
    await runOk('dd', ['if=/dev/urandom', `of=${mnt}`, 'bs=64k', 'count=2', `seek=${(4 * MiB) / 65536}`, 'conv=notrunc', 'status=none']);
    expect(statSync(img).size).toBe(4 * MiB + 128 * 1024);
    // Not growable: a write at EOF is short (dd reports the error), the size stays.
    const r = await runAsync('dd', ['if=/dev/zero', `of=${mnt2}`, 'bs=64k', 'count=1', `seek=${MiB / 65536}`, 'conv=notrunc', 'status=none']);
    expect(r.status).not.toBe(0);
    expect(statSync(img2).size).toBe(MiB);
    // Writable exports may still be truncated (qsd takes the resize permission for them).
    await runOk('truncate', ['-s', String(2 * MiB), mnt2]);
    expect(statSync(img2).size).toBe(2 * MiB);
  });

  it('fallocate -p and -z zero the range; SEEK_DATA/SEEK_HOLE follow block status; cp --sparse=always keeps the holes', async () => {
    const dir = scratch();
    const img = rawFile(dir, 8 * MiB);
    const mnt = mountpointFile(dir);
    await blockd(dir, [...fileNode(img, ',discard=unmap'), ...fuseExport(mnt)]);
    await runOk('dd', ['if=/dev/urandom', `of=${mnt}`, 'bs=1M', 'count=8', 'conv=notrunc,fsync', 'status=none']);
    await runOk('fallocate', ['-p', '-o', String(1 * MiB), '-l', String(1 * MiB), mnt]);
    await runOk('fallocate', ['-z', '-o', String(4 * MiB), '-l', String(1 * MiB), mnt]);
    const data = readWhole(mnt);
    expect(data.subarray(MiB, 2 * MiB).equals(Buffer.alloc(MiB))).toBe(true);
    expect(data.subarray(4 * MiB, 5 * MiB).equals(Buffer.alloc(MiB))).toBe(true);
    expect(data.subarray(2 * MiB, 3 * MiB).equals(Buffer.alloc(MiB))).toBe(false);
    // The punched range is a hole in the image file, and lseek sees it through the export.
    const seeks = (await runOk('/usr/bin/python3', ['-c', `
import os
fd = os.open(${JSON.stringify(mnt)}, os.O_RDONLY)
print(os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, ${MiB}, os.SEEK_DATA), os.lseek(fd, ${8 * MiB - 1}, os.SEEK_HOLE))
try:
    os.lseek(fd, ${8 * MiB}, os.SEEK_DATA); print('no ENXIO')
except OSError as e:
    print(e.strerror)
`])).trim().split('\n');
    expect(seeks[0]).toBe(`${MiB} ${2 * MiB} ${8 * MiB}`);
    expect(seeks[1]).toBe('No such device or address');
    // cp --sparse=always writes no block for the hole; the copy is the same.
    const copy = join(dir, 'copy.img');
    await runOk('cp', ['--sparse=always', mnt, copy]);
    await runOk('cmp', [mnt, copy]);
    expect(statSync(copy).blocks * 512).toBeLessThanOrEqual(6 * MiB);
  });
});

function readWhole(p: string): Buffer {
  const fd = openSync(p, 'r');
  try {
    const size = statSync(p).size;
    const b = Buffer.alloc(size);
    let off = 0;
    while (off < size) off += readSync(fd, b, off, size - off, off);
    return b;
  } finally {
    closeSync(fd);
  }
}

describe('FUSE export: writes are block requests', () => {
  it('a dirty bitmap on the node records what is written through the file; a throttle group paces it', async () => {
    const dir = scratch();
    const img = rawFile(dir, 8 * MiB);
    const mnt = mountpointFile(dir);
    const d = await blockd(dir, [...fileNode(img),
      '--object', 'throttle-group,id=tg0,x-bps-write=4194304',
      '--blockdev', 'driver=throttle,node-name=t0,throttle-group=tg0,file=f0',
      '--export', `type=fuse,id=e0,node-name=t0,mountpoint=${mnt},writable=on`]);
    expect(await d.qmp.command('block-dirty-bitmap-add', { node: 'f0', name: 'b0', granularity: 65536 })).toEqual({ return: {} });
    const t0 = Date.now();
    // 6 MiB at 4 MiB/s: the throttle filter must hold the writes back (its first second is a burst).
    await runOk('dd', ['if=/dev/zero', `of=${mnt}`, 'bs=64k', 'count=96', 'seek=16', 'conv=notrunc,fsync', 'status=none']);
    expect(Date.now() - t0).toBeGreaterThan(400);
    const nodes = (await d.qmp.command('query-named-block-nodes', { flat: true })).return as { 'node-name': string; 'dirty-bitmaps'?: { name: string; count: number }[] }[];
    const bm = nodes.find((n) => n['node-name'] === 'f0')!['dirty-bitmaps']!.find((b) => b.name === 'b0')!;
    expect(bm.count).toBe(96 * 65536);
  });
});

describe('FUSE export: life', () => {
  it('block-export-del unmounts (BLOCK_EXPORT_DELETED), shutdown unmounts, a stale mount after SIGKILL is cleaned at the next start', async () => {
    const dir = scratch();
    const img = rawFile(dir, 4 * MiB);
    const mnt = mountpointFile(dir);
    const d = await blockd(dir, [...fileNode(img)]);
    expect(await d.qmp.command('block-export-add', { type: 'fuse', id: 'e0', 'node-name': 'f0', mountpoint: mnt, writable: true })).toEqual({ return: {} });
    expect(mountsUnder(dir)).toEqual([mnt]);
    expect(statSync(mnt).size).toBe(4 * MiB);
    expect(await d.qmp.command('query-block-exports')).toEqual({ return: [{ type: 'fuse', id: 'e0', 'node-name': 'f0', 'shutting-down': false }] });
    expect(await commandWithEvents(d.qmp, 'block-export-del', { id: 'e0' })).toEqual([{ event: 'BLOCK_EXPORT_DELETED', data: { id: 'e0' } }, { return: {} }]);
    expect(mountsUnder(dir)).toEqual([]);
    expect(statSync(mnt).size).toBe(0);
    // Again, then SIGTERM: the mount goes with the daemon.
    expect(await d.qmp.command('block-export-add', { type: 'fuse', id: 'e1', 'node-name': 'f0', mountpoint: mnt })).toEqual({ return: {} });
    expect(mountsUnder(dir)).toEqual([mnt]);
    await d.stop('SIGTERM');
    daemons = [];
    expect(mountsUnder(dir)).toEqual([]);

    // SIGKILL leaves a dead mount: every call on it fails with ENOTCONN.
    const k = await blockd(dir, [...fileNode(img), ...fuseExport(mnt)]);
    await k.stop('SIGKILL');
    daemons = [];
    expect(mountsUnder(dir)).toEqual([mnt]);
    expect(() => statSync(mnt)).toThrow(/ENOTCONN/);
    // The next start on the same mountpoint removes it and mounts afresh.
    const n = await blockd(dir, [...fileNode(img), ...fuseExport(mnt)]);
    expect(mountsUnder(dir)).toEqual([mnt]);
    expect(statSync(mnt).size).toBe(4 * MiB);
    expect(n.d.stderr()).toContain('removed a stale FUSE mount');
    expect(existsSync(mnt)).toBe(true);
  });
});
