import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { BlockError } from '../../src/util/errors.ts';
import { ReqFlag } from '../../src/blockdev/request.ts';
import type { BlockNode } from '../../src/blockdev/node.ts';
import { fileDriver, hostDeviceDriver } from '../../src/blockdev/drivers/file/index.ts';
import { ofdTest } from '../../src/platform/native.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const O_ACCMODE = 0o3;
const O_DSYNC = 0o10000;
const O_DIRECT = 0o40000;

let dir: string;
let graph: BlockGraph;
const children: ChildProcess[] = [];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockd-file-'));
  graph = new BlockGraph();
  graph.register(fileDriver);
  graph.register(hostDeviceDriver);
});

afterEach(async () => {
  await graph.closeAll();
  for (const c of children.splice(0)) c.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

function image(name: string, content: Buffer | number): string {
  const file = path.join(dir, name);
  if (typeof content === 'number') {
    fs.writeFileSync(file, '');
    fs.truncateSync(file, content);
  } else {
    fs.writeFileSync(file, content);
  }
  return file;
}

function pattern(len: number, seed = 1): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

function open(filename: string, extra: Record<string, unknown> = {}, name = 'f'): Promise<BlockNode> {
  return graph.add({ driver: 'file', 'node-name': name, filename, ...extra });
}

async function openError(opts: Record<string, unknown>): Promise<BlockError> {
  try {
    await graph.add({ 'node-name': 'x', ...opts });
  } catch (e) {
    return e as BlockError;
  }
  throw new Error('open succeeded');
}

async function rejected(p: Promise<unknown>): Promise<BlockError> {
  try {
    await p;
  } catch (e) {
    return e as BlockError;
  }
  throw new Error('expected a rejection');
}

/** Open flags of this process's descriptors for `file` (from /proc/self/fdinfo). */
function fdFlags(file: string): number[] {
  const out: number[] = [];
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target: string;
    try { target = fs.readlinkSync(`/proc/self/fd/${fd}`); } catch { continue; }
    if (target !== file) continue;
    const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    out.push(parseInt(/flags:\s+([0-7]+)/.exec(info)![1], 8));
  }
  return out;
}

function run(cmd: string, args: string[]): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** Whether some other open file description holds QEMU lock byte `byte` of `file`. */
function byteHeld(file: string, byte: number): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    return ofdTest(fd, 'w', byte, 1);
  } finally {
    fs.closeSync(fd);
  }
}

/** Starts `qemu-io ... -c 'sleep'` holding `file` and waits until its locks are in place. */
async function qemuHolds(file: string, args: string[]): Promise<ChildProcess> {
  const child = spawn('qemu-io', [...args, '-c', 'sleep 60000', file], { stdio: 'ignore' });
  children.push(child);
  for (let i = 0; i < 200 && !byteHeld(file, 100); i++) await sleep(25);
  expect(byteHeld(file, 100)).toBe(true);
  return child;
}


