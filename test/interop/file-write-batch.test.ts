/**
 * The file driver's write batching (src/blockdev/drivers/file/write-batch.ts):
 * the small writes of one tick go out in pwriteBatch jobs, the rest alone.
 * Data: every write lands where it was sent, in jobs of at most BATCH_MAX,
 * writes above BATCH_WRITE_MAX alone, a lone write alone. Errors: on a full
 * tmpfs each write of a batch fails or succeeds on its own (ENOSPC for
 * those past the end of the space, short writes continued then refused),
 * and through an NBD export the client gets ENOSPC for exactly those while
 * the daemon keeps serving; a closed descriptor rejects every write of its
 * batch with EBADF. The file driver batches buffered writes only: O_DIRECT
 * writes wait for the device, so they keep going out side by side.
 */
import { describe, it, expect, afterEach, vi } from 'vitest';
import fs from 'node:fs';
import { join } from 'node:path';
import { native } from '../../src/platform/native.ts';
import { BATCH_MAX, BATCH_WRITE_MAX, WriteBatcher, writeError } from '../../src/blockdev/drivers/file/write-batch.ts';
import { tempDir } from '../helpers/temp.ts';
import { run, tryRun, nbdsh } from '../helpers/tools.ts';
import { startDaemon, type Running } from '../helpers/daemons.ts';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';

const KiB = 1024;
const mounts: string[] = [];
let daemon: Running | undefined;
afterEach(async () => {
  await daemon?.stop();
  daemon = undefined;
  vi.restoreAllMocks();
  for (const m of mounts.splice(0)) tryRun('umount', ['-l', m]);
});

