/**
 * Helpers for the NBD server tests: a small in-memory driver with block
 * status (4 KiB blocks, allocated or hole), a graph/registry/server on a Unix
 * socket and TCP, and a raw-socket client for byte-level tests.
 */
import { connect, type Socket } from 'node:net';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { ReqFlag, type Extent } from '../../src/blockdev/request.ts';
import type { Driver, DriverOps } from '../../src/blockdev/driver.ts';
import { obj, opt } from '../../src/qapi/types.ts';
import { nullDriver } from '../../src/blockdev/drivers/null.ts';
import { ExportRegistry, type NbdExportOptions } from './exports.ts';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.ts';
import { tempDir } from './temp.ts';

export const BLOCK = 4096;

export interface MemState {
  data: Buffer; allocated: Uint8Array; flushes: number; writes: number; delayMs: number; failReads: boolean;
  /** Extra delay for a read at this offset (for out-of-order tests). */
  readDelay?: (offset: number) => number;
  /** Flags the driver saw on each write. */
  writeFlags: number[];
}

/** 'mem': size, optional alignment; reads of unallocated blocks return zeroes. */
export function memDriver(): Driver & { states: Map<string, MemState> } {
  const states = new Map<string, MemState>();
  return {
    name: 'mem',
    kind: 'protocol',
    states,
    options: obj('BlockdevOptionsMem', [opt('size', 'int'), opt('align', 'int'), opt('zero', 'bool')]),
    async open(options, ctx): Promise<DriverOps> {
      const size = (options.size as number | undefined) ?? 1 << 20;
      const st: MemState = {
        data: Buffer.alloc(size), allocated: new Uint8Array(Math.ceil(size / BLOCK)), flushes: 0, writes: 0, delayMs: 0, failReads: false, writeFlags: [],
      };
      states.set(ctx.nodeName, st);
      const delay = () => (st.delayMs ? new Promise((r) => setTimeout(r, st.delayMs)) : undefined);
      const mark = (o: number, l: number, v: number) => {
        for (let b = Math.floor(o / BLOCK); b * BLOCK < o + l; b++) {
          // Only whole blocks lose their allocation.
          if (v === 0 && (b * BLOCK < o || (b + 1) * BLOCK > o + l)) continue;
          st.allocated[b] = v;
        }
      };
      const ops: DriverOps = {
        length: () => st.data.length,
        limits: { alignment: (options.align as number | undefined) ?? 1, canFua: true },
        async read(o, buf) {
          await delay();
          const extra = st.readDelay?.(o) ?? 0;
          if (extra) await new Promise((r) => setTimeout(r, extra));
          if (st.failReads) throw Object.assign(new Error('injected EIO'), { code: 'EIO' });
          st.data.copy(buf, 0, o, o + buf.length);
        },
        async write(o, buf, flags) { await delay(); st.writes++; st.writeFlags.push(flags); buf.copy(st.data, o); mark(o, buf.length, 1); },
        async writeZeroes(o, l, flags) {
          await delay();
          st.data.fill(0, o, o + l);
          mark(o, l, flags & ReqFlag.MAY_UNMAP ? 0 : 1);
        },
        async discard(o, l) { st.data.fill(0, o, o + l); mark(o, l, 0); },
        async flush() { st.flushes++; },
        async blockStatus(o, l) {
          const out: Extent[] = [];
          const end = o + l;
          for (let pos = o; pos < end;) {
            const b = Math.floor(pos / BLOCK);
            const next = Math.min(end, (b + 1) * BLOCK);
            const a = st.allocated[b] === 1;
            out.push({ offset: pos, length: next - pos, data: a, zero: !a, allocated: a, depth: a ? 1 : 0 });
            pos = next;
          }
          return out;
        },
      };
      return ops;
    },
  };
}

export const quietLogger = (): Logger => pino({ level: process.env.NBD_TEST_LOG ?? 'silent' });

export interface Harness {
  graph: BlockGraph;
  registry: ExportRegistry;
  server: NbdServer;
  mem: ReturnType<typeof memDriver>;
  dir: string;
  sock: string;
  port: number;
  unixUri(name: string): string;
  tcpUri(name: string): string;
  close(): Promise<void>;
}

