/**
 * Real NBD clients (nbdinfo, qemu-io, qemu-img, libnbd's Python binding)
 * against an in-process server on a Unix socket and on TCP.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ReqFlag } from '../../src/blockdev/request.ts';
import { BLOCK, nbdsh, runTool, startHarness, type Harness, type MemState } from '../helpers/nbd.ts';

const MB = 1 << 20;
let h: Harness;
let disk: MemState;

beforeAll(async () => {
  h = await startHarness(
    [
      { driver: 'mem', 'node-name': 'n0', size: 64 * MB },
      { driver: 'mem', 'node-name': 'r0', size: 4 * MB },
      { driver: 'null-co', 'node-name': 'z0', size: 64 * MB, 'read-zeroes': true },
    ],
    [
      { id: 'e0', nodeName: 'n0', name: 'disk', writable: true, description: 'test disk', allocationDepth: true },
      { id: 'e1', nodeName: 'r0' },
      { id: 'e2', nodeName: 'z0', name: 'zero' },
    ],
  );
  disk = h.mem.states.get('n0')!;
  const ro = h.mem.states.get('r0')!;
  for (let i = 0; i < ro.data.length; i++) ro.data[i] = (i * 7) & 0xff;
  ro.allocated.fill(1);
});

afterAll(async () => h?.close());

const json = async (args: string[]) => JSON.parse(await runTool('nbdinfo', ['--json', ...args]));

describe('nbdinfo', () => {
  it('--json over a Unix socket: flags, block sizes, contexts, description as qsd', async () => {
    const e = (await json([h.unixUri('disk')])).exports[0];
    expect(e).toMatchObject({
      'export-name': 'disk', description: 'test disk', 'export-size': 64 * MB,
      is_read_only: false, can_cache: true, can_df: true, can_fast_zero: true, can_flush: true, can_fua: true,
      can_multi_conn: true, can_trim: true, can_zero: true, is_rotational: false,
      block_size_minimum: 1, block_size_preferred: 4096, block_size_maximum: 32 * MB,
    });
    expect(e.contexts).toEqual(['base:allocation', 'qemu:allocation-depth']);
  });

  it('--json over TCP: a read-only export named after its node', async () => {
    const info = await json([h.tcpUri('r0')]);
    expect(info.protocol).toBe('newstyle-fixed');
    expect(info.structured).toBe(true);
    expect(info.exports[0]).toMatchObject({
      'export-name': 'r0', 'export-size': 4 * MB, is_read_only: true, can_trim: false, can_zero: false, can_fast_zero: false,
      can_flush: true, can_fua: true, can_cache: true, can_df: true, can_multi_conn: true,
    });
    expect(info.exports[0].description).toBeUndefined();
    expect(info.exports[0].contexts).toEqual(['base:allocation']);
  });

  it('--list shows every export with its description, in creation order', async () => {
    const list = await json(['--list', `nbd+unix://?socket=${h.sock}`]);
    expect(list.exports.map((e: Record<string, string>) => [e['export-name'], e.description])).toEqual([
      ['disk', 'test disk'], ['r0', undefined], ['zero', undefined],
    ]);
  });

  it('--map shows holes and data after writes, discards and zeroing (qemu-io)', async () => {
    await runTool('qemu-io', ['-f', 'raw',
      '-c', 'write -P 0x41 0 1M', '-c', 'write -P 0x42 2M 64k', '-c', 'discard 512k 256k', '-c', 'write -z -u 3M 1M',
      h.unixUri('disk')]);
    const mapLines = (await runTool('nbdinfo', ['--map', h.unixUri('disk')])).trim().split('\n').map((l) => l.trim().split(/\s+/));
    expect(mapLines).toEqual([
      ['0', String(512 * 1024), '0', 'data'],
      [String(512 * 1024), String(256 * 1024), '3', 'hole,zero'],
      [String(768 * 1024), String(256 * 1024), '0', 'data'],
      [String(MB), String(MB), '3', 'hole,zero'],
      [String(2 * MB), String(64 * 1024), '0', 'data'],
      [String(2 * MB + 64 * 1024), String(62 * MB - 64 * 1024), '3', 'hole,zero'],
    ]);
    const depth = (await runTool('nbdinfo', ['--map=qemu:allocation-depth', h.unixUri('disk')])).trim().split('\n')[0].trim().split(/\s+/);
    expect(depth).toEqual(['0', String(512 * 1024), '1', 'local']);
  });

  it('--map over TCP of a read-zeroes null-co node: one hole', async () => {
    const m = (await runTool('nbdinfo', ['--map', h.tcpUri('zero')])).trim().split(/\s+/);
    expect(m).toEqual(['0', String(64 * MB), '3', 'hole,zero']);
  });
});

describe('qemu-io and qemu-img', () => {
  it('qemu-io reads back what it wrote, over Unix and TCP', async () => {
    await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 5M 3M', h.tcpUri('disk')]);
    const out = await runTool('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 5M 3M', '-c', 'read -P 0 9M 1M', h.unixUri('disk')]);
    expect(out).toContain('read 3145728/3145728 bytes at offset 5242880');
    expect(out).not.toMatch(/Pattern verification failed/);
    expect(disk.data.subarray(5 * MB, 8 * MB).every((b) => b === 0x5a)).toBe(true);
  });

  it('qemu-io refuses to write to a read-only export', async () => {
    await expect(runTool('qemu-io', ['-f', 'raw', '-c', 'write 0 512', h.unixUri('r0')])).rejects.toThrow(/read-only|Permission|not permitted/i);
  });

  it('qemu-img info and convert see the export as it is', async () => {
    const info = JSON.parse(await runTool('qemu-img', ['info', '--output=json', h.unixUri('r0')]));
    expect(info['virtual-size']).toBe(4 * MB);
    const out = join(h.dir, 'r0.raw');
    await runTool('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', h.tcpUri('r0'), out]);
    expect(readFileSync(out).equals(h.mem.states.get('r0')!.data)).toBe(true);
  });
});

describe('libnbd (nbdsh) edge cases', () => {
  it('structured READ: data and hole chunks as qsd sends them (reads of 64 KiB and more); DF gives one data chunk', async () => {
    const PAD = 32 * 1024;
    disk.data.fill(0x77, 20 * MB, 20 * MB + BLOCK);
    disk.allocated[(20 * MB) / BLOCK] = 1;
    const out = JSON.parse(await nbdsh(h.unixUri('disk'), `
h = nbd.NBD(); h.connect_uri(uri)
def collect(flags):
    chunks = []
    def cb(buf, offset, status, err):
        chunks.append([status, offset, len(buf), buf[:1].hex()])
        return 0
    h.pread_structured(${2 * 32 * 1024 + BLOCK}, ${20 * MB - 32 * 1024}, cb, flags=flags)
    return chunks
print(json.dumps({"sparse": collect(0), "df": collect(nbd.CMD_FLAG_DF)}))
`));
    const [DATA, HOLE] = [1, 2];
    expect(out.sparse).toEqual([
      [HOLE, 20 * MB - PAD, PAD, '00'],
      [DATA, 20 * MB, BLOCK, '77'],
      [HOLE, 20 * MB + BLOCK, PAD, '00'],
    ]);
    expect(out.df).toEqual([[DATA, 20 * MB - PAD, 2 * PAD + BLOCK, '00']]);
  });

  it('BLOCK_STATUS: REQ_ONE gives one extent per context, within the request', async () => {
    const out = JSON.parse(await nbdsh(h.unixUri('disk'), `
h = nbd.NBD()
h.add_meta_context("base:allocation"); h.add_meta_context("qemu:allocation-depth")
h.connect_uri(uri)
res = {}
def run(key, length, offset, flags):
    got = {}
    def cb(meta, off, entries, err):
        got[meta] = list(entries)
        return 0
    h.block_status(length, offset, cb, flags=flags)
    res[key] = got
run("one", 3 * 4096, ${20 * MB - BLOCK}, nbd.CMD_FLAG_REQ_ONE)
run("all", 3 * 4096, ${20 * MB - BLOCK}, 0)
run("tail", 4096, ${64 * MB - BLOCK}, 0)
print(json.dumps(res))
`));
    expect(out.one).toEqual({ 'base:allocation': [BLOCK, 3], 'qemu:allocation-depth': [BLOCK, 0] });
    expect(out.all).toEqual({ 'base:allocation': [BLOCK, 3, BLOCK, 0, BLOCK, 3], 'qemu:allocation-depth': [BLOCK, 0, BLOCK, 1, BLOCK, 0] });
    expect(out.tail['base:allocation']).toEqual([BLOCK, 3]);
  });

  it('malformed and out-of-range requests get qsd errnos and leave the connection usable', async () => {
    const out = JSON.parse(await nbdsh(h.unixUri('disk'), `
SIZE = ${64 * MB}
h = nbd.NBD(); h.set_strict_mode(0); h.add_meta_context("base:allocation"); h.connect_uri(uri)
res = {}
def probe(name, fn):
    try:
        fn(); res[name] = "ok"
    except nbd.Error as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
probe("read-past-end", lambda: h.pread(512, SIZE - 256))
probe("read-zero-length", lambda: h.pread(0, 0))
probe("read-zero-length-at-end", lambda: h.pread(0, SIZE))
probe("read-over-32M", lambda: h.pread(32 * 1024 * 1024 + 1, 0))
probe("read-unknown-flag", lambda: h.pread(512, 0, flags=0x80))
probe("read-fua", lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_FUA))
probe("read-offset-2^64-1", lambda: h.pread(1, (1 << 64) - 1))
probe("write-past-end", lambda: h.pwrite(b"x" * 512, SIZE - 256))
probe("write-zero-length", lambda: h.pwrite(b"", 0))
probe("write-df", lambda: h.pwrite(b"x", 0, flags=nbd.CMD_FLAG_DF))
probe("write-over-32M", lambda: h.pwrite(b"x" * (32 * 1024 * 1024 + 1), 0))
probe("write-32M", lambda: h.pwrite(b"y" * (32 * 1024 * 1024), 0))
probe("trim-zero-length", lambda: h.trim(0, 0))
probe("trim-past-end", lambda: h.trim(512, SIZE))
probe("zero-past-end", lambda: h.zero(512, SIZE - 256))
probe("zero-1G", lambda: h.zero(1 << 30, 0))
probe("zero-fast", lambda: h.zero(4096, 0, flags=nbd.CMD_FLAG_FAST_ZERO))
probe("cache-past-end", lambda: h.cache(4096, SIZE))
probe("cache", lambda: h.cache(4096, 0))
probe("flush", lambda: h.flush())
probe("bs-zero-length", lambda: h.block_status(0, 0, lambda *a: 0))
probe("bs-past-end", lambda: h.block_status(4096, SIZE, lambda *a: 0))
probe("still-alive", lambda: h.pread(1, 0))
print(json.dumps(res))
`));
    expect(out).toEqual({
      'read-past-end': 'EINVAL', 'read-zero-length': 'ok', 'read-zero-length-at-end': 'ok', 'read-over-32M': 'EINVAL',
      'read-unknown-flag': 'EINVAL', 'read-fua': 'ok', 'read-offset-2^64-1': 'EINVAL',
      'write-past-end': 'EINVAL', 'write-zero-length': 'ok', 'write-df': 'EINVAL', 'write-over-32M': 'EINVAL', 'write-32M': 'ok',
      'trim-zero-length': 'ok', 'trim-past-end': 'EINVAL', 'zero-past-end': 'EINVAL', 'zero-1G': 'EINVAL', 'zero-fast': 'ok',
      'cache-past-end': 'EINVAL', cache: 'ok', flush: 'ok', 'bs-zero-length': 'EINVAL', 'bs-past-end': 'EINVAL', 'still-alive': 'ok',
    });
    expect(disk.data.subarray(BLOCK, 32 * MB).every((b) => b === 0x79)).toBe(true);
  });

  it('a read-only export refuses writes, trims and zeroing with EPERM (qsd 7.2 says EINVAL; the spec says EPERM)', async () => {
    const out = JSON.parse(await nbdsh(h.unixUri('r0'), `
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(uri)
res = []
for fn in (lambda: h.pwrite(b"x" * 512, 0), lambda: h.trim(512, 0), lambda: h.zero(512, 0)):
    try:
        fn(); res.append("ok")
    except nbd.Error as e:
        res.append(str(e.errno))
print(json.dumps(res))
`));
    expect(out).toEqual(['EPERM', 'EPERM', 'EPERM']);
    expect(h.mem.states.get('r0')!.data[0]).toBe(0);
  });

  it('FUA and flags reach the block layer as its own flags', async () => {
    const before = disk.flushes;
    disk.writeFlags.length = 0;
    await nbdsh(h.unixUri('disk'), `
h = nbd.NBD(); h.connect_uri(uri)
h.pwrite(b"f" * 4096, 0, flags=nbd.CMD_FLAG_FUA)
h.pwrite(b"g" * 4096, 4096)
h.trim(4096, 8192, flags=nbd.CMD_FLAG_FUA)
h.flush()
`);
    expect(disk.writeFlags).toEqual([ReqFlag.FUA, 0]);
    expect(disk.flushes - before).toBe(2);
  });

  it('multi-conn: a flush on one connection covers writes completed on another', async () => {
    const out = await nbdsh(h.tcpUri('disk'), `
a = nbd.NBD(); a.connect_uri(uri)
b = nbd.NBD(); b.connect_uri(uri)
assert a.can_multi_conn()
a.pwrite(b"m" * 8192, ${30 * MB})
b.flush()
print(b.pread(8192, ${30 * MB}) == b"m" * 8192)
`);
    expect(out.trim()).toBe('True');
  });

  it('replies out of order: a fast read overtakes a slow one', async () => {
    disk.readDelay = (o) => (o === 40 * MB ? 800 : 0);
    disk.allocated[(40 * MB) / BLOCK] = 1;
    try {
      const out = JSON.parse(await nbdsh(h.unixUri('disk'), `
import time
h = nbd.NBD(); h.connect_uri(uri)
order = []
slow_buf = nbd.Buffer(4096); fast_buf = nbd.Buffer(4096)
def done(name):
    def f(err):
        order.append(name); return 1
    return f
h.aio_pread(slow_buf, ${40 * MB}, completion=done("slow"))
h.aio_pread(fast_buf, 0, completion=done("fast"))
while h.aio_in_flight() > 0:
    h.poll(-1)
print(json.dumps(order))
`));
      expect(out).toEqual(['fast', 'slow']);
    } finally {
      disk.readDelay = undefined;
    }
  });

  it('many requests in flight on one connection, all answered correctly', async () => {
    const out = await nbdsh(h.unixUri('disk'), `
h = nbd.NBD(); h.connect_uri(uri)
n = 256
bufs = []
for i in range(n):
    b = nbd.Buffer.from_bytearray(bytearray([i % 251]) * 65536)
    h.aio_pwrite(b, ${10 * MB} + i * 65536)
while h.aio_in_flight() > 0:
    h.poll(-1)
reads = []
for i in range(n):
    b = nbd.Buffer(65536)
    h.aio_pread(b, ${10 * MB} + i * 65536)
    reads.append(b)
while h.aio_in_flight() > 0:
    h.poll(-1)
print(all(reads[i].to_bytearray() == bytearray([i % 251]) * 65536 for i in range(n)))
`);
    expect(out.trim()).toBe('True');
  });

  it('a driver error becomes EIO and the connection carries on', async () => {
    disk.failReads = true;
    try {
      const out = await nbdsh(h.unixUri('disk'), `
h = nbd.NBD(); h.connect_uri(uri)
try:
    h.pread(4096, 0)
except nbd.Error as e:
    print(e.errno, e.string)
`);
      expect(out).toMatch(/^EIO /);
    } finally {
      disk.failReads = false;
    }
  });
});
