/**
 * Real iothreads (src/iothread): an NBD export with iothread= is served by
 * a worker thread with its own event loop. Checked with real clients:
 * data in and out (qemu-io, fio's verify), that the iothread is the one
 * serving it (the blockd_export_iothread gauge) and its statistics reach
 * query-blockstats; that a QMP command takes the export back to the main
 * loop and that what must see every write (a dirty bitmap, a mirror job)
 * keeps it there, with a client writing all along and nothing lost; the
 * exports whose nodes cannot move (qcow2) served in the main loop, or
 * refused with fixed-iothread; ENOSPC from a full tmpfs, a bad request, a
 * hard block-export-del and SIGTERM with clients connected in the iothread.
 *
 * (qsd 7.2 cannot be run beside: with an iothread export it aborts when
 * the first client disconnects, blockdev-nbd.c:62.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon, waitFor, type Ev } from '../helpers/live.ts';
import { httpGetUnix, parsePrometheusText, sampleValue } from '../helpers/prometheus.ts';
import { RawClient, rawNegotiate, request, simpleReplyOf } from '../helpers/nbd.ts';
import { requireTool, run, SYSTEM_PYTHON, tryRun } from '../helpers/tools.ts';

const MiB = 1024 * 1024;

interface Daemon { proc: Running; qmp: QmpClient; events: Ev[]; dir: string; nbd: string; metrics: string }
let running: Daemon | undefined;
const mounts: string[] = [];
afterEach(async () => {
  running?.qmp.close();
  await running?.proc.stop();
  running = undefined;
  for (const m of mounts.splice(0)) tryRun('umount', ['-l', m]);
});

/** blockd with one iothread (io0), `nodes` and an NBD server and metrics endpoint; `exports` as --export values. */
async function start(dir: string, nodes: string[], exports: string[], objects: string[] = []): Promise<Daemon> {
  const nbd = join(dir, 'nbd.sock');
  const metrics = join(dir, 'metrics.sock');
  const args = ['--object', 'iothread,id=io0', ...objects.flatMap((o) => ['--object', o]), ...nodes.flatMap((n) => ['--blockdev', n]),
    '--nbd-server', `addr.type=unix,addr.path=${nbd}`, ...exports.flatMap((e) => ['--export', e]),
    '--metrics', `addr.type=unix,addr.path=${metrics}`];
  const d = await qmpDaemon('blockd', dir, args);
  running = { ...d, dir, nbd, metrics };
  return running;
}

const uri = (d: Daemon, name: string) => `nbd+unix:///${name}?socket=${d.nbd}`;

/** 1 while the export's iothread serves it, 0 while the main loop does. */
async function servedByIothread(d: Daemon, exportId: string, iothread = 'io0'): Promise<number | undefined> {
  const r = await httpGetUnix(d.metrics, "/metrics");
  return sampleValue(parsePrometheusText(r.body), 'blockd_export_iothread', 'blockd_export_iothread', { export: exportId, iothread });
}

