/**
 * driver=nbd beside qsd 7.2: the same --blockdev/blockdev-add against the
 * same servers (nbdkit memory and file, a qsd export, a blockd export) give
 * the same query-named-block-nodes entry and the same errors (a refused
 * connection, a missing socket, a missing export, a read-only export, an
 * x-dirty-bitmap the server lacks); then real clients through an nbd node
 * that blockd re-exports: qemu-io writes, zeroes and discards, nbdinfo's
 * map keeps the remote holes, qemu-img compare sees the same bytes, and the
 * command line's start-up error equals qsd's.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { qmpDaemon, cleanupsAfterEach } from '../helpers/live.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import { startNbdkit } from '../helpers/nbdkit.ts';
import { getPort } from '../helpers/port.ts';
import { requireTool, run } from '../helpers/tools.ts';

const cleanups = cleanupsAfterEach();

let seq = 0;
/** A daemon with a QMP monitor, in its own folder under `dir` (the monitor socket is named after the daemon kind). */
async function daemon(who: Who, dir: string, extra: string[] = []) {
  const own = join(dir, `d${seq++}`);
  mkdirSync(own);
  const d = await qmpDaemon(who, own, extra);
  cleanups.push(async () => { d.qmp.close(); await d.proc.stop(); });
  return d;
}

const ask = (d: { qmp: { execute(c: string, a?: Record<string, unknown>): Promise<unknown> } }, cmd: string, args?: Record<string, unknown>) =>
  d.qmp.execute(cmd, args).then((r) => ({ ok: r }), (e: { errorClass?: string; desc?: string; message: string }) => ({ error: e.errorClass, desc: e.desc ?? e.message }));

describe('driver=nbd as qsd', () => {
  it('opens the same servers with the same query-named-block-nodes entries and fails with the same errors', async () => {
    const dir = tempDir('blockd-nbdc-');
    const mem = await startNbdkit(join(dir, 'mem.sock'), ['memory', '64M']);
    cleanups.push(() => mem.stop());
    const img = join(dir, 'ro.raw');
    run('qemu-img', ['create', '-q', '-f', 'raw', img, '16M']);
    const port = await getPort();
    const server = await daemon('qsd', dir, [
      '--blockdev', `driver=file,node-name=f,filename=${img},read-only=on`,
      '--nbd-server', `addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`,
      '--export', 'type=nbd,id=e,node-name=f,name=ro',
    ]);
    expect(server).toBeTruthy();
    const inet = { type: 'inet', host: '127.0.0.1', port: String(port) };
    const cases: Record<string, unknown>[] = [
      { server: { type: 'unix', path: mem.sock } },
      { server: { type: 'unix', path: mem.sock }, export: 'anything', 'reconnect-delay': 3 },
      { server: inet, export: 'ro', 'read-only': true },
      { server: { ...inet, ipv4: true }, export: 'ro', 'read-only': true, 'open-timeout': 1 },
      { server: inet, export: 'ro', 'read-only': true, 'x-dirty-bitmap': 'qemu:allocation-depth' },
      // Errors: a read-only export opened read-write, a missing export, a context the server lacks, nobody listening.
      { server: inet, export: 'ro' },
      { server: inet, export: 'ro', 'auto-read-only': true },
      { server: inet, export: 'nope' },
      { server: inet, export: 'ro', 'read-only': true, 'x-dirty-bitmap': 'qemu:dirty-bitmap:missing' },
      { server: { type: 'inet', host: '127.0.0.1', port: String(await getPort()) } },
      { server: { type: 'unix', path: join(dir, 'missing.sock') } },
    ];
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      const d = await daemon(who, dir);
      for (const [i, c] of cases.entries()) {
        const r = await ask(d, 'blockdev-add', { driver: 'nbd', 'node-name': `n${i}`, ...c });
        seen[who].push(r);
      }
      const nodes = (await d.qmp.execute('query-named-block-nodes')) as Record<string, unknown>[];
      seen[who].push(nodes.sort((a, b) => String(a['node-name']).localeCompare(String(b['node-name']))));
    }
    expect(seen.blockd).toEqual(seen.qsd);
    const nodes = seen.qsd.at(-1) as { 'node-name': string; file: string; ro: boolean }[];
    expect(nodes.map((n) => n.file)).toEqual([
      `nbd+unix://?socket=${mem.sock}`,
      `nbd+unix:///anything?socket=${mem.sock}`,
      `nbd://127.0.0.1:${port}/ro`,
      expect.stringMatching(/^json:\{.*"server.ipv4": true/),
      `nbd://127.0.0.1:${port}/ro`,
    ]);
    // auto-read-only fell back to read-only; qsd's export has no qemu:allocation-depth context.
    expect(nodes.map((n) => n.ro)).toEqual([false, false, true, true, true]);
    expect(seen.qsd.filter((r) => 'error' in (r as object)).length).toBe(6);
  });

  it('fails on the command line as qsd does', async () => {
    const dir = tempDir('blockd-nbdc-');
    const fails = (who: Who, args: string[]) => {
      const r = spawnSync(who === 'qsd' ? requireTool('qemu-storage-daemon') : BLOCKD, args, { encoding: 'utf8', timeout: 20_000 });
      return { status: r.status, text: r.stderr.trim().replace(/^(qemu-storage-daemon|blockd): /, '') };
    };
    const args = ['--blockdev', `driver=nbd,node-name=n0,server.type=unix,server.path=${join(dir, 'none.sock')}`];
    const [q, b] = BOTH.map((who) => fails(who, args));
    expect(b).toEqual(q);
    expect(q.text).toContain('Failed to connect to');
  });
});

