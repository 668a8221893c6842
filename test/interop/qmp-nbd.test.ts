/**
 * Graph changes made over QMP, as NBD clients see them (blockd run as a
 * process, real clients: nbdinfo, libnbd's Python binding): blockdev-add +
 * block-export-add make an export appear; blockdev-del refuses an exported
 * node; block-export-del safe refuses while a client is connected and hard
 * disconnects it (then BLOCK_EXPORT_DELETED); nbd-server-stop closes the
 * listener; nbd-server-start opens a new one.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFileSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { run, tryRun, requireTool, SYSTEM_PYTHON } from '../helpers/tools.ts';
import { RawQmpConnection } from '../../src/qmp/raw-connection.ts';

const dir = tempDir('blockd-qmp-nbd-');
const qmpSock = join(dir, 'qmp.sock');
const nbdSock = join(dir, 'nbd.sock');
const image = join(dir, 'disk.img');
let blockd: Running;
let qmp: RawQmpConnection;

const uri = (name: string, sock = nbdSock) => `nbd+unix:///${name}?socket=${sock}`;

/** A libnbd client that connects, reports, then tries a read when told to. */
function holdClient(u: string): { proc: ChildProcessWithoutNullStreams; line: () => Promise<string> } {
  requireTool(SYSTEM_PYTHON);
  const proc = spawn(SYSTEM_PYTHON, ['-c', `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("connected", flush=True)
sys.stdin.readline()
try:
    h.pread(512, 0)
    print("read ok", flush=True)
except nbd.Error as e:
    print("read failed", flush=True)
`, u]);
  let buf = '';
  const waiters: (() => void)[] = [];
  proc.stdout.on('data', (d) => { buf += d; for (const w of waiters.splice(0)) w(); });
  const line = async () => {
    while (!buf.includes('\n')) await new Promise<void>((r) => waiters.push(r));
    const i = buf.indexOf('\n');
    const l = buf.slice(0, i);
    buf = buf.slice(i + 1);
    return l;
  };
  return { proc, line };
}

beforeAll(async () => {
  requireTool('nbdinfo');
  const data = Buffer.alloc(1 << 20);
  data.write('blockd over QMP', 0);
  writeFileSync(image, data);
  blockd = await startDaemon('blockd', [
    '--chardev', `socket,id=m,path=${qmpSock},server=on,wait=off`, '--monitor', 'm',
    '--nbd-server', `addr.type=unix,addr.path=${nbdSock}`,
  ], qmpSock);
  qmp = await RawQmpConnection.negotiated(qmpSock);
});

afterAll(async () => {
  qmp?.close();
  await blockd?.stop();
});