describe('file driver: data path', () => {
  it('reads and writes through the block node', async () => {
    const file = image('a.img', pattern(MiB));
    const node = await open(file);
    expect(node.length()).toBe(MiB);
    expect(node.limits.alignment).toBe(1);
    const buf = Buffer.alloc(4 * KiB);
    await node.read(12345, buf);
    expect(buf.equals(pattern(MiB).subarray(12345, 12345 + 4 * KiB))).toBe(true);

    const data = pattern(10000, 9);
    await node.write(777, data);
    await node.write(MiB - 3, Buffer.from('end'), ReqFlag.FUA);
    const disk = fs.readFileSync(file);
    expect(disk.length).toBe(MiB);
    expect(disk.subarray(777, 10777).equals(data)).toBe(true);
    expect(disk.subarray(MiB - 3).toString()).toBe('end');
    const back = Buffer.alloc(10000);
    await node.read(777, back);
    expect(back.equals(data)).toBe(true);
  });

  it('opens read-only nodes O_RDONLY and writable ones O_RDWR, FUA through an O_DSYNC twin', async () => {
    const file = image('a.img', MiB);
    const ro = await open(file, { 'read-only': true }, 'ro');
    expect(fdFlags(file).map((f) => f & O_ACCMODE)).toEqual([fs.constants.O_RDONLY]);
    await expect(ro.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EPERM' });
    await graph.del('ro');
    expect(fdFlags(file)).toEqual([]);

    const rw = await open(file);
    expect(fdFlags(file).map((f) => f & O_ACCMODE)).toEqual([fs.constants.O_RDWR]);
    expect(rw.limits.canFua).toBe(true);
    await rw.write(0, Buffer.alloc(512, 1), ReqFlag.FUA);
    const flags = fdFlags(file);
    expect(flags.length).toBe(2);
    expect(flags.filter((f) => f & O_DSYNC).length).toBe(1);
    await graph.del('f');
    expect(fdFlags(file)).toEqual([]);
  });

  it('honours cache.direct with unaligned requests and unaligned memory', async () => {
    const orig = pattern(4 * MiB, 3);
    const file = image('d.img', orig);
    const node = await open(file, { cache: { direct: true } });
    expect([512, 4096]).toContain(node.limits.alignment);
    expect(fdFlags(file).every((f) => (f & O_DIRECT) !== 0)).toBe(true);
    const model = Buffer.from(orig);

    // Small unaligned write into an unaligned slice of memory.
    const small = pattern(11, 5);
    await node.write(3, Buffer.concat([Buffer.alloc(1), small]).subarray(1));
    small.copy(model, 3);
    // A large one, bounced in pieces, crossing alignment and bounce-size boundaries.
    const big = pattern(3 * MiB + 5, 7);
    await node.write(7, big);
    big.copy(model, 7);
    await node.write(2 * MiB + 100, pattern(700, 8), ReqFlag.FUA);
    pattern(700, 8).copy(model, 2 * MiB + 100);

    const r1 = Buffer.alloc(20);
    await node.read(1, r1);
    expect(r1.equals(model.subarray(1, 21))).toBe(true);
    const r2 = Buffer.alloc(4 * MiB - 2);
    await node.read(1, r2);
    expect(r2.equals(model.subarray(1, 4 * MiB - 1))).toBe(true);
    await node.flush();
    expect(fs.readFileSync(file).equals(model)).toBe(true);
  });

  it('keeps the size of a file whose end is not aligned under cache.direct', async () => {
    const file = image('odd.img', pattern(5000, 2));
    const node = await open(file, { cache: { direct: true } });
    // The block layer counts in sectors, as QEMU's: the tail past the file's end reads as zeroes.
    expect(node.length()).toBe(5120);
    const tail = Buffer.alloc(100);
    await node.read(4900, tail);
    expect(tail.equals(pattern(5000, 2).subarray(4900))).toBe(true);
    await node.write(4990, Buffer.from('0123456789'));
    expect(fs.statSync(file).size).toBe(5000);
    expect(fs.readFileSync(file).subarray(4990).toString()).toBe('0123456789');
  });

  it('writes zeroes with ZERO_RANGE, or punches holes when allowed to unmap', async () => {
    const file = image('z.img', pattern(MiB));
    const node = await open(file, { discard: 'unmap' });
    const before = fs.statSync(file).blocks;
    await node.writeZeroes(64 * KiB, 64 * KiB);
    let disk = fs.readFileSync(file);
    expect(disk.subarray(64 * KiB, 128 * KiB).every((b) => b === 0)).toBe(true);
    expect(disk.subarray(128 * KiB, 129 * KiB).equals(pattern(MiB).subarray(128 * KiB, 129 * KiB))).toBe(true);
    expect(fs.statSync(file).blocks).toBe(before); // zeroed, still allocated

    await node.writeZeroes(256 * KiB, 256 * KiB, ReqFlag.MAY_UNMAP | ReqFlag.FUA);
    disk = fs.readFileSync(file);
    expect(disk.subarray(256 * KiB, 512 * KiB).every((b) => b === 0)).toBe(true);
    expect(fs.statSync(file).blocks).toBe(before - (256 * KiB) / 512);
    // Unaligned zeroing (no alignment here, so it goes straight to fallocate).
    await node.writeZeroes(1001, 3);
    expect(fs.readFileSync(file).subarray(1000, 1005).equals(Buffer.from([pattern(MiB)[1000], 0, 0, 0, pattern(MiB)[1004]]))).toBe(true);
  });

  it('never unmaps with discard=ignore', async () => {
    const file = image('z.img', pattern(MiB));
    const node = await open(file);
    const before = fs.statSync(file).blocks;
    await node.writeZeroes(0, 256 * KiB, ReqFlag.MAY_UNMAP);
    expect(fs.statSync(file).blocks).toBe(before);
    await node.discard(256 * KiB, 256 * KiB);
    expect(fs.statSync(file).blocks).toBe(before);
    expect(fs.readFileSync(file).subarray(256 * KiB, 512 * KiB).equals(pattern(MiB).subarray(256 * KiB, 512 * KiB))).toBe(true);
  });

  it('punches holes on discard with discard=unmap', async () => {
    const file = image('t.img', pattern(MiB));
    const node = await open(file, { discard: 'unmap' });
    const before = fs.statSync(file).blocks;
    await node.discard(128 * KiB, 128 * KiB);
    expect(fs.statSync(file).blocks).toBe(before - (128 * KiB) / 512);
    const buf = Buffer.alloc(128 * KiB, 0xff);
    await node.read(128 * KiB, buf);
    expect(buf.every((b) => b === 0)).toBe(true);
    expect(fs.statSync(file).size).toBe(MiB);
  });

  it('zeroes the unaligned edges of a direct-I/O write-zeroes by read-modify-write', async () => {
    const file = image('zd.img', pattern(64 * KiB));
    const node = await open(file, { cache: { direct: true }, discard: 'unmap' });
    await node.writeZeroes(100, 20000, ReqFlag.MAY_UNMAP);
    const disk = fs.readFileSync(file);
    expect(disk.subarray(100, 20100).every((b) => b === 0)).toBe(true);
    expect(disk.subarray(0, 100).equals(pattern(64 * KiB).subarray(0, 100))).toBe(true);
    expect(disk.subarray(20100).equals(pattern(64 * KiB).subarray(20100))).toBe(true);
  });

  it('flushes, and truncates with the cached length following', async () => {
    const file = image('r.img', pattern(64 * KiB));
    const node = await open(file);
    await node.flush();
    expect(node.stats.flushOps).toBe(1);
    await node.truncate(MiB);
    expect(node.length()).toBe(MiB);
    expect(fs.statSync(file).size).toBe(MiB);
    const tail = Buffer.alloc(4096, 1);
    await node.read(MiB - 4096, tail);
    expect(tail.every((b) => b === 0)).toBe(true);
    await node.truncate(1000);
    // The file takes the exact size, the node counts whole sectors (as QEMU's).
    expect(node.length()).toBe(1024);
    expect(fs.statSync(file).size).toBe(1000);
    const end = Buffer.alloc(24, 1);
    await node.read(1000, end);
    expect(end.every((b) => b === 0)).toBe(true);
    await expect(node.read(1023, Buffer.alloc(2))).rejects.toMatchObject({ code: 'EINVAL' });
  });
});

describe('file driver: block status', () => {
  /** Data at [0, 64K) and [1M, 1M+4K) of a 2 MiB file; the rest is holes, including a trailing one. */
  function sparse(): string {
    const file = image('sp.img', 2 * MiB);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, pattern(64 * KiB), 0, 64 * KiB, 0);
    fs.writeSync(fd, pattern(4 * KiB), 0, 4 * KiB, MiB);
    fs.closeSync(fd);
    return file;
  }

  const ext = (offset: number, length: number, data: boolean) =>
    ({ offset, length, data, zero: !data, allocated: true, depth: 1 });

  it("reports a sparse file's holes as zero, not data", async () => {
    const node = await open(sparse());
    expect(await node.blockStatus(0, 2 * MiB)).toEqual([
      ext(0, 64 * KiB, true),
      ext(64 * KiB, MiB - 64 * KiB, false),
      ext(MiB, 4 * KiB, true),
      ext(MiB + 4 * KiB, MiB - 4 * KiB, false),
    ]);
    expect(await node.blockStatus(4096, 100)).toEqual([ext(4096, 100, true)]);
    expect(await node.blockStatus(100 * KiB, MiB)).toEqual([
      ext(100 * KiB, MiB - 100 * KiB, false),
      ext(MiB, 4 * KiB, true),
      ext(MiB + 4 * KiB, 100 * KiB - 4 * KiB, false),
    ]);
    expect(await node.blockStatus(0, 2 * MiB, ReqFlag.REQ_ONE)).toEqual([ext(0, 64 * KiB, true)]);
    expect(await node.blockStatus(1536 * KiB, 512 * KiB)).toEqual([ext(1536 * KiB, 512 * KiB, false)]);
  });

  it('matches what qemu-storage-daemon exports as NBD base:allocation', async () => {
    const file = sparse();
    const sock = path.join(dir, 'qsd.sock');
    const qsd = spawn('qemu-storage-daemon', [
      '--blockdev', `file,node-name=f,filename=${file}`,
      '--nbd-server', `addr.type=unix,addr.path=${sock}`,
      '--export', 'nbd,id=e,node-name=f',
    ], { stdio: 'ignore' });
    children.push(qsd);
    for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await sleep(25);
    const r = run('nbdinfo', ['--map', '--json', `nbd+unix:///f?socket=${sock}`]);
    expect(r.status).toBe(0);
    qsd.kill();
    const theirs = (JSON.parse(r.out) as { offset: number; length: number; type: number }[]);

    const node = await open(file, { 'read-only': true });
    const ours = await node.blockStatus(0, node.length());
    // NBD base:allocation: bit 0 = hole (not data), bit 1 = reads as zero.
    expect(ours.map((e) => ({ offset: e.offset, length: e.length, type: (e.data ? 0 : 1) | (e.zero ? 2 : 0) })))
      .toEqual(theirs.map((e) => ({ offset: e.offset, length: e.length, type: e.type })));
  });

  it('sees holes made through the node', async () => {
    const node = await open(image('h.img', pattern(MiB)), { discard: 'unmap' });
    await node.discard(256 * KiB, 256 * KiB);
    expect(await node.blockStatus(0, MiB)).toEqual([
      ext(0, 256 * KiB, true), ext(256 * KiB, 256 * KiB, false), ext(512 * KiB, 512 * KiB, true),
    ]);
  });
});

