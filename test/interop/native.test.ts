import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { native, loadAddon, errorText, isNativeError, type NativeError } from '../../src/platform/native.ts';

const KiB = 1024;
let dir: string;
let file: string;
const fds: number[] = [];

function openFd(flags: string | number = 'r+'): number {
  const fd = fs.openSync(file, flags);
  fds.push(fd);
  return fd;
}

async function rejection(p: Promise<unknown>): Promise<NativeError> {
  try {
    await p;
  } catch (e) {
    return e as NativeError;
  }
  throw new Error('expected a rejection');
}

function thrown(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (e) {
    return e as NativeError;
  }
  throw new Error('expected an exception');
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockd-native-'));
  file = path.join(dir, 'img');
  fs.writeFileSync(file, Buffer.alloc(1024 * KiB, 0xab));
});

afterEach(() => {
  for (const fd of fds.splice(0)) fs.closeSync(fd);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('native addon', () => {
  it('exports the Linux fallocate mode bits', () => {
    const n = native();
    expect(n.FALLOC_FL_KEEP_SIZE).toBe(1);
    expect(n.FALLOC_FL_PUNCH_HOLE).toBe(2);
    expect(n.FALLOC_FL_ZERO_RANGE).toBe(16);
  });

  it('punches holes that SEEK_DATA / SEEK_HOLE then find', async () => {
    const n = native();
    const fd = openFd();
    expect(n.seekHole(fd, 0)).toBe(1024 * KiB); // EOF is the implicit hole
    await n.fallocate(fd, n.FALLOC_FL_PUNCH_HOLE | n.FALLOC_FL_KEEP_SIZE, 64 * KiB, 128 * KiB);
    expect(fs.fstatSync(fd).size).toBe(1024 * KiB);
    expect(n.seekData(fd, 0)).toBe(0);
    expect(n.seekHole(fd, 0)).toBe(64 * KiB);
    expect(n.seekData(fd, 64 * KiB)).toBe(192 * KiB);
    expect(n.seekHole(fd, 100 * KiB)).toBe(100 * KiB);
    // Past EOF both report ENXIO, which the addon turns into -1.
    expect(n.seekData(fd, 2048 * KiB)).toBe(-1);
    expect(n.seekHole(fd, 2048 * KiB)).toBe(-1);
    const buf = Buffer.alloc(128 * KiB);
    fs.readSync(fd, buf, 0, buf.length, 64 * KiB);
    expect(buf.every((b) => b === 0)).toBe(true);
  });

  it('reports a trailing hole as "no data after this offset"', async () => {
    const n = native();
    const fd = openFd();
    fs.ftruncateSync(fd, 4096 * KiB);
    expect(n.seekData(fd, 1024 * KiB)).toBe(-1);
    expect(n.seekHole(fd, 1024 * KiB)).toBe(1024 * KiB);
  });

  it('zeroes a range with FALLOC_FL_ZERO_RANGE', async () => {
    const n = native();
    const fd = openFd();
    await n.fallocate(fd, n.FALLOC_FL_ZERO_RANGE, 4 * KiB, 8 * KiB);
    const buf = Buffer.alloc(16 * KiB);
    fs.readSync(fd, buf, 0, buf.length, 0);
    expect(buf.subarray(0, 4 * KiB).every((b) => b === 0xab)).toBe(true);
    expect(buf.subarray(4 * KiB, 12 * KiB).every((b) => b === 0)).toBe(true);
    expect(buf.subarray(12 * KiB).every((b) => b === 0xab)).toBe(true);
  });

  it('rejects with errno-named errors', async () => {
    const n = native();
    const ro = openFd('r');
    const e = await rejection(n.fallocate(ro, n.FALLOC_FL_ZERO_RANGE, 0, 4096));
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe('EBADF');
    expect(e.errno).toBe(9);
    expect(e.syscall).toBe('fallocate');
    expect(e.message).toBe('Bad file descriptor');
    expect(isNativeError(e)).toBe(true);
    const bad = await rejection(n.fallocate(ro, 0x4000_0000, 0, 4096));
    expect(['EOPNOTSUPP', 'EINVAL', 'EBADF']).toContain(bad.code);
    let closed: NodeJS.ErrnoException | undefined;
    try { n.seekData(999_999, 0); } catch (err) { closed = err as NodeJS.ErrnoException; }
    expect(closed?.code).toBe('EBADF');
    expect(closed?.syscall).toBe('lseek');
  });

  it('validates arguments', () => {
    const n = native();
    expect(() => n.fallocate('3' as unknown as number, 0, 0, 1)).toThrow(TypeError);
    expect(() => n.fallocate(3, 0, -1, 1)).toThrow(RangeError);
    expect(() => n.fallocate(3, 0, 0.5, 1)).toThrow(RangeError);
    expect(() => n.fallocate(3, 0, 2 ** 60, 1)).toThrow(RangeError);
    expect(() => (n.seekData as unknown as (fd: number) => number)(3)).toThrow(TypeError);
    expect(() => n.ofdLock(3, 'x' as 'r', 0, 1)).toThrow(TypeError);
    expect(() => n.ofdTest(3, 'u' as 'r', 0, 1)).toThrow(TypeError);
  });

  it('takes OFD locks that conflict between open file descriptions', () => {
    const n = native();
    const a = openFd();
    const b = openFd();
    n.ofdLock(a, 'r', 100, 1);
    // Our own description never conflicts with itself.
    expect(n.ofdTest(a, 'w', 100, 1)).toBe(false);
    expect(n.ofdTest(b, 'w', 100, 1)).toBe(true);
    expect(n.ofdTest(b, 'r', 100, 1)).toBe(false);
    expect(n.ofdTest(b, 'w', 101, 1)).toBe(false);
    n.ofdLock(b, 'r', 100, 1); // shared locks coexist
    const e = thrown(() => n.ofdLock(b, 'w', 100, 1));
    expect(['EAGAIN', 'EACCES']).toContain(e.code);
    expect(e.syscall).toBe('fcntl');
    n.ofdLock(b, 'u', 100, 1);
    n.ofdLock(a, 'u', 100, 1);
    expect(n.ofdTest(b, 'w', 100, 1)).toBe(false);
    n.ofdLock(b, 'w', 100, 1);
    expect(n.ofdTest(a, 'r', 100, 1)).toBe(true);
  });

  it('sees OFD locks held by another process', () => {
    const n = native();
    const a = openFd();
    n.ofdLock(a, 'r', 200, 2);
    // A child process with its own open file description probes the bytes.
    const probe = `
      const n = require(${JSON.stringify(path.resolve('native/build/Release/blockd_native.node'))});
      const fd = require('fs').openSync(${JSON.stringify(file)}, 'r+');
      process.stdout.write(JSON.stringify([n.ofdTest(fd, 'w', 200, 1), n.ofdTest(fd, 'w', 201, 1), n.ofdTest(fd, 'w', 202, 1)]));`;
    const r = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual([true, true, false]);
  });

  it('refuses block device ioctls on a regular file', () => {
    const n = native();
    const fd = openFd();
    expect(thrown(() => n.blockDeviceSize(fd)).code).toBe('ENOTTY');
    expect(thrown(() => n.blockDeviceSectorSize(fd)).code).toBe('ENOTTY');
  });

  it('allocates aligned, zeroed buffers', () => {
    const n = native();
    for (const align of [512, 4096, 65536]) {
      const b = n.allocAligned(3 * align + 7, align);
      expect(b).toBeInstanceOf(Buffer);
      expect(b.length).toBe(3 * align + 7);
      expect(n.isAligned(b, align)).toBe(true);
      expect(b.every((x) => x === 0)).toBe(true);
      expect(n.isAligned(b.subarray(1), 2)).toBe(false);
      b.fill(1); // writable
    }
    expect(n.allocAligned(0, 4096).length).toBe(0);
    expect(() => n.allocAligned(10, 3)).toThrow(RangeError);
  });

  it('works with O_DIRECT reads into aligned memory', () => {
    const n = native();
    const fd = openFd(fs.constants.O_RDONLY | fs.constants.O_DIRECT);
    const b = n.allocAligned(4096, 4096);
    expect(fs.readSync(fd, b, 0, 4096, 0)).toBe(4096);
    expect(b[0]).toBe(0xab);
  });

  it("gives glibc's strerror texts", () => {
    const n = native();
    expect(n.strerror(2)).toBe('No such file or directory');
    expect(n.strerror(-2)).toBe('No such file or directory');
    expect(n.strerror(95)).toBe('Operation not supported');
    let err: unknown;
    try { fs.openSync(path.join(dir, 'nope'), 'r'); } catch (e) { err = e; }
    expect(errorText(err)).toBe('No such file or directory');
    expect(errorText(new Error('plain'))).toBe('plain');
  });

  it('sends on a socket without blocking, and reports a full or closed socket as -1', async () => {
    const sock = path.join(dir, 's.sock');
    const accepted = new Promise<net.Socket>((resolve) => {
      const server = net.createServer({ pauseOnConnect: true }, (s) => { server.close(); resolve(s); }).listen(sock);
    });
    const client = net.connect(sock);
    const serverSide = await accepted;
    const fd = (serverSide as unknown as { _handle: { fd: number } })._handle.fd;
    const received: Buffer[] = [];
    client.on('data', (b) => received.push(b));
    expect(native().sendNowait(fd, Buffer.from('hello'))).toBe(5);
    await new Promise((r) => setTimeout(r, 50));
    expect(Buffer.concat(received).toString()).toBe('hello');
    // The client stops reading: the socket fills, and a send then takes only part or nothing.
    client.pause();
    const big = Buffer.alloc(1 << 20);
    let sent = 0;
    for (let i = 0; i < 64 && sent !== -1; i++) sent = native().sendNowait(fd, big);
    expect(sent).toBe(-1);
    client.destroy();
    await new Promise((r) => setTimeout(r, 50));
    expect(native().sendNowait(fd, Buffer.from('x'))).toBe(-1);
    serverSide.destroy();
  });

  it('tells the user to run npm install when the addon is missing', () => {
    expect(() => loadAddon(path.join(dir, 'missing.node'))).toThrow(/run `npm install`/);
  });
});
