/**
 * A minimal NBD client over a raw socket for load runs (thousands at once,
 * where libnbd per connection would cost a process each): fixed newstyle,
 * NBD_OPT_EXPORT_NAME with no zeroes, simple replies, pipelined requests.
 */
import { connect, type Socket } from 'node:net';

const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const IHAVEOPT = 0x49484156454f5054n;

export type Endpoint = { path: string } | { host: string; port: number };

export class RawNbd {
  readonly socket: Socket;
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private cookie = 1n;
  private readonly pending = new Map<bigint, { len: number; resolve: (err: number) => void }>();
  size = 0;
  closed = false;

  constructor(ep: Endpoint) {
    this.socket = 'path' in ep ? connect(ep.path) : connect(ep.port, ep.host);
    this.socket.on('data', (d) => { this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d; this.pump(); for (const w of this.waiters.splice(0)) w(); });
    const end = () => { this.closed = true; for (const w of this.waiters.splice(0)) w(); for (const p of this.pending.values()) p.resolve(-1); this.pending.clear(); };
    this.socket.on('close', end);
    this.socket.on('error', end);
  }

  private negotiated = false;

  private async take(n: number, timeoutMs: number): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error('connection closed');
      if (Date.now() > deadline) throw new Error('timeout');
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 200).unref(); });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Greeting, flags, NBD_OPT_EXPORT_NAME. */
  async negotiate(name: string, timeoutMs = 30_000): Promise<void> {
    const g = await this.take(18, timeoutMs);
    if (g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('not a newstyle server');
    const flags = Buffer.alloc(4); flags.writeUInt32BE(3);
    const opt = Buffer.alloc(16); opt.writeBigUInt64BE(IHAVEOPT); opt.writeUInt32BE(1, 8); opt.writeUInt32BE(Buffer.byteLength(name), 12);
    this.socket.write(Buffer.concat([flags, opt, Buffer.from(name)]));
    const r = await this.take(10, timeoutMs);
    this.size = Number(r.readBigUInt64BE(0));
    this.negotiated = true;
  }

  private pump(): void {
    if (!this.negotiated) return;
    while (this.buf.length >= 16) {
      if (this.buf.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) { this.socket.destroy(); return; }
      const cookie = this.buf.readBigUInt64BE(8);
      const p = this.pending.get(cookie);
      const len = p?.len ?? 0;
      if (this.buf.length < 16 + len) return;
      const err = this.buf.readUInt32BE(4);
      this.buf = this.buf.subarray(16 + (err ? 0 : len));
      this.pending.delete(cookie);
      p?.resolve(err);
    }
  }

  /** Sends one request; resolves with the reply's error (0 ok, -1 connection lost). Reads resolve once their data arrived. */
  request(type: 0 | 1 | 3, offset: number, length: number, data?: Buffer): Promise<number> {
    const cookie = this.cookie++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    const done = new Promise<number>((resolve) => this.pending.set(cookie, { len: type === 0 ? length : 0, resolve }));
    this.socket.write(data ? Buffer.concat([h, data]) : h);
    return done;
  }

  close(): void { this.socket.destroy(); }
}
