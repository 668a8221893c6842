/**
 * NBD extended headers (issue 14 item 6) between blockd's own client (the
 * nbd driver's NbdClient and ops) and blockd's server, over a Unix socket:
 * neither qsd 7.2 nor libnbd 1.14 here has them. Data, block status with
 * 64-bit extents, 64-bit effect lengths on an 8 GiB sparse file, errors;
 * then the server's replies to crafted extended requests, byte for byte as
 * doc/proto.md lays them out, including the ones it must refuse; and a
 * compact client (nbdinfo, libnbd) on the same server, unaffected.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { fileDriver } from '../../src/blockdev/drivers/file/index.ts';
import { NbdClient } from '../../src/blockdev/drivers/nbd/client.ts';
import { nbdOps } from '../../src/blockdev/drivers/nbd/ops.ts';
import { parseNbdOptions } from '../../src/blockdev/drivers/nbd/options.ts';
import { ReqFlag } from '../../src/blockdev/request.ts';
import type { DriverOps } from '../../src/blockdev/driver.ts';
import { Cmd, CmdFlag, IHAVEOPT, Info, Opt, Rep } from '../../src/nbd-protocol/constants.ts';
import { RawClient, nbdsh, runTool, startHarness, type Harness } from '../helpers/nbd.ts';
import { tempDir } from '../helpers/temp.ts';
import { startDaemon, type Running } from '../helpers/daemons.ts';

const MB = 1 << 20;
const G = 2 ** 30;
let h: Harness;
const clients: NbdClient[] = [];

beforeAll(async () => {
  const big = join(tempDir('blockd-nbdext-'), 'big.raw');
  const fd = openSync(big, 'w');
  ftruncateSync(fd, 8 * G);
  closeSync(fd);
  h = await startHarness(
    [
      { driver: 'mem', 'node-name': 'm0', size: 64 * MB },
      { driver: 'file', 'node-name': 'f0', filename: big },
    ],
    [
      { id: 'e0', nodeName: 'm0', name: 'mem', writable: true },
      { id: 'e1', nodeName: 'f0', name: 'big', writable: true },
      { id: 'e2', nodeName: 'm0', name: 'ro' },
    ],
    {},
    [fileDriver],
  );
});

afterAll(async () => {
  for (const c of clients.splice(0)) await c.close();
  await h?.close();
});

async function open(name: string): Promise<{ c: NbdClient; ops: DriverOps }> {
  const c = await NbdClient.open(parseNbdOptions({ server: { type: 'unix', path: h.sock }, export: name }), pino({ level: 'silent' }));
  clients.push(c);
  return { c, ops: nbdOps(c, true) };
}

describe("blockd's nbd client against blockd's server", () => {
  it('negotiates extended headers (structured replies implied)', async () => {
    const { c } = await open('mem');
    expect(c.info).toMatchObject({ extended: true, structured: true, size: 64 * MB });
    expect(c.info.contextId).toBe(0);
  });

  it('data: many writes and reads in flight, a 32 MiB read, FUA, flush', async () => {
    const { ops } = await open('mem');
    const chunks = Array.from({ length: 16 }, () => randomBytes(256 * 1024));
    await Promise.all(chunks.map((b, i) => ops.write!(i * MB, b, i % 2 ? ReqFlag.FUA : 0)));
    await ops.flush!();
    const back = await Promise.all(chunks.map(async (_, i) => { const b = Buffer.alloc(256 * 1024); await ops.read!(i * MB, b); return b; }));
    back.forEach((b, i) => expect(b.equals(chunks[i])).toBe(true));
    const whole = Buffer.alloc(32 * MB);
    await ops.read!(0, whole);
    expect(whole.subarray(3 * MB, 3 * MB + 256 * 1024).equals(chunks[3])).toBe(true);
    expect(whole.subarray(3 * MB + 256 * 1024, 4 * MB).equals(Buffer.alloc(MB - 256 * 1024))).toBe(true);
  });

  it('block status through BLOCK_STATUS_EXT: what was written is data, the rest a hole', async () => {
    const { ops } = await open('mem');
    await ops.write!(40 * MB, Buffer.alloc(8192, 1), 0);
    const ext = await ops.blockStatus!(40 * MB - 4096, 3 * 4096, 0);
    expect(ext.map((e) => [e.offset - 40 * MB, e.length, e.data])).toEqual([[-4096, 4096, false], [0, 8192, true]]);
  });

  it('64-bit lengths on an 8 GiB sparse file: one 6 GiB write-zeroes, a 7 GiB hole extent, a 6 GiB trim', async () => {
    const { ops } = await open('big');
    const pattern = randomBytes(64 * 1024);
    await ops.write!(0, pattern, 0);
    await ops.write!(3 * G, pattern, 0);
    await ops.write!(7 * G + 64 * 1024, pattern, 0);
    await ops.writeZeroes!(G, 6 * G, ReqFlag.MAY_UNMAP);
    const b = Buffer.alloc(64 * 1024, 0xff);
    await ops.read!(3 * G, b);
    expect(b.equals(Buffer.alloc(64 * 1024))).toBe(true);
    // From 64 KiB to the data at 7 GiB + 64 KiB: one extent far over 2^32 bytes, sent as such.
    const ext = await ops.blockStatus!(64 * 1024, 8 * G - 64 * 1024, 0);
    expect(ext[0]).toMatchObject({ offset: 64 * 1024, length: 7 * G, data: false, zero: true });
    expect(ext[0].length).toBeGreaterThan(2 ** 32);
    await ops.discard!(G, 6 * G);
    await ops.read!(0, b);
    expect(b.equals(pattern)).toBe(true);
  });

  it("errors: the server's errnos come back as the block layer's", async () => {
    const { c } = await open('mem');
    await expect(c.submit({ type: Cmd.READ, flags: 0, offset: 64 * MB, length: 512, buf: Buffer.alloc(512) })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(c.submit({ type: Cmd.READ, flags: 0, offset: 0, length: 33 * MB, buf: Buffer.alloc(33 * MB) })).rejects.toMatchObject({ code: 'EINVAL' });
    const ro = await open('ro');
    expect(ro.c.info.extended).toBe(true);
    await expect(ro.ops.write!(0, Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'EPERM' });
    await expect(ro.c.submit({ type: Cmd.WRITE_ZEROES, flags: 0, offset: 0, length: 4096 })).rejects.toMatchObject({ code: 'EPERM' });
    // the connection is still usable after errors
    await c.submit({ type: Cmd.READ, flags: 0, offset: 0, length: 512, buf: Buffer.alloc(512) });
  });
});

// ---- crafted bytes ----

const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; };
const u16 = (n: number) => { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; };
const str = (s: string) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);
const hex = (s: string) => Buffer.from(s.replace(/[\s|]/g, ''), 'hex');

function option(opt: number, data = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(data.length, 12);
  return Buffer.concat([b, data]);
}

/** An extended request: magic 0x21e41c71, flags, type, cookie, offset, 64-bit length (then the payload). */
function xreq(type: number, flags: number, cookie: bigint, offset: number, length: bigint, payload?: Buffer, magic = 0x21e41c71): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt32BE(magic, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeBigUInt64BE(length, 24);
  return payload ? Buffer.concat([b, payload]) : b;
}