describe('QMP graph changes seen over NBD', () => {
  it('blockdev-add and block-export-add make an export nbdinfo sees', async () => {
    expect(await qmp.command('blockdev-add', { driver: 'file', 'node-name': 'f0', filename: image })).toEqual({ return: {} });
    expect(await qmp.command('blockdev-add', { driver: 'raw', 'node-name': 'r0', file: 'f0' })).toEqual({ return: {} });
    expect(await qmp.command('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'r0', name: 'disk', writable: true })).toEqual({ return: {} });
    const info = JSON.parse(run('nbdinfo', ['--json', uri('disk')])) as { exports: { 'export-size': number; 'is_read_only': boolean }[] };
    expect(info.exports[0]!['export-size']).toBe(1 << 20);
    expect(info.exports[0]!.is_read_only).toBe(false);
    expect(run('nbdinfo', ['--list', '--json', uri('')])).toContain('"export-name": "disk"');
    // Data written through the export reaches the file.
    run(SYSTEM_PYTHON, ['-c', `import nbd,sys\nh=nbd.NBD()\nh.connect_uri(sys.argv[1])\nh.pwrite(b'written via NBD', 4096)\nh.flush()\nh.shutdown()`, uri('disk')]);
    expect(readFileSync(image).subarray(4096, 4096 + 15).toString()).toBe('written via NBD');
  });

  it('refuses blockdev-del of an exported node, and of a node used by another', async () => {
    expect(await qmp.command('blockdev-del', { 'node-name': 'r0' })).toEqual({ error: { class: 'GenericError', desc: 'Node r0 is in use' } });
    expect(await qmp.command('blockdev-del', { 'node-name': 'f0' })).toEqual({ error: { class: 'GenericError', desc: 'Block device f0 is in use' } });
  });

  it('block-export-del: safe refuses while a client is connected, hard disconnects it', async () => {
    const client = holdClient(uri('disk'));
    expect(await client.line()).toBe('connected');
    expect(await qmp.command('block-export-del', { id: 'e0' })).toEqual({ error: { class: 'GenericError', desc: "export 'e0' still in use" } });
    expect((await qmp.command('query-block-exports')).return).toEqual([{ id: 'e0', type: 'nbd', 'node-name': 'r0', 'shutting-down': false }]);
    expect(await qmp.command('block-export-del', { id: 'e0', mode: 'hard' })).toEqual({ return: {} });
    let ev = await qmp.next();
    while (ev.event !== 'BLOCK_EXPORT_DELETED') ev = await qmp.next();
    expect(ev.data).toEqual({ id: 'e0' });
    client.proc.stdin.write('\n');
    expect(await client.line()).toBe('read failed');
    expect((await qmp.command('query-block-exports')).return).toEqual([]);
    expect(tryRun('nbdinfo', [uri('disk')]).status).not.toBe(0);
    // Now the node is free again.
    expect(await qmp.command('blockdev-del', { 'node-name': 'r0' })).toEqual({ return: {} });
  });

  it('block-export-del with nobody connected emits BLOCK_EXPORT_DELETED before its reply', async () => {
    await qmp.command('blockdev-add', { driver: 'null-co', 'node-name': 'n0', size: 65536 });
    await qmp.command('block-export-add', { type: 'nbd', id: 'e1', 'node-name': 'n0' });
    qmp.send('{"execute":"block-export-del","arguments":{"id":"e1"},"id":"del"}');
    expect(await qmp.next()).toMatchObject({ event: 'BLOCK_EXPORT_DELETED', data: { id: 'e1' } });
    expect(await qmp.next()).toEqual({ return: {}, id: 'del' });
  });

  it('nbd-server-stop removes the exports and closes the listener; nbd-server-start opens a new one', async () => {
    await qmp.command('block-export-add', { type: 'nbd', id: 'e2', 'node-name': 'n0' });
    expect(run('nbdinfo', ['--size', uri('n0')]).trim()).toBe('65536');
    expect(await qmp.command('nbd-server-start', { addr: { type: 'unix', data: { path: join(dir, 'other.sock') } } }))
      .toEqual({ error: { class: 'GenericError', desc: 'NBD server already running' } });
    qmp.send('{"execute":"nbd-server-stop","id":"stop"}');
    expect(await qmp.next()).toMatchObject({ event: 'BLOCK_EXPORT_DELETED', data: { id: 'e2' } });
    expect(await qmp.next()).toEqual({ return: {}, id: 'stop' });
    expect(existsSync(nbdSock)).toBe(false);
    expect(tryRun('nbdinfo', [uri('n0')]).status).not.toBe(0);
    expect(await qmp.command('nbd-server-stop')).toEqual({ error: { class: 'GenericError', desc: 'NBD server not running' } });
    expect(await qmp.command('block-export-add', { type: 'nbd', id: 'e3', 'node-name': 'n0' }))
      .toEqual({ error: { class: 'GenericError', desc: 'NBD server not running' } });

    const other = join(dir, 'other.sock');
    expect(await qmp.command('nbd-server-start', { addr: { type: 'unix', data: { path: other } } })).toEqual({ return: {} });
    expect(await qmp.command('nbd-server-add', { device: 'n0', name: 'legacy' })).toEqual({ return: {} });
    expect(run('nbdinfo', ['--size', uri('legacy', other)]).trim()).toBe('65536');
    expect((await qmp.command('query-block-exports')).return).toEqual([{ id: 'legacy', type: 'nbd', 'node-name': 'n0', 'shutting-down': false }]);
    expect(await qmp.command('nbd-server-remove', { name: 'legacy' })).toEqual({ return: {} });
  });

  it('quit shuts blockd down gracefully', async () => {
    expect(await qmp.command('quit', undefined, 'q')).toEqual({ return: {}, id: 'q' });
    const code = blockd.proc.exitCode ?? await new Promise<number | null>((r) => blockd.proc.once('exit', (c) => r(c)));
    expect(code).toBe(0);
    expect(existsSync(qmpSock)).toBe(false);
  });
});