describe('driver=nbd with real clients', () => {
  for (const remote of ['nbdkit memory', 'nbdkit file', 'blockd'] as const) {
    it(`a blockd export of an nbd node fronting ${remote}: qemu-io, nbdinfo --map and qemu-img compare`, async () => {
      const dir = tempDir('blockd-nbdc-');
      const size = 32 * 1024 * 1024;
      let remoteUri: string;
      const remoteSock = join(dir, 'remote.sock');
      if (remote === 'blockd') {
        const img = join(dir, 'remote.qcow2');
        run('qemu-img', ['create', '-q', '-f', 'qcow2', img, String(size)]);
        await daemon('blockd', dir, [
          '--blockdev', `driver=file,node-name=rf,filename=${img}`, '--blockdev', 'driver=qcow2,node-name=r,file=rf',
          '--nbd-server', `addr.type=unix,addr.path=${remoteSock}`, '--export', 'type=nbd,id=re,node-name=r,name=remote,writable=on',
        ]);
        remoteUri = `nbd+unix:///remote?socket=${remoteSock}`;
      } else {
        const plugin = remote === 'nbdkit memory' ? ['memory', String(size)] : ['file', join(dir, 'remote.raw')];
        if (remote === 'nbdkit file') run('truncate', ['-s', String(size), join(dir, 'remote.raw')]);
        const k = await startNbdkit(remoteSock, plugin);
        cleanups.push(() => k.stop());
        remoteUri = `nbd+unix:///?socket=${remoteSock}`;
      }
      const front = join(dir, 'front.sock');
      await daemon('blockd', dir, [
        '--blockdev', `driver=nbd,node-name=n0,server.type=unix,server.path=${remoteSock}${remote === 'blockd' ? ',export=remote' : ''}`,
        '--nbd-server', `addr.type=unix,addr.path=${front}`, '--export', 'type=nbd,id=e,node-name=n0,name=disk,writable=on',
      ]);
      const uri = `nbd+unix:///disk?socket=${front}`;
      run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1M 3M', '-c', 'write -P 0xcd -f 5M 64k', '-c', 'write -z 2M 512k',
        '-c', 'discard 3M 1M', '-c', 'aio_write -P 0x11 10M 1M', '-c', 'aio_write -P 0x22 12M 1M', '-c', 'aio_flush', '-c', 'flush', uri]);
      run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 1M 1M', '-c', 'read -P 0 2M 512k', '-c', 'read -P 0xcd 5M 64k', '-c', 'read -P 0x22 12M 1M', uri]);
      const cmp = run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri, remoteUri]);
      expect(cmp).toContain('Images are identical');
      // The remote's holes show through the node: block status comes from base:allocation.
      const map = JSON.parse(run('nbdinfo', ['--map', '--json', uri])) as { offset: number; length: number; type: number }[];
      const data = map.filter((e) => (e.type & 1) === 0).reduce((n, e) => n + e.length, 0);
      expect(data).toBeGreaterThan(0);
      expect(data).toBeLessThan(size / 2);
      expect(map.at(-1)!.offset + map.at(-1)!.length).toBe(size);
    });
  }
});

describe('driver=nbd x-dirty-bitmap as qsd', () => {
  it("a node on a dirty bitmap context reports its extents as base:allocation, the same through blockd and qsd", async () => {
    const dir = tempDir('blockd-nbdc-');
    const img = join(dir, 'src.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', img, '8M']);
    run('qemu-io', ['-c', 'write -P 1 0 2M', img]);
    const srvSock = join(dir, 'srv.sock');
    const server = await daemon('qsd', dir, [
      '--blockdev', `driver=file,node-name=f,filename=${img}`, '--blockdev', 'driver=qcow2,node-name=d,file=f',
      '--nbd-server', `addr.type=unix,addr.path=${srvSock}`,
    ]);
    await server.qmp.execute('block-dirty-bitmap-add', { node: 'd', name: 'b0' });
    await server.qmp.execute('block-export-add', { type: 'nbd', id: 'w', 'node-name': 'd', name: 'w', writable: true });
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 2 1M 512k', '-c', 'write -P 3 5M 64k', `nbd+unix:///w?socket=${srvSock}`]);
    await server.qmp.execute('block-dirty-bitmap-disable', { node: 'd', name: 'b0' });
    await server.qmp.execute('block-export-add', { type: 'nbd', id: 'r', 'node-name': 'd', name: 'r', bitmaps: ['b0'], 'allocation-depth': true });
    const maps: Record<Who, unknown> = { qsd: undefined, blockd: undefined };
    for (const who of BOTH) {
      const frontSock = join(dir, `${who}-front.sock`);
      const d = await daemon(who, dir, ['--nbd-server', `addr.type=unix,addr.path=${frontSock}`]);
      for (const [name, ctx] of [['bm', 'qemu:dirty-bitmap:b0'], ['depth', 'qemu:allocation-depth']]) {
        await d.qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': name, server: { type: 'unix', path: srvSock }, export: 'r', 'x-dirty-bitmap': ctx, 'read-only': true });
        await d.qmp.execute('block-export-add', { type: 'nbd', id: name, 'node-name': name, name });
      }
      maps[who] = ['bm', 'depth'].map((n) => JSON.parse(run('nbdinfo', ['--map', '--json', `nbd+unix:///${n}?socket=${frontSock}`])));
    }
    expect(maps.blockd).toEqual(maps.qsd);
    // The dirty runs (bit 0: "hole" to a base:allocation reader) are the two writes made after the bitmap was added.
    const bm = (maps.qsd as { offset: number; length: number; type: number }[][])[0]!;
    expect(bm.filter((e) => e.type & 1).map((e) => [e.offset, e.length])).toEqual([[1 << 20, 512 << 10], [5 << 20, 64 << 10]]);
  });
});