interface XReply { magic: number; flags: number; type: number; cookie: bigint; offset: bigint; payload: Buffer }

async function xreply(c: RawClient): Promise<XReply> {
  const r = await c.read(32);
  const len = Number(r.readBigUInt64BE(24));
  return {
    magic: r.readUInt32BE(0), flags: r.readUInt16BE(4), type: r.readUInt16BE(6), cookie: r.readBigUInt64BE(8), offset: r.readBigUInt64BE(16),
    payload: len ? await c.read(len) : Buffer.alloc(0),
  };
}

/** Fixed newstyle, EXTENDED_HEADERS, SET_META_CONTEXT base:allocation, GO: the raw socket in transmission. */
async function rawExtended(name: string): Promise<RawClient> {
  const c = new RawClient(h.sock);
  await c.read(18);
  c.write(u32(3));
  c.write(option(Opt.EXTENDED_HEADERS));
  const ack = await c.read(20);
  expect(ack.readUInt32BE(12)).toBe(Rep.ACK);
  c.write(option(Opt.SET_META_CONTEXT, Buffer.concat([str(name), u32(1), str('base:allocation')])));
  c.write(option(Opt.GO, Buffer.concat([str(name), u16(1), u16(Info.BLOCK_SIZE)])));
  // replies: META_CONTEXT, ACK, then INFO (BLOCK_SIZE), INFO (EXPORT), ACK
  for (let acks = 0; acks < 2;) {
    const r = await c.read(20);
    const len = r.readUInt32BE(16);
    if (len) await c.read(len);
    if (r.readUInt32BE(12) === Rep.ACK) acks++;
  }
  return c;
}

const EXT = 0x6e8a278c;

