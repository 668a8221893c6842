/**
 * The nbd driver's client against a scripted server (in process, built from
 * src/nbd-protocol): negotiation (structured replies, one meta context, GO
 * with block sizes), limits from NBD_INFO_BLOCK_SIZE and the transmission
 * flags, READ chunks out of order and byte by byte, error chunks as the
 * block layer's errors, block status of the negotiated context only,
 * write-zeroes flags, a reply to an unknown cookie ending the client; and
 * QEMU's NBD filename syntax.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { tempDir } from '../helpers/temp.ts';
import { ByteQueue } from '../../src/nbd-protocol/byte-queue.ts';
import { Cmd, CmdFlag, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, Info, Opt, Rep, TxFlag, STATE_HOLE, STATE_ZERO } from '../../src/nbd-protocol/constants.ts';
import { buildGreeting } from '../../src/nbd-protocol/handshake.ts';
import { decodeOptionRequest, parseMetaContextRequestData } from '../../src/nbd-protocol/option-requests.ts';
import { buildInfoPayload, buildMetaContextPayload, buildOptionReply } from '../../src/nbd-protocol/option-replies.ts';
import { readExtendedRequestHeader, readRequestHeader, type RequestHeader } from '../../src/nbd-protocol/requests.ts';
import { chunkBlockStatus, chunkDataHeader, chunkError, chunkHole, chunkNone, simpleReply } from '../../src/nbd-protocol/replies.ts';
import { NbdClient } from '../../src/blockdev/drivers/nbd/client.ts';
import { nbdOps } from '../../src/blockdev/drivers/nbd/ops.ts';
import { parseNbdFilename } from '../../src/blockdev/drivers/nbd/filename.ts';
import { parseNbdOptions } from '../../src/blockdev/drivers/nbd/options.ts';
import { ReqFlag } from '../../src/blockdev/request.ts';

const SIZE = 1 << 20;
const FLAGS = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO;
type Handler = (r: RequestHeader, data: Buffer | undefined, send: (...b: Buffer[]) => void) => void;

const servers: Server[] = [];
const clients: NbdClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

/**
 * A server that negotiates like qsd and hands each request to `handle`; `trickle` sends replies one byte at a time.
 * With `extended` it acknowledges NBD_OPT_EXTENDED_HEADERS (as QEMU 8.2+) and frames 32-byte requests; `options`
 * collects the options the client sent; `goUnsupported` answers GO with ERR_UNSUP.
 */