describe('file driver: opening', () => {
  it("words open failures as QEMU does", async () => {
    let e = await openError({ driver: 'file', filename: '/nonexist' });
    expect(e).toBeInstanceOf(BlockError);
    expect(e.message).toBe("Could not open '/nonexist': No such file or directory");
    expect(e.code).toBe('ENOENT');
    e = await openError({ driver: 'file', filename: dir });
    expect(e.message).toBe(`Could not open '${dir}': Is a directory`);
    e = await openError({ driver: 'file', filename: dir, 'read-only': true });
    expect(e.message).toBe(`'file' driver requires '${dir}' to be a regular file`);
    const file = image('x.img', 4096);
    e = await openError({ driver: 'host_device', filename: file });
    expect(e.message).toBe(`'host_device' driver requires '${file}' to be either a character or block device`);
    e = await openError({ driver: 'file', filename: file, aio: 'native' });
    expect(e.message).toBe('aio=native was specified, but it requires cache.direct=on, which was not specified.');
    expect(graph.nodes.size).toBe(0);
    expect(fdFlags(file)).toEqual([]);
  });

  it('accepts the other BlockdevOptionsFile members', async () => {
    const file = image('o.img', 4096);
    const node = await open(file, {
      locking: 'auto', aio: 'io_uring', 'aio-max-batch': 16, 'drop-cache': false, 'x-check-cache-dropped': true,
    });
    expect(node.ops.filename?.()).toBe(file);
    expect(node.ops.info?.()).toHaveProperty('actual-size');
    expect(fileDriver.options.members.map((m) => m.name).sort()).toEqual(
      ['aio', 'aio-max-batch', 'drop-cache', 'filename', 'locking', 'x-check-cache-dropped']);
    expect(hostDeviceDriver.options).toBe(fileDriver.options);
    expect([fileDriver.kind, hostDeviceDriver.kind, hostDeviceDriver.name]).toEqual(['protocol', 'protocol', 'host_device']);
  });

  it('opens character devices with host_device', async () => {
    const node = await graph.add({ driver: 'host_device', 'node-name': 'null', filename: '/dev/null' });
    expect(node.length()).toBe(0);
    expect(node.ops.blockStatus).toBeUndefined();
  });
});

