/**
 * Persistent bitmaps in qcow2 images: stored on close where qemu-img and qsd
 * find them (same contents through `nbdinfo --map`), loaded again by blockd,
 * bitmaps made by qemu-img/qemu-io loaded by blockd, and after SIGKILL the
 * bitmaps that were in use are reported inconsistent exactly as qsd reports
 * them.
 */
import { describe, it, expect, afterEach, afterAll } from 'vitest';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { run, tryRun } from '../helpers/tools.ts';
import { RawQmpConnection } from '../../src/qmp/raw-connection.ts';

const dir = tempDir('blockd-bitmaps-persist-');
let seq = 0;
const running: { d: Running; q: RawQmpConnection }[] = [];

afterEach(async () => {
  for (const r of running.splice(0)) { r.q.close(); await r.d.stop('SIGKILL'); }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function start(who: 'blockd' | 'qsd', image: string, extra: string[] = []): Promise<{ d: Running; q: RawQmpConnection; uri: (n: string) => string; stop: () => Promise<void> }> {
  const id = `${who}-${seq++}`;
  const qmpSock = join(dir, `${id}-qmp.sock`);
  const nbdSock = join(dir, `${id}-nbd.sock`);
  const d = await startDaemon(who, [
    '--chardev', `socket,id=m,path=${qmpSock},server=on,wait=off`, '--monitor', 'm',
    '--blockdev', `driver=file,node-name=f,filename=${image}`,
    '--blockdev', 'driver=qcow2,node-name=q,file=f',
    '--nbd-server', `addr.type=unix,addr.path=${nbdSock}`, ...extra,
  ], qmpSock);
  const q = await RawQmpConnection.negotiated(qmpSock);
  const entry = { d, q };
  running.push(entry);
  return {
    d, q,
    uri: (n) => `nbd+unix:///${n}?socket=${nbdSock}`,
    async stop() {
      running.splice(running.indexOf(entry), 1);
      q.close();
      expect(await d.stop('SIGTERM')).toBe(0);
    },
  };
}

async function ok(q: RawQmpConnection, cmd: string, args?: Record<string, unknown>): Promise<unknown> {
  const r = await q.command(cmd, args);
  expect(r, `${cmd} ${JSON.stringify(args)}`).toHaveProperty('return');
  return r.return;
}

async function dirtyInfo(q: RawQmpConnection): Promise<unknown> {
  const nodes = await ok(q, 'query-named-block-nodes', { flat: true }) as Record<string, unknown>[];
  return nodes.find((n) => n['node-name'] === 'q')!['dirty-bitmaps'];
}

const write = (uri: string, ops: string) => run('/usr/bin/python3', ['-c', `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
${ops}
h.flush()
h.shutdown()
`, uri]);

const imgInfo = (f: string) => JSON.parse(run('qemu-img', ['info', '--output=json', '-U', f])) as { 'format-specific': { data: { bitmaps?: { name: string; flags: string[]; granularity: number }[] } } };
const checkClean = (f: string) => {
  const r = tryRun('qemu-img', ['check', '--output=json', f]);
  const c = JSON.parse(r.stdout) as Record<string, number>;
  expect(c['check-errors'] ?? 0).toBe(0);
  expect(c.corruptions ?? 0).toBe(0);
  expect(c.leaks ?? 0).toBe(0);
};

/** The bitmap map as qsd shows it for the image (exported writable, so an enabled bitmap is allowed). */
async function qsdMap(image: string, name: string): Promise<string> {
  const copy = join(dir, `qsd-view-${seq++}.qcow2`);
  copyFileSync(image, copy);
  const s = await start('qsd', copy);
  await ok(s.q, 'block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true, bitmaps: [name] });
  const map = run('nbdinfo', [`--map=qemu:dirty-bitmap:${name}`, s.uri('q')]);
  await s.stop();
  return map;
}

const WRITES = `
h.pwrite(b'a' * 4096, 0)
h.pwrite(b'b' * 70000, 5 * 1048576 + 100)
h.zero(3 * 1048576, 20 * 1048576)
h.pwrite(b'c' * 512, 64 * 1048576 - 512)
`;

describe('persistent bitmaps in qcow2', () => {
  it('are stored on close where qemu-img and qsd find them, and load again', async () => {
    const image = join(dir, 'a.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
    const b = await start('blockd', image);
    await ok(b.q, 'block-dirty-bitmap-add', { node: 'q', name: 'p', persistent: true });
    await ok(b.q, 'block-dirty-bitmap-add', { node: 'q', name: 'fine', persistent: true, granularity: 512 });
    await ok(b.q, 'block-dirty-bitmap-add', { node: 'q', name: 'off', persistent: true, disabled: true });
    await ok(b.q, 'block-dirty-bitmap-add', { node: 'q', name: 'temp' });
    await ok(b.q, 'block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true, bitmaps: ['p', 'fine'] });
    write(b.uri('q'), WRITES);
    const maps = { p: run('nbdinfo', ['--map=qemu:dirty-bitmap:p', b.uri('q')]), fine: run('nbdinfo', ['--map=qemu:dirty-bitmap:fine', b.uri('q')]) };
    expect(maps.p).toContain('dirty');
    const before = await dirtyInfo(b.q);
    await b.stop();

    checkClean(image);
    const bitmaps = imgInfo(image)['format-specific'].data.bitmaps!;
    expect(bitmaps).toEqual([
      { name: 'p', flags: ['auto'], granularity: 65536 },
      { name: 'fine', flags: ['auto'], granularity: 512 },
      { name: 'off', flags: [], granularity: 65536 },
    ]);
    expect(await qsdMap(image, 'p')).toBe(maps.p);
    expect(await qsdMap(image, 'fine')).toBe(maps.fine);

    // Loaded again by blockd: same list (without the non-persistent one), same contents.
    const again = await start('blockd', image);
    expect(await dirtyInfo(again.q)).toEqual((before as { name: string }[]).filter((x) => x.name !== 'temp').map((x) => ({ ...x, busy: false })));
    await ok(again.q, 'block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true, bitmaps: ['p'] });
    expect(run('nbdinfo', ['--map=qemu:dirty-bitmap:p', again.uri('q')])).toBe(maps.p);
    // Removing one drops it from the image; clearing one stores it empty.
    await ok(again.q, 'block-dirty-bitmap-remove', { node: 'q', name: 'off' });
    await ok(again.q, 'block-dirty-bitmap-clear', { node: 'q', name: 'fine' });
    await again.stop();
    checkClean(image);
    expect(imgInfo(image)['format-specific'].data.bitmaps!.map((x) => x.name)).toEqual(['p', 'fine']);
    expect(await qsdMap(image, 'fine')).toBe('         0    67108864    0  clean\n');
  }, 120_000);

  it('a stored bitmap follows block_resize (grown tables) and records past the old end', async () => {
    const image = join(dir, 'grow.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '8M']);
    const b = await start('blockd', image);
    await ok(b.q, 'block-dirty-bitmap-add', { node: 'q', name: 'g', persistent: true, granularity: 512 });
    await ok(b.q, 'block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true });
    write(b.uri('q'), `h.pwrite(b'a' * 4096, 4096)`);
    await ok(b.q, 'block-export-del', { id: 'e', mode: 'hard' });
    await ok(b.q, 'block_resize', { 'node-name': 'q', size: 600 * 1048576 });
    await ok(b.q, 'block-export-add', { type: 'nbd', id: 'e2', 'node-name': 'q', name: 'q2', writable: true, bitmaps: ['g'] });
    write(b.uri('q2'), `h.pwrite(b'b' * 4096, 500 * 1048576)`);
    const map = run('nbdinfo', ['--map=qemu:dirty-bitmap:g', b.uri('q2')]);
    expect(map).toContain(String(500 * 1048576));
    // Killed: the write-ahead stored the grown bitmap.
    running.splice(0);
    b.q.close();
    await b.d.stop('SIGKILL');
    expect(await qsdMap(image, 'g')).toBe(map);
  }, 120_000);

  it('bitmaps of a read-only node are read-only until blockdev-reopen makes the node writable', async () => {
    const image = join(dir, 'reopen.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '8M']);
    run('qemu-img', ['bitmap', '--add', image, 'b']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write 0 64k', image]);
    const id = `blockd-${seq++}`;
    const qmpSock = join(dir, `${id}-qmp.sock`);
    const nbdSock = join(dir, `${id}-nbd.sock`);
    const d = await startDaemon('blockd', [
      '--chardev', `socket,id=m,path=${qmpSock},server=on,wait=off`, '--monitor', 'm',
      '--blockdev', `driver=file,node-name=f,filename=${image},read-only=on`,
      '--blockdev', 'driver=qcow2,node-name=q,file=f,read-only=on',
      '--nbd-server', `addr.type=unix,addr.path=${nbdSock}`,
    ], qmpSock);
    const q = await RawQmpConnection.negotiated(qmpSock);
    running.push({ d, q });
    expect(await q.command('block-dirty-bitmap-clear', { node: 'q', name: 'b' })).toEqual({ error: { class: 'GenericError', desc: "Bitmap 'b' is readonly and cannot be modified" } });
    await ok(q, 'blockdev-reopen', { options: [
      { driver: 'file', 'node-name': 'f', filename: image, 'read-only': false },
      { driver: 'qcow2', 'node-name': 'q', file: 'f', 'read-only': false },
    ] });
    await ok(q, 'block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true, bitmaps: ['b'] });
    write(`nbd+unix:///q?socket=${nbdSock}`, `h.pwrite(b'z' * 512, 4 * 1048576)`);
    const map = run('nbdinfo', ['--map=qemu:dirty-bitmap:b', `nbd+unix:///q?socket=${nbdSock}`]);
    expect(map).toContain(String(4 * 1048576));
    expect(map.startsWith('         0       65536    1  dirty')).toBe(true);
    running.splice(0);
    q.close();
    expect(await d.stop('SIGTERM')).toBe(0);
    checkClean(image);
    expect(await qsdMap(image, 'b')).toBe(map);
  }, 120_000);

  it('bitmaps made by qemu-img and filled by qemu-io load in blockd as in qsd', async () => {
    const image = join(dir, 'b.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '32M']);
    run('qemu-img', ['bitmap', '--add', '-g', '128k', image, 'fromqemu']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write 1M 300k', '-c', 'write 20M 1k', image]);
    const expected = await qsdMap(image, 'fromqemu');
    expect(expected).toContain('dirty');
    const copy = join(dir, 'b-qsd.qcow2');
    copyFileSync(image, copy);
    const s = await start('qsd', copy);
    const qsdInfo = await dirtyInfo(s.q);
    await s.stop();
    const b = await start('blockd', image);
    expect(await dirtyInfo(b.q)).toEqual(qsdInfo);
    await ok(b.q, 'block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true, bitmaps: ['fromqemu'] });
    expect(run('nbdinfo', ['--map=qemu:dirty-bitmap:fromqemu', b.uri('q')])).toBe(expected);
    await b.stop();
    checkClean(image);
  }, 120_000);

  it('after SIGKILL of blockd, persistent bitmaps load consistent and cover every acknowledged write', async () => {
    const image = join(dir, 'c.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
    run('qemu-img', ['bitmap', '--add', image, 'old']);
    const b = await start('blockd', image);
    await ok(b.q, 'block-dirty-bitmap-add', { node: 'q', name: 'new', persistent: true, granularity: 4096 });
    await ok(b.q, 'block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true, bitmaps: ['old', 'new'] });
    // Acknowledged writes (no flush at the end: the bitmap must not depend on one).
    const ranges: [number, number][] = [];
    let r = 7;
    for (let i = 0; i < 200; i++) {
      r = (r * 1103515245 + 12345) & 0x7fffffff;
      const off = r % (64 * 1048576 - 70000);
      ranges.push([off, 1 + (r % 65536)]);
    }
    run('/usr/bin/python3', ['-c', `
import nbd, sys, json
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for off, n in json.loads(sys.argv[2]):
    h.pwrite(b'k' * n, off)
`, b.uri('q'), JSON.stringify(ranges)]);
    const maps = { old: run('nbdinfo', ['--map=qemu:dirty-bitmap:old', b.uri('q')]), new: run('nbdinfo', ['--map=qemu:dirty-bitmap:new', b.uri('q')]) };
    running.splice(0);
    b.q.close();
    await b.d.stop('SIGKILL');
    expect(imgInfo(image)['format-specific'].data.bitmaps).toEqual([
      { name: 'old', flags: ['auto'], granularity: 65536 },
      { name: 'new', flags: ['auto'], granularity: 4096 },
    ]);
    const c = JSON.parse(tryRun('qemu-img', ['check', '--output=json', image]).stdout) as Record<string, number>;
    expect(c['check-errors'] ?? 0).toBe(0);
    expect(c.corruptions ?? 0).toBe(0);
    // qsd reads exactly what blockd showed before it was killed; every write is inside a dirty extent.
    for (const name of ['old', 'new'] as const) {
      const map = await qsdMap(image, name);
      expect(map).toBe(maps[name]);
      const dirty = map.trim().split('\n').map((l) => l.trim().split(/\s+/)).filter((f) => f[3] === 'dirty').map((f) => [Number(f[0]), Number(f[1])]);
      for (const [off, n] of ranges) expect(dirty.some(([s0, l]) => s0! <= off && off + n <= s0! + l!), `${name} ${off}+${n}`).toBe(true);
    }
  }, 120_000);

  it('bitmaps QEMU left in use (killed while open) are inconsistent in blockd exactly as in qsd', async () => {
    const image = join(dir, 'd.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
    run('qemu-img', ['bitmap', '--add', image, 'old']);
    const k = await start('qsd', image);
    await ok(k.q, 'block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true });
    write(k.uri('q'), `h.pwrite(b'x' * 65536, 0)`);
    running.splice(0);
    k.q.close();
    await k.d.stop('SIGKILL');
    expect(imgInfo(image)['format-specific'].data.bitmaps).toEqual([{ name: 'old', flags: ['in-use', 'auto'], granularity: 65536 }]);
    const copy = join(dir, 'd-qsd.qcow2');
    copyFileSync(image, copy);
    const s = await start('qsd', copy);
    const qsdInfo = await dirtyInfo(s.q);
    const qsdRefusal = await s.q.command('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true, bitmaps: ['old'] });
    const qsdClear = await s.q.command('block-dirty-bitmap-clear', { node: 'q', name: 'old' });
    await s.stop();
    const again = await start('blockd', image);
    expect(await dirtyInfo(again.q)).toEqual(qsdInfo);
    expect((qsdInfo as { inconsistent?: boolean }[])[0]!.inconsistent).toBe(true);
    expect(await again.q.command('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true, bitmaps: ['old'] })).toEqual(qsdRefusal);
    expect(await again.q.command('block-dirty-bitmap-clear', { node: 'q', name: 'old' })).toEqual(qsdClear);
    // Writes leave it as it is on disk; removing it is the way out.
    await ok(again.q, 'block-export-add', { type: 'nbd', id: 'e', 'node-name': 'q', name: 'q', writable: true });
    write(again.uri('q'), `h.pwrite(b'y' * 4096, 1048576)`);
    expect(imgInfo(image)['format-specific'].data.bitmaps).toEqual([{ name: 'old', flags: ['in-use', 'auto'], granularity: 65536 }]);
    await ok(again.q, 'block-dirty-bitmap-remove', { node: 'q', name: 'old' });
    await ok(again.q, 'block-export-del', { id: 'e', mode: 'hard' });
    await again.stop();
    checkClean(image);
    expect(imgInfo(image)['format-specific'].data.bitmaps).toBeUndefined();
  }, 120_000);
});
