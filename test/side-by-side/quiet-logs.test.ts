/**
 * Quiet by default, as qsd: a normal start, some NBD and QMP traffic and a
 * stop print nothing on stderr (scripts and QEMU's iotests compare a storage
 * daemon's output). `--log-level info` gives blockd's JSON lines, and the
 * systemd unit asks for them (the journal keeps them).
 */
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { requireTool, run } from '../helpers/tools.ts';

async function startRunStop(who: 'qsd' | 'blockd', extra: string[] = []): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const dir = tempDir();
  const img = join(dir, 'disk.qcow2');
  const sock = join(dir, 'nbd.sock');
  const qmp = join(dir, 'qmp.sock');
  const pid = join(dir, 'pid');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', img, '16M']);
  const args = [
    ...extra,
    '--blockdev', `driver=file,node-name=f0,filename=${img}`, '--blockdev', 'driver=qcow2,node-name=q0,file=f0',
    '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e0,node-name=q0,writable=on',
    '--chardev', `socket,id=m0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m0', '--pidfile', pid,
  ];
  const proc = spawn(who === 'qsd' ? requireTool('qemu-storage-daemon') : BLOCKD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  proc.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  // Ready once the pidfile is written (after every socket listens), not on a log line.
  for (let i = 0; i < 400 && !existsSync(pid); i++) await new Promise((r) => setTimeout(r, 25));
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 64k', '-c', 'read -P 7 0 64k', `nbd+unix:///q0?socket=${sock}`]);
  const c = await QmpClient.connect(qmp);
  await c.execute('query-named-block-nodes');
  c.close();
  proc.kill('SIGTERM');
  const code = await exited;
  return { code, stdout, stderr };
}

describe('logging', () => {
  it('a normal start, run and stop prints nothing on stderr or stdout, as qsd', async () => {
    const qsd = await startRunStop('qsd');
    const blockd = await startRunStop('blockd');
    expect(qsd).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(blockd).toEqual(qsd);
  });

  it('--log-level info gives the start and stop lines', async () => {
    const r = await startRunStop('blockd', ['--log-level', 'info']);
    expect(r.code).toBe(0);
    const msgs = r.stderr.trim().split('\n').map((l) => (JSON.parse(l) as { msg: string }).msg);
    expect(msgs).toContain('blockd started');
    expect(msgs).toContain('bye');
  });

  it('the systemd unit passes --log-level info (the journal keeps the lines)', () => {
    const unit = readFileSync(resolve(import.meta.dirname, '../../systemd/blockd.service'), 'utf8');
    expect(unit).toMatch(/^ExecStart=\S*blockd .*--log-level info/m);
  });
});