describe("blockd's server answering crafted extended requests", () => {
  it('WRITE with PAYLOAD_LEN, READ, FLUSH, BLOCK_STATUS: extended chunks echoing the request offset', async () => {
    const c = await rawExtended('mem');
    c.write(xreq(Cmd.WRITE, CmdFlag.PAYLOAD_LEN, 1n, 50 * MB, 5n, Buffer.from('hello')));
    expect(await c.read(32)).toEqual(hex('6e8a278c | 0001 | 0000 | 0000000000000001 | 0000000003200000 | 0000000000000000'));
    c.write(xreq(Cmd.READ, 0, 2n, 50 * MB, 5n));
    expect(await c.read(45)).toEqual(hex(
      '6e8a278c | 0001 | 0001 | 0000000000000002 | 0000000003200000 | 000000000000000d | 0000000003200000 | 68656c6c6f'));
    c.write(xreq(Cmd.FLUSH, 0, 3n, 0, 0n));
    expect(await c.read(32)).toEqual(hex('6e8a278c | 0001 | 0000 | 0000000000000003 | 0000000000000000 | 0000000000000000'));
    // 50 MiB: one data block (4 KiB); the next 4 KiB a hole; REQ_ONE cuts to one extent no longer than asked
    c.write(xreq(Cmd.BLOCK_STATUS, 0, 4n, 50 * MB, 8192n));
    expect(await c.read(72)).toEqual(hex(
      '6e8a278c | 0001 | 0006 | 0000000000000004 | 0000000003200000 | 0000000000000028 | 00000000 | 00000002' +
      '| 0000000000001000 | 0000000000000000 | 0000000000001000 | 0000000000000003'));
    c.write(xreq(Cmd.BLOCK_STATUS, CmdFlag.REQ_ONE, 5n, 50 * MB + 4096, 2n ** 20n));
    const one = await xreply(c);
    expect(one).toMatchObject({ magic: EXT, type: 6, cookie: 5n, offset: BigInt(50 * MB + 4096) });
    expect(one.payload.readUInt32BE(4)).toBe(1);
    expect(Number(one.payload.readBigUInt64BE(8))).toBeLessThanOrEqual(2 ** 20);
    c.destroy();
  });

  it('a 64-bit effect length: a 6 GiB TRIM and WRITE_ZEROES in one request each', async () => {
    const c = await rawExtended('big');
    c.write(xreq(Cmd.WRITE_ZEROES, 0, 1n, G, 6n * 2n ** 30n));
    expect(await xreply(c)).toMatchObject({ magic: EXT, flags: 1, type: 0, cookie: 1n, offset: BigInt(G) });
    c.write(xreq(Cmd.TRIM, 0, 2n, G, 6n * 2n ** 30n));
    expect(await xreply(c)).toMatchObject({ magic: EXT, flags: 1, type: 0, cookie: 2n, offset: BigInt(G) });
    c.destroy();
  });

  const errorOf = (r: XReply) => ({ error: r.payload.readUInt32BE(0), message: r.payload.subarray(6, 6 + r.payload.readUInt16BE(4)).toString() });

  it('refused with EINVAL, the stream staying in sync: a payload on FLUSH, a WRITE without PAYLOAD_LEN, a READ over 32 MiB, past the end', async () => {
    const c = await rawExtended('mem');
    c.write(xreq(Cmd.FLUSH, CmdFlag.PAYLOAD_LEN, 1n, 0, 3n, Buffer.from('xyz')));
    c.write(xreq(Cmd.WRITE, 0, 2n, 0, 4096n));
    c.write(xreq(Cmd.READ, 0, 3n, 0, BigInt(33 * MB)));
    c.write(xreq(Cmd.READ, 0, 4n, 64 * MB, 512n));
    c.write(xreq(Cmd.WRITE_ZEROES, 0, 5n, 0, 2n ** 40n));
    c.write(xreq(Cmd.FLUSH, 0, 6n, 0, 0n));
    const replies = [await xreply(c), await xreply(c), await xreply(c), await xreply(c), await xreply(c), await xreply(c)];
    expect(replies.map((r) => [r.magic, r.type, r.cookie, r.flags])).toEqual([
      [EXT, 0x8001, 1n, 1], [EXT, 0x8001, 2n, 1], [EXT, 0x8001, 3n, 1], [EXT, 0x8001, 4n, 1], [EXT, 0x8001, 5n, 1], [EXT, 0, 6n, 1],
    ]);
    expect(replies.slice(0, 5).map(errorOf).map((e) => e.error)).toEqual([22, 22, 22, 22, 22]);
    expect(c.closed).toBe(false);
    c.destroy();
  });

  it('a compact request under extended headers: EINVAL, then the server hangs up', async () => {
    const c = await rawExtended('mem');
    const compact = Buffer.alloc(28);
    compact.writeUInt32BE(0x25609513, 0);
    compact.writeUInt16BE(Cmd.READ, 6);
    compact.writeBigUInt64BE(9n, 8);
    compact.writeUInt32BE(512, 24);
    c.write(compact);
    c.write(Buffer.alloc(4)); // the 4 bytes that make it 32
    const r = await xreply(c);
    expect(r).toMatchObject({ magic: EXT, type: 0x8001, cookie: 9n });
    expect(errorOf(r).message).toBe('invalid magic (got 0x25609513)');
    expect(await c.waitClosed()).toBe(true);
  });

  it('a payload length over 32 MiB: EINVAL, then the server hangs up without reading it', async () => {
    const c = await rawExtended('mem');
    c.write(xreq(Cmd.WRITE, CmdFlag.PAYLOAD_LEN, 7n, 0, 2n ** 40n));
    const r = await xreply(c);
    expect(r).toMatchObject({ magic: EXT, type: 0x8001, cookie: 7n, offset: 0n });
    expect(errorOf(r)).toEqual({ error: 22, message: `payload length (${2 ** 40}) is larger than max len (${32 * MB})` });
    expect(await c.waitClosed()).toBe(true);
  });
});

