/**
 * QMP over a chardev in client mode, side by side with qsd 7.2: `--chardev
 * socket,id=m0,path=P` without server=on (or host=,port=) makes the daemon
 * connect out to a peer listening there, as QEMU's iotests QemuStorageDaemon
 * helper starts it. The peer is greeted and served; no peer is a start-up
 * error; with reconnect=N the daemon keeps running, reports the first failed
 * attempt, connects once the peer listens, and again after a hang-up.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { getPort } from '../helpers/port.ts';
import { requireTool } from '../helpers/tools.ts';

type Who = 'qsd' | 'blockd';
const procs: ChildProcess[] = [];
const servers: Server[] = [];
afterEach(() => {
  for (const p of procs.splice(0)) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  for (const s of servers.splice(0)) s.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const NODE = ['--blockdev', 'driver=null-co,node-name=n0,size=1048576'];

function daemon(who: Who, args: string[]) {
  const proc = spawn(who === 'qsd' ? requireTool('qemu-storage-daemon') : BLOCKD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(proc);
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  proc.stdout!.resume();
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  return { proc, exited, stderr: () => stderr };
}

/** The peer: a listening socket whose connections are QMP lines read in order. */
class Peer {
  readonly conns: { socket: Socket; lines: Record<string, unknown>[] }[] = [];
  private constructor(readonly server: Server) {
    server.on('connection', (socket) => {
      const c = { socket, lines: [] as Record<string, unknown>[] };
      let buf = '';
      socket.on('data', (d) => {
        buf += d;
        for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
          c.lines.push(JSON.parse(buf.slice(0, i)) as Record<string, unknown>);
          buf = buf.slice(i + 1);
        }
      });
      socket.on('error', () => undefined);
      this.conns.push(c);
    });
  }

  static async listen(where: { path: string } | { port: number; host: string }): Promise<Peer> {
    const server = createServer();
    servers.push(server);
    await new Promise<void>((r) => server.listen(where, r));
    return new Peer(server);
  }

  async connection(n: number, ms = 30_000): Promise<{ socket: Socket; lines: Record<string, unknown>[] }> {
    for (const end = Date.now() + ms; this.conns.length <= n; await sleep(20)) if (Date.now() > end) throw new Error(`no connection #${n}`);
    return this.conns[n];
  }
}

async function reply(c: { socket: Socket; lines: Record<string, unknown>[] }, execute: string): Promise<unknown> {
  const before = c.lines.filter((l) => 'return' in l || 'error' in l).length;
  c.socket.write(`${JSON.stringify({ execute })}\n`);
  for (let i = 0; i < 500; i++) {
    const replies = c.lines.filter((l) => 'return' in l || 'error' in l);
    if (replies.length > before) return replies[before];
    await sleep(20);
  }
  throw new Error(`no reply to ${execute}`);
}

/** What the peer sees: the greeting's shape, the nodes, quit's reply, the exit status. */
async function served(who: Who, chardev: (dir: string) => Promise<{ opt: string; peer: Peer }>) {
  const dir = tempDir();
  const { opt, peer } = await chardev(dir);
  const d = daemon(who, [...NODE, '--chardev', opt, '--monitor', 'chardev=m0']);
  const c = await peer.connection(0);
  for (let i = 0; i < 250 && c.lines.length === 0; i++) await sleep(20);
  const greeting = c.lines[0] as { QMP?: { version?: unknown; capabilities?: unknown } };
  const caps = await reply(c, 'qmp_capabilities');
  const nodes = (await reply(c, 'query-named-block-nodes') as { return: { 'node-name': string }[] }).return.map((n) => n['node-name']);
  const quit = await reply(c, 'quit');
  return { greeting: Object.keys(greeting.QMP ?? {}), caps, nodes, quit, code: await d.exited, stderr: d.stderr() };
}