describe('file driver: image locking (interop with QEMU)', () => {
  it('holds the lock bytes qemu-storage-daemon holds for an exported node', async () => {
    const file = image('l.img', MiB);
    await open(file);
    // 100 consistent read, 101 write; 203: resize not shared.
    expect([100, 101, 102, 103].map((b) => byteHeld(file, b))).toEqual([true, true, false, false]);
    expect([200, 201, 202, 203].map((b) => byteHeld(file, b))).toEqual([false, false, false, true]);
    await graph.del('f');
    expect([100, 101, 203].map((b) => byteHeld(file, b))).toEqual([false, false, false]);
    await open(file, { 'read-only': true });
    expect([100, 101, 203].map((b) => byteHeld(file, b))).toEqual([true, false, true]);
  });

  it('makes qemu-img fail on a qcow2 image blockd has open for writing', async () => {
    const file = path.join(dir, 'q.qcow2');
    expect(run('qemu-img', ['create', '-q', '-f', 'qcow2', file, '1M']).status).toBe(0);
    await open(file);
    const r = run('qemu-img', ['info', file]);
    expect(r.status).not.toBe(0);
    expect(r.out).toContain(`Could not open '${file}': Failed to get shared "write" lock`);
    expect(run('qemu-img', ['info', '-U', file]).status).toBe(0);
    await graph.del('f');
    expect(run('qemu-img', ['info', file]).status).toBe(0);
  });

  it('lets qemu-io share a raw image exactly as qemu-storage-daemon does, and refuses once a user unshares write', async () => {
    const file = image('r.img', MiB);
    const node = await open(file);
    // qsd's exported file node shares write, so a raw qemu-io writer gets in.
    let r = run('qemu-io', ['-f', 'raw', '-c', 'read 0 512', file]);
    expect(r.out).toContain('read 512/512 bytes at offset 0');
    // As under a qcow2 parent: write and resize used, neither shared.
    node.ops.setPermissions!({ perm: { read: true, write: true, resize: true }, shared: { read: true, write: false, resize: false } });
    expect([101, 103, 201, 203].map((b) => byteHeld(file, b))).toEqual([true, true, true, true]);
    r = run('qemu-io', ['-f', 'raw', '-c', 'read 0 512', file]);
    expect(r.status).not.toBe(0);
    expect(r.out).toContain(`can't open device ${file}: Failed to get "write" lock`);
    // A read-only raw reader needs only "consistent read", which we share.
    expect(run('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 512', file]).out).toContain('read 512/512 bytes');
    // Back to plain use: the bytes go.
    node.ops.setPermissions!({ perm: { read: true, write: true, resize: false }, shared: { read: true, write: true, resize: false } });
    expect([101, 103, 201, 203].map((b) => byteHeld(file, b))).toEqual([true, false, false, true]);
  });

  it('refuses an image QEMU holds, with QEMU\'s messages', async () => {
    const file = path.join(dir, 'held.qcow2');
    expect(run('qemu-img', ['create', '-q', '-f', 'qcow2', file, '1M']).status).toBe(0);
    await qemuHolds(file, ['-f', 'qcow2']);
    let e = await openError({ driver: 'file', filename: file });
    expect(e.message).toBe('Failed to get "write" lock');
    expect(e.code).toBe('EBUSY');
    e = await openError({ driver: 'file', filename: file, 'read-only': true });
    expect(e.message).toBe('Failed to get shared "resize" lock');
    expect(fdFlags(file)).toEqual([]);
    await open(file, { 'read-only': true, 'force-share': true }, 'shared');
    await open(file, { locking: 'off' }, 'unlocked');
    expect(graph.nodes.size).toBe(2);
  });

  it('sees conflicts between two nodes of one process, and a failed change leaves the old locks', async () => {
    const file = image('two.img', MiB);
    const a = await open(file, {}, 'a');
    await open(file, {}, 'b'); // both share write: fine
    await graph.del('b');
    a.ops.setPermissions!({ perm: { read: true, write: true, resize: true }, shared: { read: true, write: false, resize: false } });
    const e = await openError({ driver: 'file', filename: file });
    expect(e.message).toBe('Failed to get "write" lock');
    const b = await open(file, { 'read-only': true, 'force-share': true }, 'b');
    expect(() => b.ops.setPermissions!({ perm: { read: true, write: true, resize: false }, shared: { read: true, write: true, resize: true } })).toThrow('Failed to get "write" lock');
    // b still holds only what it held before.
    await graph.del('a');
    expect([100, 101, 103, 201, 203].map((x) => byteHeld(file, x))).toEqual([true, false, false, false, false]);
  });
});