function fullTmpfs(size: string): string {
  const dir = tempDir('blockd-wbatch-');
  const mnt = join(dir, 'mnt');
  fs.mkdirSync(mnt);
  run('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  mounts.push(mnt);
  return mnt;
}

describe('write batching', () => {
  it('lands every write of a tick where it was sent, in jobs of at most BATCH_MAX; large and lone writes go alone', async () => {
    const file = join(tempDir('blockd-wbatch-'), 'img');
    fs.writeFileSync(file, Buffer.alloc(4 * 1024 * KiB));
    const fd = fs.openSync(file, 'r+');
    try {
      const spy = vi.spyOn(native(), 'pwriteBatch');
      const b = new WriteBatcher();
      const writes = Array.from({ length: 40 }, (_, i) => ({ pos: i * 12 * KiB + 512, buf: Buffer.alloc(4 * KiB + i, i + 1) }));
      const big = { pos: 3 * 1024 * KiB, buf: Buffer.alloc(BATCH_WRITE_MAX + 1, 0xee) };
      await Promise.all([...writes.map((w) => b.write(fd, w.buf, w.pos)), b.write(fd, big.buf, big.pos)]);
      expect(spy.mock.calls.map((c) => c[1].length)).toEqual([BATCH_MAX, BATCH_MAX, 40 - 2 * BATCH_MAX]);
      await b.write(fd, Buffer.alloc(100, 0x77), 0);
      expect(spy).toHaveBeenCalledTimes(3);
      const got = fs.readFileSync(file);
      for (const w of writes) expect(got.subarray(w.pos, w.pos + w.buf.length).equals(w.buf)).toBe(true);
      expect(got.subarray(big.pos, big.pos + big.buf.length).equals(big.buf)).toBe(true);
      expect(got.subarray(0, 100).equals(Buffer.alloc(100, 0x77))).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('on a full tmpfs, fails only the writes past the space, each with ENOSPC', async () => {
    const mnt = fullTmpfs('256k');
    const file = join(mnt, 'img');
    const fd = fs.openSync(file, 'w+');
    try {
      const b = new WriteBatcher();
      // 24 writes of 16 KiB at distinct places of a sparse file: 384 KiB into 256 KiB of space.
      const results = await Promise.allSettled(Array.from({ length: 24 }, (_, i) => b.write(fd, Buffer.alloc(16 * KiB, i + 1), i * 64 * KiB)));
      const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
      expect(failed.length).toBeGreaterThan(0);
      expect(failed.length).toBeLessThan(24);
      for (const f of failed) expect((f.reason as NodeJS.ErrnoException).code).toBe('ENOSPC');
      const got = fs.readFileSync(file);
      results.forEach((r, i) => {
        if (r.status === 'fulfilled') expect(got.subarray(i * 64 * KiB, i * 64 * KiB + 16 * KiB).equals(Buffer.alloc(16 * KiB, i + 1))).toBe(true);
      });
    } finally {
      fs.closeSync(fd);
    }
  });

  it('rejects every write of a batch on a closed descriptor with EBADF, as node:fs would', async () => {
    const file = join(tempDir('blockd-wbatch-'), 'img');
    fs.writeFileSync(file, Buffer.alloc(64 * KiB));
    const fd = fs.openSync(file, 'r+');
    fs.closeSync(fd);
    const b = new WriteBatcher();
    const results = await Promise.allSettled([0, 1, 2].map((i) => b.write(fd, Buffer.alloc(512, 1), i * 512)));
    for (const r of results) {
      expect(r.status).toBe('rejected');
      const e = (r as PromiseRejectedResult).reason as NodeJS.ErrnoException;
      expect([e.code, e.syscall, e.errno]).toEqual(['EBADF', 'write', -9]);
    }
    expect(writeError(-28).message).toBe('ENOSPC: no space left on device, write');
  });

  it('through an NBD export on a full tmpfs: ENOSPC for the writes past the space, the others read back, the daemon serves on', async () => {
    const mnt = fullTmpfs('512k');
    const file = join(mnt, 'img');
    run('truncate', ['-s', '8M', file]);
    const sock = join(mnt, '..', 'nbd.sock');
    daemon = await startDaemon('blockd', ['--blockdev', `driver=file,node-name=f0,filename=${file}`,
      '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e0,node-name=f0,name=d,writable=on'], sock);
    // 64 writes of 16 KiB (1 MiB into 512 KiB) in flight at once: they reach the driver in batches.
    const out = nbdsh(`
import json
h = nbd.NBD()
h.connect_uri("nbd+unix:///d?socket=${sock}")
errs = {}
def done(i):
    def cb(err):
        if err.value: errs[i] = err.value
        return 1
    return cb
for i in range(64):
    h.aio_pwrite(bytes([i + 1]) * 16384, i * 131072, completion=done(i))
while h.aio_in_flight() > 0: h.poll(-1)
ok = [i for i in range(64) if i not in errs]
good = all(h.pread(16384, i * 131072) == bytes([i + 1]) * 16384 for i in ok)
print(json.dumps({"failed": len(errs), "codes": sorted(set(errs.values())), "okReadBack": good, "alive": h.pread(512, 0) is not None}))
`);
    const r = JSON.parse(out) as { failed: number; codes: number[]; okReadBack: boolean; alive: boolean };
    expect(r.failed).toBeGreaterThan(0);
    expect(r.failed).toBeLessThan(64);
    expect(r.codes).toEqual([28]);
    expect(r.okReadBack).toBe(true);
    expect(r.alive).toBe(true);
  }, 60_000);

  for (const direct of [false, true]) {
    it(`the file driver ${direct ? 'leaves O_DIRECT writes alone' : 'batches buffered writes'}; the data lands either way`, async () => {
      const file = join(tempDir('blockd-wbatch-'), 'img');
      fs.writeFileSync(file, Buffer.alloc(1024 * KiB));
      const g = new BlockGraph();
      registerDrivers(g);
      try {
        const node = await g.add({ driver: 'file', 'node-name': 'f0', filename: file, cache: { direct } });
        const spy = vi.spyOn(native(), 'pwriteBatch');
        // Aligned memory, so that O_DIRECT writes take the direct path and not the bounce buffer's.
        const bufs = Array.from({ length: 8 }, (_, i) => native().allocAligned(4 * KiB, 4 * KiB).fill(i + 1));
        await Promise.all(bufs.map((b, i) => node.write(i * 64 * KiB, b)));
        expect(spy.mock.calls.length).toBe(direct ? 0 : 1);
        const got = fs.readFileSync(file);
        bufs.forEach((b, i) => expect(got.subarray(i * 64 * KiB, i * 64 * KiB + b.length).equals(b)).toBe(true));
      } finally {
        await g.closeAll();
      }
    });
  }
});