describe('QMP chardev in client mode', () => {
  it('path=P without server=on: connects to the peer listening at P and serves QMP, as qsd', async () => {
    const unix = async (dir: string) => {
      const path = join(dir, 'peer.sock');
      return { opt: `socket,id=m0,path=${path}`, peer: await Peer.listen({ path }) };
    };
    const qsd = await served('qsd', unix);
    const blockd = await served('blockd', unix);
    expect(qsd).toEqual({ greeting: ['version', 'capabilities'], caps: { return: {} }, nodes: ['n0'], quit: { return: {} }, code: 0, stderr: '' });
    expect(blockd).toEqual(qsd);
  });

  it('host=,port= over TCP, as qsd', async () => {
    const tcp = async () => {
      const port = await getPort();
      return { opt: `socket,id=m0,host=127.0.0.1,port=${port}`, peer: await Peer.listen({ host: '127.0.0.1', port }) };
    };
    const qsd = await served('qsd', tcp);
    const blockd = await served('blockd', tcp);
    expect(qsd.code).toBe(0);
    expect(blockd).toEqual(qsd);
  });

  it('no peer listening, or options that do not fit client mode: exit 1 with qsd\'s line', async () => {
    const dir = tempDir();
    const port = await getPort();
    const path = join(dir, 'nobody.sock');
    const cases = [
      `socket,id=m0,path=${path}`,
      `socket,id=m0,path=${path},server=off`,
      `socket,id=m0,path=${path},reconnect=0`,
      `socket,id=m0,host=127.0.0.1,port=${port}`,
      `socket,id=m0,path=${path},wait=off`,
      `socket,id=m0,path=${path},reconnect=1,wait=off`,
      `socket,id=m0,path=${path},server=on,reconnect=1`,
      `socket,id=m0,path=${path},reconnect=abc`,
      `socket,id=m0,path=${path},reconnect=1.5`,
    ];
    for (const opt of cases) {
      const seen: Record<string, unknown> = {};
      for (const who of ['qsd', 'blockd'] as const) {
        const d = daemon(who, [...NODE, '--chardev', opt, '--monitor', 'chardev=m0']);
        const code = await d.exited;
        seen[who] = { code, stderr: d.stderr().replace(/^(qemu-storage-daemon|blockd): /gm, 'PROG: ') };
      }
      expect(seen.blockd, opt).toEqual(seen.qsd);
    }
  });

  it('reconnect=1: keeps running, reports the first failed attempt once, connects when the peer listens and again after a hang-up, as qsd', async () => {
    const seen: Record<string, unknown> = {};
    for (const who of ['qsd', 'blockd'] as const) {
      const dir = tempDir();
      const path = join(dir, 'late.sock');
      const pidfile = join(dir, 'pid');
      const d = daemon(who, [...NODE, '--chardev', `socket,id=m0,path=${path},reconnect=1`, '--monitor', 'chardev=m0', '--pidfile', pidfile]);
      // Started (the pidfile is written once everything is up), then two more attempts' time.
      for (let i = 0; i < 1000 && !existsSync(pidfile); i++) await sleep(20);
      await sleep(2500);
      const runningWithoutPeer = d.proc.exitCode === null;
      const stderrBefore = d.stderr().replace(path, 'PATH').replace(/^(qemu-storage-daemon|blockd): /gm, 'PROG: ');
      const peer = await Peer.listen({ path });
      const first = await peer.connection(0, 5000);
      const firstCaps = await reply(first, 'qmp_capabilities');
      first.socket.destroy();
      const second = await peer.connection(1, 5000);
      const secondCaps = await reply(second, 'qmp_capabilities');
      const quit = await reply(second, 'quit');
      seen[who] = { runningWithoutPeer, stderrBefore, firstCaps, secondCaps, quit, code: await d.exited };
    }
    expect(seen.qsd).toEqual({
      runningWithoutPeer: true,
      stderrBefore: "PROG: Unable to connect character device m0: Failed to connect to 'PATH': No such file or directory\n",
      firstCaps: { return: {} }, secondCaps: { return: {} }, quit: { return: {} }, code: 0,
    });
    expect(seen.blockd).toEqual(seen.qsd);
  });
});