/** A server on a Unix socket and a TCP port with the given nodes and exports. */
export async function startHarness(
  nodes: Record<string, unknown>[],
  exports: NbdExportOptions[],
  serverOpts: Partial<NbdServerOptions> = {},
  /** More drivers the nodes may use (mem and null-co are always there). */
  drivers: Driver[] = [],
): Promise<Harness> {
  const graph = new BlockGraph();
  const mem = memDriver();
  graph.register(mem);
  graph.register(nullDriver);
  for (const d of drivers) graph.register(d);
  for (const n of nodes) await graph.add(n);
  const registry = new ExportRegistry();
  for (const e of exports) registry.add(graph, e);
  const server = new NbdServer(registry, { logger: quietLogger(), ...serverOpts });
  const dir = tempDir('blockd-nbd-');
  const sock = join(dir, 'nbd.sock');
  await server.listenUnix(sock);
  await server.listenTcp('127.0.0.1', 0);
  const addr = server.addresses()[1];
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    graph, registry, server, mem, dir, sock, port,
    unixUri: (name) => `nbd+unix:///${name}?socket=${sock}`,
    tcpUri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    close: () => server.destroy(),
  };
}

/** A raw socket that collects everything the server sends. */
export class RawClient {
  readonly socket: Socket;
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;

  constructor(path: string) {
    this.socket = connect(path);
    this.socket.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    this.socket.on('close', () => { this.closed = true; this.wake(); });
    this.socket.on('error', () => undefined);
  }

  private wake(): void { for (const w of this.waiters.splice(0)) w(); }

  /** Waits for exactly n bytes (rejects if the connection closes first). */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length}/${n} bytes`);
      if (Date.now() > deadline) throw new Error(`timed out with ${this.buf.length}/${n} bytes`);
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 50); });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  write(b: Buffer): void { this.socket.write(b); }

  /** Resolves true once the server closed the connection (false on timeout). */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 50); });
    return this.closed;
  }

  pending(): number { return this.buf.length; }

  destroy(): void { this.socket.destroy(); }
}

/** Fails (never skips) when a tool the test needs is missing. */
export function requireTool(name: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  if (r.status !== 0 || !r.stdout.trim()) throw new Error(`required tool '${name}' is not installed`);
}

/**
 * Runs a tool without blocking the event loop (the server under test lives
 * in this process); resolves with stdout, rejects with stderr on failure.
 */
export function runTool(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<string> {
  requireTool(cmd);
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    p.on('close', (code, signal) => {
      clearTimeout(t);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${code ?? signal}): ${err}${out}`));
    });
    p.stdin.on('error', () => undefined); // a tool that does not read stdin may exit first
    p.stdin.end(opts.input ?? '');
  });
}

/** The libnbd Python binding imports under Debian's own python3 only. */
export const SYSTEM_PYTHON = '/usr/bin/python3';

/** Runs a Python script with `import nbd, json, sys` done and `uri` set; returns its stdout. */
export async function nbdsh(uri: string, script: string, timeoutMs = 60_000): Promise<string> {
  const prelude = `import nbd, json, sys, errno\nuri = ${JSON.stringify(uri)}\n`;
  return runTool(SYSTEM_PYTHON, ['-c', prelude + script], { timeoutMs });
}

/** Negotiates with EXPORT_NAME (fixed newstyle, no zeroes, simple replies); resolves with the export size. */
export async function rawNegotiate(c: RawClient, name: string): Promise<number> {
  const g = await c.read(18);
  if (g.subarray(0, 8).toString() !== 'NBDMAGIC') throw new Error('bad greeting');
  const opt = Buffer.alloc(20 + Buffer.byteLength(name));
  opt.writeUInt32BE(3, 0); // fixed newstyle | no zeroes
  opt.writeBigUInt64BE(0x49484156454f5054n, 4);
  opt.writeUInt32BE(1, 12); // NBD_OPT_EXPORT_NAME
  opt.writeUInt32BE(Buffer.byteLength(name), 16);
  opt.write(name, 20);
  c.write(opt);
  const r = await c.read(10);
  return Number(r.readBigUInt64BE(0));
}

/** A transmission request header. */
export function request(type: number, offset: number, length: number, cookie: bigint, flags = 0, magic = 0x25609513): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(magic, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

/** Reads one simple reply: [error, cookie]. */
export async function simpleReplyOf(c: RawClient, timeoutMs = 5000): Promise<[number, bigint]> {
  const r = await c.read(16, timeoutMs);
  if (r.readUInt32BE(0) !== 0x67446698) throw new Error(`not a simple reply: ${r.toString('hex')}`);
  return [r.readUInt32BE(4), r.readBigUInt64BE(8)];
}