describe('compact clients on the same server, unaffected', () => {
  it('nbdinfo and libnbd (1.14, no extended headers): structured replies and block status as before', async () => {
    const info = JSON.parse(await runTool('nbdinfo', ['--json', h.unixUri('mem')]));
    expect(info.exports[0]).toMatchObject({ 'export-name': 'mem', 'export-size': 64 * MB });
    const out = await nbdsh(h.unixUri('mem'), [
      'h = nbd.NBD()',
      'h.add_meta_context("base:allocation")',
      'h.connect_uri(uri)',
      'h.pwrite(b"abc" * 1000, 60 * 1024 * 1024)',
      'ext = []',
      'h.block_status(8192, 60 * 1024 * 1024, lambda ctx, off, es, err: ext.extend(es))',
      'print(json.dumps({"sr": h.get_structured_replies_negotiated(), "data": h.pread(3, 60 * 1024 * 1024).decode(), "ext": ext}))',
    ].join('\n'));
    // 3000 bytes written make the first 4 KiB block data; the next one is a hole (STATE_HOLE | STATE_ZERO)
    expect(JSON.parse(out)).toEqual({ sr: true, data: 'abc', ext: [4096, 0, 4096, 3] });
  });

  it("qemu-io and qemu-img (QEMU 7.2's NBD client, compact headers): data and map as before", async () => {
    const uri = h.unixUri('mem');
    const io = await runTool('qemu-io', ['-f', 'raw', '-c', `write -P 0x5a ${62 * MB} 64k`, '-c', `read -P 0x5a ${62 * MB} 64k`, uri]);
    expect(io).toContain('read 65536/65536 bytes');
    expect(io).not.toContain('Pattern verification failed');
    const map = JSON.parse(await runTool('qemu-img', ['map', '-f', 'raw', '--output=json', '--start-offset', String(62 * MB), '--max-length', String(MB), uri]));
    expect(map.map((e: { start: number; length: number; data: boolean }) => [e.start - 62 * MB, e.length, e.data])).toEqual([[0, 65536, true], [65536, MB - 65536, false]]);
  });
});

describe('two blockd daemons: driver=nbd in one, the export in the other', () => {
  it('negotiate extended headers (the server logs it); data through the front equals the back; qemu-img alone stays compact', async () => {
    const d = tempDir('blockd-nbdext2-');
    await runTool('qemu-img', ['create', '-q', '-f', 'raw', join(d, 'a.raw'), '16M']);
    const daemons: Running[] = [];
    try {
      const back = await startDaemon('blockd', ['--log-level', 'debug', '--blockdev', `driver=file,node-name=f,filename=${join(d, 'a.raw')}`,
        '--nbd-server', `addr.type=unix,addr.path=${join(d, 'b.sock')}`, '--export', 'type=nbd,id=e,node-name=f,name=disk,writable=on'], join(d, 'b.sock'));
      daemons.push(back);
      const front = await startDaemon('blockd', ['--blockdev', `driver=nbd,node-name=n,server.type=unix,server.path=${join(d, 'b.sock')},export=disk`,
        '--nbd-server', `addr.type=unix,addr.path=${join(d, 'f.sock')}`, '--export', 'type=nbd,id=e,node-name=n,name=front,writable=on'], join(d, 'f.sock'));
      daemons.push(front);
      const frontUri = `nbd+unix:///front?socket=${join(d, 'f.sock')}`;
      const backUri = `nbd+unix:///disk?socket=${join(d, 'b.sock')}`;
      await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 1M 1M', '-c', 'write -z 4M 4M', '-c', 'discard 8M 1M', '-c', 'flush', frontUri]);
      expect(await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', frontUri, backUri])).toContain('Images are identical');
      const done = back.stderr().split('\n').filter((l) => l.includes('NBD negotiation done')).map((l) => JSON.parse(l) as { extended: boolean });
      // the front's connection (extended), then qemu-img's own connection to the back (compact)
      expect(done.map((x) => x.extended)).toEqual([true, false]);
    } finally {
      for (const x of daemons.reverse()) await x.stop();
    }
  });
});