async function until(what: string, pred: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** fio (nbd engine) writing `size` with crc32c verification, `loops` times; resolves with its exit code and errors. */
function fioVerify(u: string, size: string, loops: number): Promise<{ code: number | null; err: string }> {
  const p = spawn(requireTool('fio'), ['--name=v', '--ioengine=nbd', `--uri=${u}`, '--rw=randwrite', '--bs=16k', '--iodepth=16',
    `--size=${size}`, `--loops=${loops}`, '--verify=crc32c', '--do_verify=1', '--verify_fatal=1'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  p.stderr.on('data', (d) => (err += d));
  return new Promise((r) => p.once('exit', (code) => r({ code, err })));
}

/** A libnbd client on stdin: "w N" writes 64 KiB of byte N at N MiB and answers "ok"; an empty line answers "up". */
function lineClient(u: string) {
  const p = spawn(SYSTEM_PYTHON, ['-c', `
import nbd, sys
h = nbd.NBD()
h.connect_uri(${JSON.stringify(u)})
for line in sys.stdin:
    a = line.split()
    if not a:
        print("up", flush=True)
    elif a[0] == "w":
        n = int(a[1]); h.pwrite(bytes([n]) * 65536, n * 1048576); print("ok", flush=True)
`], { stdio: ['pipe', 'pipe', 'inherit'] });
  let buf = '';
  const waiting: ((l: string) => void)[] = [];
  p.stdout.on('data', (b) => {
    buf += b;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      waiting.shift()?.(line);
    }
  });
  return {
    say: (line: string) => new Promise<string>((r) => { waiting.push(r); p.stdin.write(`${line}\n`); }),
    end: () => p.stdin.end(),
  };
}

const rawNodes = (dir: string, name = 'd0') => {
  run('truncate', ['-s', '64M', join(dir, `${name}.raw`)]);
  return [`driver=file,node-name=${name}-file,filename=${join(dir, `${name}.raw`)}`, `driver=raw,node-name=${name},file=${name}-file`];
};

describe('iothreads', () => {
  it('serve an export from their own thread: data in and out, block status, and the statistics a main-loop export of the same requests has', async () => {
    const dir = tempDir('blockd-iothread-');
    const d = await start(dir, [...rawNodes(dir), ...rawNodes(dir, 'd1')],
      ['type=nbd,id=e0,node-name=d0,writable=on,iothread=io0', 'type=nbd,id=e1,node-name=d1,writable=on']);
    await until('the iothread to serve e0', async () => (await servedByIothread(d, 'e0')) === 1);
    const stats = async (node: string) => {
      const all = await d.qmp.execute<{ 'node-name': string; stats: Record<string, number> }[]>('query-blockstats', { 'query-nodes': true });
      const st = all.find((x) => x['node-name'] === node)!.stats;
      return { wr_operations: st.wr_operations, wr_bytes: st.wr_bytes, rd_operations: st.rd_operations, rd_bytes: st.rd_bytes, flush_operations: st.flush_operations };
    };
    for (const node of ['d0', 'd1']) {
      const out = run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 2M', '-c', 'read -P 0x5a 1M 2M', '-c', 'read -P 0 0 1M', '-c', 'flush', uri(d, node)]);
      expect(out).not.toMatch(/fail|error/i);
      const map = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'raw', uri(d, node)])) as { start: number; length: number; data: boolean }[];
      expect(map.filter((e) => e.data).some((e) => e.start <= MiB && e.start + e.length >= 3 * MiB)).toBe(true);
      expect(readFileSync(join(dir, `${node}.raw`)).subarray(MiB, 3 * MiB).equals(Buffer.alloc(2 * MiB, 0x5a))).toBe(true);
    }
    const served = await stats('d0');
    expect(served.wr_bytes).toBe(2 * MiB);
    expect(served).toEqual(await stats('d1'));
    // Queries leave the export where it is.
    expect(await servedByIothread(d, 'e0')).toBe(1);
  }, 60_000);

  it('a command takes the export back; a dirty bitmap keeps it in the main loop and sees the writes of a connection that came back, until it goes; a client writes throughout and every write verifies', async () => {
    const dir = tempDir('blockd-iothread-');
    const d = await start(dir, rawNodes(dir), ['type=nbd,id=e0,node-name=d0,writable=on,iothread=io0']);
    await until('the iothread to serve e0', async () => (await servedByIothread(d, 'e0')) === 1);
    const writer = fioVerify(uri(d, 'd0'), '16M', 6);
    // A second client, connected while the iothread serves the export: it writes on cue.
    const c = lineClient(uri(d, 'd0'));
    await c.say('');
    for (let i = 0; i < 3; i++) {
      await d.qmp.execute('block-dirty-bitmap-add', { node: 'd0', name: 'b0' });
      expect(await servedByIothread(d, 'e0')).toBe(0);
      expect(await c.say(`w ${32 + i}`)).toBe('ok');
      const nodes = await d.qmp.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name: string; count: number }[] }[]>('query-named-block-nodes');
      const bm = nodes.find((n) => n['node-name'] === 'd0')!['dirty-bitmaps']!.find((b) => b.name === 'b0')!;
      expect(bm.count).toBeGreaterThanOrEqual(64 * 1024);
      await d.qmp.execute('block-dirty-bitmap-remove', { node: 'd0', name: 'b0' });
      await until('e0 back in its iothread', async () => (await servedByIothread(d, 'e0')) === 1);
      expect(await c.say(`w ${40 + i}`)).toBe('ok');
    }
    c.end();
    const w = await writer;
    expect(w.err).not.toMatch(/verify|error/i);
    expect(w.code).toBe(0);
    const img = readFileSync(join(dir, 'd0.raw'));
    for (const mib of [32, 33, 34, 40, 41, 42]) expect(img.subarray(mib * MiB, mib * MiB + 65536).equals(Buffer.alloc(65536, mib))).toBe(true);
  }, 90_000);

  it('a mirror job runs with the export in the main loop while a client writes; after it the copy equals the source and the export returns to its iothread', async () => {
    const dir = tempDir('blockd-iothread-');
    run('truncate', ['-s', '64M', join(dir, 'target.raw')]);
    const d = await start(dir, [...rawNodes(dir), `driver=file,node-name=t0,filename=${join(dir, 'target.raw')}`],
      ['type=nbd,id=e0,node-name=d0,writable=on,iothread=io0']);
    await until('the iothread to serve e0', async () => (await servedByIothread(d, 'e0')) === 1);
    const writer = fioVerify(uri(d, 'd0'), '16M', 3);
    await new Promise((r) => setTimeout(r, 200));
    await d.qmp.execute('blockdev-mirror', { 'job-id': 'm0', device: 'd0', target: 't0', sync: 'full' });
    expect(await servedByIothread(d, 'e0')).toBe(0);
    await waitFor(d.events, (e) => e.event === 'BLOCK_JOB_READY');
    const w = await writer;
    expect(w.err).not.toMatch(/verify|error/i);
    expect(w.code).toBe(0);
    await d.qmp.execute('job-complete', { id: 'm0' });
    await waitFor(d.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.status === 'null');
    expect(readFileSync(join(dir, 'target.raw')).equals(readFileSync(join(dir, 'd0.raw')))).toBe(true);
    // The export now serves t0 (the pivot), a file node: it can move again.
    await until('e0 back in its iothread', async () => (await servedByIothread(d, 'e0')) === 1);
  }, 90_000);

  it('an export whose nodes cannot move (qcow2) is served in the main loop; with fixed-iothread it is refused', async () => {
    const dir = tempDir('blockd-iothread-');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'q.qcow2'), '64M']);
    const d = await start(dir, [`driver=file,node-name=qf,filename=${join(dir, 'q.qcow2')}`, 'driver=qcow2,node-name=q0,file=qf'],
      ['type=nbd,id=e0,node-name=q0,writable=on,iothread=io0']);
    const err = await d.qmp.execute('block-export-add', { type: 'nbd', id: 'e1', 'node-name': 'q0', name: 'other', iothread: 'io0', 'fixed-iothread': true })
      .then(() => undefined, (e: Error) => e.message);
    expect(err).toBe("GenericError: Cannot move export 'e1' to iothread 'io0': node 'q0' (driver qcow2) keeps state in memory; only file, host_device, raw, null-co, null-aio nodes move to an iothread");
    expect((await d.qmp.execute<{ id: string }[]>('query-block-exports')).map((e) => e.id)).toEqual(['e0']);
    expect(await servedByIothread(d, 'e0')).toBe(0);
    const out = run('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 1M', '-c', 'read -P 7 0 1M', uri(d, 'q0')]);
    expect(out).not.toMatch(/fail|error/i);
  }, 60_000);

  it('ENOSPC from a full tmpfs reaches the client, the daemon serves on; a bad request closes only its connection', async () => {
    const dir = tempDir('blockd-iothread-');
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    run('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', mnt]);
    mounts.push(mnt);
    run('truncate', ['-s', '8M', join(mnt, 'img')]);
    const d = await start(dir, [`driver=file,node-name=f0,filename=${join(mnt, 'img')}`], ['type=nbd,id=e0,node-name=f0,writable=on,iothread=io0']);
    await until('the iothread to serve e0', async () => (await servedByIothread(d, 'e0')) === 1);
    const r = tryRun('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 2M', uri(d, 'f0')]);
    expect(r.stdout + r.stderr).toMatch(/write failed: No space left on device/);
    // A request with a bad magic: the server answers (EINVAL) and closes that connection only.
    const c = new RawClient(d.nbd);
    expect(await rawNegotiate(c, 'f0')).toBe(8 * MiB);
    c.write(request(0, 0, 4096, 1n));
    expect((await simpleReplyOf(c))[0]).toBe(0);
    await c.read(4096);
    c.write(request(0, 0, 4096, 2n, 0, 0xdeadbeef));
    expect(await simpleReplyOf(c)).toEqual([22, 2n]);
    expect(await c.waitClosed()).toBe(true);
    const ok = run('qemu-io', ['-f', 'raw', '-c', 'read -P 1 0 64k', uri(d, 'f0')]);
    expect(ok).not.toMatch(/fail|error/i);
    expect(d.proc.proc.exitCode).toBe(null);
  }, 60_000);

  it("an iothread's event loop polls as its poll-max-ns says (0: never)", async () => {
    const dir = tempDir('blockd-iothread-');
    const d = await start(dir, [...rawNodes(dir), ...rawNodes(dir, 'd1')],
      ['type=nbd,id=e0,node-name=d0,iothread=io0', 'type=nbd,id=e1,node-name=d1,iothread=io1'], ['iothread,id=io1,poll-max-ns=0']);
    await until('the iothreads to serve e0 and e1', async () =>
      (await servedByIothread(d, 'e0')) === 1 && (await servedByIothread(d, 'e1', 'io1')) === 1);
    const reads = Array.from({ length: 400 }, (_, i) => ['-c', `read ${(i % 64) * 4}k 4k`]).flat();
    for (const node of ['d0', 'd1']) run('qemu-io', ['-r', '-f', 'raw', ...reads, uri(d, node)]);
    const m = parsePrometheusText((await httpGetUnix(d.metrics, '/metrics')).body);
    const polls = (loop: string) => sampleValue(m, 'blockd_event_loop_polls_total', 'blockd_event_loop_polls_total', { loop });
    expect(polls('io0')).toBeGreaterThan(0);
    expect(polls('io1')).toBe(0);
    expect(polls('main')).toBeDefined();
  }, 60_000);

  it('block-export-del: safe refuses while a client is connected in the iothread, hard drops it; SIGTERM with clients there exits cleanly', async () => {
    const dir = tempDir('blockd-iothread-');
    const d = await start(dir, [...rawNodes(dir), ...rawNodes(dir, 'd1')],
      ['type=nbd,id=e0,node-name=d0,writable=on,iothread=io0', 'type=nbd,id=e1,node-name=d1,writable=on,iothread=io0']);
    await until('the iothread to serve e0 and e1', async () => (await servedByIothread(d, 'e0')) === 1 && (await servedByIothread(d, 'e1')) === 1);
    const client = (name: string) => spawn(SYSTEM_PYTHON, ['-c', `
import nbd, time
h = nbd.NBD()
h.connect_uri("${uri(d, name)}")
print("up", flush=True)
try:
    while True:
        h.pwrite(b"x" * 4096, 0)
        time.sleep(0.01)
except Exception as e:
    print("dropped", flush=True)
`], { stdio: ['ignore', 'pipe', 'inherit'] });
    const c0 = client('d0');
    let said = '';
    c0.stdout.on('data', (b) => (said += b));
    await until('the client to connect', async () => said.includes('up'));
    await until('e0 back in its iothread', async () => (await servedByIothread(d, 'e0')) === 1);
    const refused = await d.qmp.execute('block-export-del', { id: 'e0' }).then(() => undefined, (e: Error) => e.message);
    expect(refused).toBe("GenericError: export 'e0' still in use");
    await d.qmp.execute('block-export-del', { id: 'e0', mode: 'hard' });
    await waitFor(d.events, (e) => e.event === 'BLOCK_EXPORT_DELETED' && e.data.id === 'e0');
    await until('the client to be dropped', async () => said.includes('dropped'));
    c0.kill();
    // A client of e1 in the iothread at shutdown.
    const c1 = client('d1');
    let said1 = '';
    c1.stdout.on('data', (b) => (said1 += b));
    await until('the second client to connect', async () => said1.includes('up'));
    await until('e1 in its iothread', async () => (await servedByIothread(d, 'e1')) === 1);
    d.qmp.close();
    const t0 = Date.now();
    expect(await d.proc.stop('SIGTERM')).toBe(0);
    expect(Date.now() - t0).toBeLessThan(5000);
    running = undefined;
    c1.kill();
    // What the clients wrote before is in the files.
    expect(readFileSync(join(dir, 'd1.raw')).subarray(0, 4096).equals(Buffer.alloc(4096, 'x'))).toBe(true);
  }, 90_000);
});