async function scripted(handle: Handler, opts: {
  trickle?: boolean; blockSize?: [number, number, number]; extended?: boolean; size?: number; options?: number[]; goUnsupported?: boolean;
} = {}): Promise<string> {
  const path = join(tempDir('blockd-nbdcu-'), 's.sock');
  const srv = createServer((sock: Socket) => {
    const q = new ByteQueue();
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    const send = (...bufs: Buffer[]) => {
      const all = Buffer.concat(bufs);
      if (!opts.trickle) { sock.write(all); return; }
      for (let i = 0; i < all.length; i++) sock.write(all.subarray(i, i + 1));
    };
    sock.write(buildGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    sock.on('error', () => undefined);
    sock.on('data', (b) => {
      q.push(b);
      for (;;) {
        if (phase === 'flags') {
          if (q.length < 4) return;
          q.discard(4);
          phase = 'options';
        } else if (phase === 'options') {
          const o = decodeOptionRequest(q);
          if (!o) return;
          opts.options?.push(o.option);
          if (o.option === Opt.STRUCTURED_REPLY) sock.write(buildOptionReply(o.option, Rep.ACK));
          else if (o.option === Opt.EXTENDED_HEADERS && opts.extended) sock.write(buildOptionReply(o.option, Rep.ACK));
          else if (o.option === Opt.GO && opts.goUnsupported) sock.write(buildOptionReply(o.option, Rep.ERR_UNSUP));
          else if (o.option === Opt.SET_META_CONTEXT) {
            const m = parseMetaContextRequestData(o.data, o.option);
            sock.write(buildOptionReply(o.option, Rep.META_CONTEXT, buildMetaContextPayload(7, m.queries[0]!)));
            sock.write(buildOptionReply(o.option, Rep.ACK));
          } else if (o.option === Opt.GO) {
            sock.write(buildOptionReply(o.option, Rep.INFO, buildInfoPayload({ type: Info.EXPORT, size: opts.size ?? SIZE, transmissionFlags: FLAGS })));
            if (opts.blockSize) {
              const [minimum, preferred, maximum] = opts.blockSize;
              sock.write(buildOptionReply(o.option, Rep.INFO, buildInfoPayload({ type: Info.BLOCK_SIZE, minimum, preferred, maximum })));
            }
            sock.write(buildOptionReply(o.option, Rep.ACK));
            phase = 'transmission';
          } else sock.write(buildOptionReply(o.option, Rep.ERR_UNSUP));
        } else {
          const hs = opts.extended ? 32 : 28;
          if (q.length < hs) return;
          const h = opts.extended ? readExtendedRequestHeader(q.peek(32), q.at) : readRequestHeader(q.peek(28), q.at);
          const n = (opts.extended ? h.flags & CmdFlag.PAYLOAD_LEN : h.type === Cmd.WRITE) ? h.length : 0;
          if (q.length < hs + n) return;
          q.discard(hs);
          const data = n ? Buffer.from(q.take(n)) : undefined;
          if (h.type === Cmd.DISC) { sock.end(); return; }
          handle(h, data, send);
        }
      }
    });
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(path, r));
  return path;
}

async function open(path: string) {
  const c = await NbdClient.open(parseNbdOptions({ server: { type: 'unix', path } }), pino({ level: 'silent' }));
  clients.push(c);
  return { c, ops: nbdOps(c, true) };
}

describe('nbd client driver against a scripted server', () => {
  it('negotiates limits and capabilities from the server', async () => {
    const { c, ops } = await open(await scripted(() => undefined, { blockSize: [4096, 65536, 1 << 20] }));
    expect(c.info).toMatchObject({ size: SIZE, structured: true, contextId: 7, minBlock: 4096, maxBlock: 1 << 20 });
    expect(ops.limits).toEqual({ alignment: 4096, maxTransfer: 1 << 20, canFua: true, canZero: true, canTrim: true });
  });

  it('assembles a READ from chunks in any order, sent one byte at a time', async () => {
    const path = await scripted((h, _d, send) => {
      const c = { cookieHi: h.cookieHi, cookieLo: h.cookieLo };
      const half = h.length / 2;
      send(chunkDataHeader(c, false, h.offset + half, half), Buffer.alloc(half, 0xab), chunkHole(c, false, h.offset, half), chunkNone(c));
    }, { trickle: true });
    const { ops } = await open(path);
    const buf = Buffer.alloc(8192, 0xff);
    await ops.read!(4096, buf);
    expect(buf.subarray(0, 4096).equals(Buffer.alloc(4096))).toBe(true);
    expect(buf.subarray(4096).equals(Buffer.alloc(4096, 0xab))).toBe(true);
  });

  it('answers many requests in flight, replies in reverse order', async () => {
    const held: (() => void)[] = [];
    const path = await scripted((h, _d, send) => {
      held.push(() => send(simpleReply(h, 0)));
      if (held.length === 20) for (const f of held.splice(0).reverse()) f();
    });
    const { ops } = await open(path);
    const writes = Array.from({ length: 20 }, (_, i) => ops.write!(i * 512, Buffer.alloc(512, i), 0));
    await Promise.all(writes);
  });

  it('turns error chunks into the block layer errors, with the server message', async () => {
    const path = await scripted((h, _d, send) => send(chunkError(h, 28, 'no room at the inn')));
    const { ops } = await open(path);
    await expect(ops.write!(0, Buffer.alloc(512), ReqFlag.FUA)).rejects.toMatchObject({ code: 'ENOSPC', message: 'no room at the inn' });
  });

  it('maps write-zeroes flags: MAY_UNMAP drops NO_HOLE, NO_FALLBACK sends FAST_ZERO, FUA passes', async () => {
    const seen: number[] = [];
    const path = await scripted((h, _d, send) => { seen.push(h.flags); send(simpleReply(h, 0)); });
    const { ops } = await open(path);
    await ops.writeZeroes!(0, 4096, 0);
    await ops.writeZeroes!(0, 4096, ReqFlag.MAY_UNMAP | ReqFlag.FUA);
    await ops.writeZeroes!(0, 4096, ReqFlag.NO_FALLBACK);
    expect(seen).toEqual([CmdFlag.NO_HOLE, CmdFlag.FUA, CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO]);
  });

  it('keeps block status of the negotiated context only, clipped to the request', async () => {
    const path = await scripted((h, _d, send) => {
      send(chunkBlockStatus(h, false, 9, [{ length: h.length, flags: 0 }]),
        chunkBlockStatus(h, true, 7, [{ length: 4096, flags: 0 }, { length: 1 << 20, flags: STATE_HOLE | STATE_ZERO }]));
    });
    const { ops } = await open(path);
    expect(await ops.blockStatus!(0, 65536, 0)).toEqual([
      { offset: 0, length: 4096, data: true, zero: false, allocated: true, depth: 1 },
      { offset: 4096, length: 61440, data: false, zero: true, allocated: true, depth: 1 },
    ]);
  });

  it('a reply to an unknown cookie ends the client: everything fails with EIO', async () => {
    const path = await scripted((h, _d, send) => send(simpleReply({ cookieHi: 0, cookieLo: h.cookieLo + 1000 }, 0)));
    const { ops } = await open(path);
    await expect(ops.flush!()).rejects.toMatchObject({ code: 'EIO' });
    await expect(ops.read!(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EIO' });
  });
});

describe('nbd client driver: extended headers (QEMU 8.2+ client behaviour)', () => {
  const ok = (h: RequestHeader) => chunkNone(h);

  it('asks for extended headers first; a server that refuses them gets STRUCTURED_REPLY, then compact headers', async () => {
    const options: number[] = [];
    const { c } = await open(await scripted(() => undefined, { options }));
    expect(options).toEqual([Opt.EXTENDED_HEADERS, Opt.STRUCTURED_REPLY, Opt.SET_META_CONTEXT, Opt.GO]);
    expect(c.info).toMatchObject({ extended: false, structured: true });
  });

  it('a server that acknowledges them: no STRUCTURED_REPLY, 32-byte requests, WRITE with PAYLOAD_LEN', async () => {
    const options: number[] = [];
    const seen: { h: RequestHeader; data?: string }[] = [];
    const path = await scripted((h, data, send) => { seen.push({ h, data: data?.toString() }); send(ok(h)); }, { extended: true, options });
    const { c, ops } = await open(path);
    expect(options).toEqual([Opt.EXTENDED_HEADERS, Opt.SET_META_CONTEXT, Opt.GO]);
    expect(c.info).toMatchObject({ extended: true, structured: true });
    await ops.write!(4096, Buffer.from('abc'), ReqFlag.FUA);
    await ops.flush!();
    expect(seen.map((x) => [x.h.type, x.h.flags, x.h.offset, x.h.length, x.h.extended, x.data])).toEqual([
      [Cmd.WRITE, CmdFlag.PAYLOAD_LEN | CmdFlag.FUA, 4096, 3, true, 'abc'],
      [Cmd.FLUSH, 0, 0, 0, true, undefined],
    ]);
  });

  it('64-bit lengths: write-zeroes, trim and block status of 6 GiB go out as one request each; 64-bit extents come back', async () => {
    const G = 2 ** 30;
    const seen: RequestHeader[] = [];
    const path = await scripted((h, _d, send) => {
      seen.push(h);
      if (h.type === Cmd.BLOCK_STATUS) send(chunkBlockStatus(h, true, 7, [{ length: 5 * G, flags: STATE_HOLE | STATE_ZERO }, { length: 2 * G, flags: 0 }]));
      else send(ok(h));
    }, { extended: true, size: 8 * G });
    const { ops } = await open(path);
    await ops.writeZeroes!(G, 6 * G, ReqFlag.MAY_UNMAP);
    await ops.discard!(G, 6 * G);
    const ext = await ops.blockStatus!(0, 6 * G, 0);
    expect(seen.map((h) => [h.type, h.offset, h.length])).toEqual([
      [Cmd.WRITE_ZEROES, G, 6 * G], [Cmd.TRIM, G, 6 * G], [Cmd.BLOCK_STATUS, 0, 6 * G],
    ]);
    expect(ext.map((e) => [e.offset, e.length, e.data, e.zero])).toEqual([[0, 5 * G, false, true], [5 * G, G, true, false]]);
  });

  it('the same without extended headers: write-zeroes split at the transfer limit, block status under 2 GiB', async () => {
    const G = 2 ** 30;
    const seen: RequestHeader[] = [];
    const path = await scripted((h, _d, send) => {
      seen.push(h);
      if (h.type === Cmd.BLOCK_STATUS) send(chunkBlockStatus(h, true, 7, [{ length: h.length, flags: 0 }]));
      else send(simpleReply(h, 0));
    }, { size: 8 * G });
    const { ops } = await open(path);
    await ops.writeZeroes!(0, 256 * 1024 * 1024, 0);
    expect(seen.filter((h) => h.type === Cmd.WRITE_ZEROES)).toHaveLength(8);
    const ext = await ops.blockStatus!(0, 6 * G, 0);
    expect(ext[0].length).toBeLessThan(2 * G);
  });

  it('a reply that does not echo the request offset ends the client (EIO)', async () => {
    const path = await scripted((h, _d, send) => send(chunkNone({ ...h, offset: h.offset + 512 })), { extended: true });
    const { ops } = await open(path);
    await expect(ops.read!(4096, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EIO' });
    await expect(ops.flush!()).rejects.toMatchObject({ code: 'EIO' });
  });

  it('a compact BLOCK_STATUS chunk under extended headers ends the client (EIO)', async () => {
    const path = await scripted((h, _d, send) => send(chunkBlockStatus({ cookieHi: h.cookieHi, cookieLo: h.cookieLo }, true, 7, [{ length: 4096, flags: 0 }])),
      { extended: true });
    const { ops } = await open(path);
    await expect(ops.blockStatus!(0, 4096, 0)).rejects.toMatchObject({ code: 'EIO' });
    await expect(ops.read!(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EIO' });
  });

  it('GO refused after extended headers were acknowledged: no EXPORT_NAME fallback, the open fails', async () => {
    const options: number[] = [];
    const path = await scripted(() => undefined, { extended: true, goUnsupported: true, options });
    await expect(open(path)).rejects.toThrow('Server refused NBD_OPT_GO after acknowledging extended headers');
    expect(options).not.toContain(Opt.EXPORT_NAME);
  });
});

describe("QEMU's NBD filenames", () => {
  it('parses URIs and the legacy syntax', () => {
    expect(parseNbdFilename('nbd://example.org/disk')).toEqual({ export: 'disk', server: { type: 'inet', host: 'example.org', port: '10809' } });
    expect(parseNbdFilename('nbd+tcp://[::1]:1234')).toEqual({ server: { type: 'inet', host: '::1', port: '1234' } });
    expect(parseNbdFilename('nbd+unix:///d0?socket=/run/nbd.sock')).toEqual({ export: 'd0', server: { type: 'unix', path: '/run/nbd.sock' } });
    expect(parseNbdFilename('nbd:unix:/run/nbd.sock:exportname=d0')).toEqual({ export: 'd0', server: { type: 'unix', path: '/run/nbd.sock' } });
    expect(parseNbdFilename('nbd:localhost:10810')).toEqual({ server: { type: 'inet', host: 'localhost', port: '10810' } });
  });

  it("refuses what QEMU refuses, with QEMU's texts", () => {
    for (const bad of ['nbd+unix:///d0', 'nbd+unix://host/d0?socket=/s', 'nbd://h/d?socket=/s', 'nbd+unix:///d?socket=/s&x=1', 'nbd+foo://h/d']) {
      expect(() => parseNbdFilename(bad), bad).toThrow('No valid URL specified');
    }
    expect(() => parseNbdFilename('nbdx:localhost:1')).toThrow("File name string for NBD must start with 'nbd:'");
  });
});
