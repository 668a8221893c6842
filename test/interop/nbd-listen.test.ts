/** Listeners: Unix (stale socket replaced), TCP, an inherited fd (systemd socket activation), errors. */
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { ExportRegistry } from '../helpers/exports.ts';
import { NbdServer } from '../../src/nbd/server.ts';
import { memDriver, quietLogger, requireTool, runTool } from '../helpers/nbd.ts';
import { tempDir } from '../helpers/temp.ts';

const root = resolve(import.meta.dirname, '../..');

async function registry(): Promise<ExportRegistry> {
  const g = new BlockGraph();
  g.register(memDriver());
  await g.add({ driver: 'mem', 'node-name': 'n0', size: 1 << 20 });
  const r = new ExportRegistry();
  r.add(g, { id: 'e0', nodeName: 'n0' });
  return r;
}

describe('listeners', () => {
  it('a stale Unix socket file is replaced, and removed again on close', async () => {
    const dir = tempDir('blockd-nbd-l-');
    const path = join(dir, 's');
    const stale = createServer();
    await new Promise<void>((r) => stale.listen(path, r));
    // Simulate a crashed owner: the file stays, nobody listens.
    (stale as unknown as { _handle: { close(): void } })._handle.close();
    const server = new NbdServer(await registry(), { logger: quietLogger() });
    await server.listenUnix(path);
    expect((await runTool('nbdinfo', ['--size', `nbd+unix:///n0?socket=${path}`])).trim()).toBe(String(1 << 20));
    await server.close();
    expect(existsSync(path)).toBe(false);
  });

  it('TCP on an ephemeral port, IPv4 and IPv6 loopback', async () => {
    const server = new NbdServer(await registry(), { logger: quietLogger() });
    await server.listenTcp('127.0.0.1', 0);
    await server.listenTcp('::1', 0);
    const [a4, a6] = server.addresses() as { port: number }[];
    expect((await runTool('nbdinfo', ['--size', `nbd://127.0.0.1:${a4.port}/n0`])).trim()).toBe(String(1 << 20));
    expect((await runTool('nbdinfo', ['--size', `nbd://[::1]:${a6.port}/n0`])).trim()).toBe(String(1 << 20));
    await server.destroy();
  });

  it('a listener that cannot be created rejects; the server stays usable', async () => {
    const server = new NbdServer(await registry(), { logger: quietLogger() });
    await expect(server.listenUnix('/nonexistent-dir/x/s')).rejects.toThrow();
    await expect(server.listenTcp('127.0.0.1', -5)).rejects.toThrow();
    await server.listenTcp('127.0.0.1', 0);
    await server.close();
    await expect(server.listenTcp('127.0.0.1', 0)).rejects.toThrow('NBD server is shut down');
  });

  it('an inherited listening fd (systemd-socket-activate) serves clients', async () => {
    requireTool('systemd-socket-activate');
    const dir = tempDir('blockd-nbd-fd-');
    const path = join(dir, 's');
    const script = `
import { BlockGraph } from '${root}/src/blockdev/graph.ts';
import { nullDriver } from '${root}/src/blockdev/drivers/null.ts';
import { ExportRegistry } from '${root}/test/helpers/exports.ts';
import { NbdServer } from '${root}/src/nbd/server.ts';
import { pino } from 'pino';
const g = new BlockGraph(); g.register(nullDriver);
await g.add({ driver: 'null-co', 'node-name': 'n0', size: 3145728 });
const r = new ExportRegistry(); r.add(g, { id: 'e0', nodeName: 'n0' });
const s = new NbdServer(r, { logger: pino({ level: 'silent' }) });
await s.listenFd(Number(process.env.LISTEN_FDS) === 1 ? 3 : -1);
`;
    const child = spawn('systemd-socket-activate', ['-l', path, process.execPath, '--import', 'tsx', '--input-type=module', '-e', script],
      { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    try {
      const deadline = Date.now() + 10_000;
      while (!existsSync(path)) {
        if (Date.now() > deadline) throw new Error(`socket not created: ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect((await runTool('nbdinfo', ['--size', `nbd+unix:///n0?socket=${path}`], { timeoutMs: 30_000 })).trim()).toBe('3145728');
    } finally {
      child.kill('SIGTERM');
    }
  }, 40_000);
});
