/** blockdev-reopen of file nodes between read-only and read-write, seen by a real NBD client. */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { run, tryRun } from '../helpers/tools.ts';

describe('blockdev-reopen on a file node', () => {
  let d: Running | undefined;
  afterAll(async () => { await d?.stop(); });

  it('goes read-write and back, and writes reach the file only while read-write', async () => {
    const dir = tempDir();
    const img = join(dir, 'disk.img');
    writeFileSync(img, Buffer.alloc(1 << 20));
    const qmp = join(dir, 'qmp.sock');
    const nbd = join(dir, 'nbd.sock');
    d = await startDaemon('blockd', [
      '--blockdev', `driver=file,node-name=f0,filename=${img},read-only=on`,
      '--blockdev', 'driver=raw,node-name=r0,file=f0,read-only=on',
      '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
      '--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'm',
    ], qmp);
    const c = await QmpClient.connect(qmp);
    await expect(c.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'r0', writable: true }))
      .rejects.toThrow(/read-only/);
    await c.execute('blockdev-reopen', { options: [
      { driver: 'file', 'node-name': 'f0', filename: img, 'read-only': false },
      { driver: 'raw', 'node-name': 'r0', file: 'f0', 'read-only': false },
    ] });
    await c.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'r0', writable: true });
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 4096 8192', `nbd+unix:///r0?socket=${nbd}`]);
    expect(readFileSync(img).subarray(4096, 12288).every((b) => b === 0x3c)).toBe(true);
    // qemu-io has hung up, but the server may not have seen it yet: hard mode does not care.
    await c.execute('block-export-del', { id: 'e0', mode: 'hard' });
    for (let i = 0; i < 50; i++) {
      const list = await c.execute<unknown[]>('query-block-exports');
      if (list.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await c.execute('blockdev-reopen', { options: [
      { driver: 'raw', 'node-name': 'r0', file: 'f0', 'read-only': true },
      { driver: 'file', 'node-name': 'f0', filename: img, 'read-only': true },
    ] });
    await c.execute('block-export-add', { type: 'nbd', id: 'e1', 'node-name': 'r0' });
    const w = tryRun('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 512', `nbd+unix:///r0?socket=${nbd}`]);
    expect(w.stdout + w.stderr).toMatch(/read-only|not permitted|Permission/i);
    expect(readFileSync(img)[0]).toBe(0);
    c.close();
  });
});
