/**
 * blockctl top in a pseudo-terminal (tmux): against a blockd with an NBD
 * export that a client holds open and a running mirror job, the screen
 * (tmux capture-pane) shows the export with its client, the nodes with the
 * client's I/O rates and latency percentiles, and the job with its progress
 * bar and rate; it refreshes; q quits and restores the terminal.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { join, resolve } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { requireTool, run, tryRun, SYSTEM_PYTHON } from '../helpers/tools.ts';

const BLOCKCTL = resolve(import.meta.dirname, '../../bin/blockctl');
const MiB = 1024 * 1024;

describe('blockctl top in a terminal', () => {
  const dir = tempDir('blockd-top-');
  const tmuxSock = join(dir, 'tmux.sock');
  const nsock = join(dir, 'nbd.sock');
  const msock = join(dir, 'metrics.sock');
  let d: { proc: Running; qmp: QmpClient };
  let reader: ChildProcess | undefined;
  const tmux = (...args: string[]) => run('tmux', ['-S', tmuxSock, ...args]);
  const screen = () => tmux('capture-pane', '-p', '-t', 'top');

  beforeAll(async () => {
    requireTool('tmux');
    d = await qmpDaemon('blockd', dir, [
      '--blockdev', 'driver=null-co,node-name=disk0,size=67108864,read-zeroes=on',
      '--blockdev', 'driver=null-co,node-name=src0,size=268435456',
      '--blockdev', 'driver=null-co,node-name=tgt0,size=268435456',
      '--nbd-server', `addr.type=unix,addr.path=${nsock}`,
      '--export', 'type=nbd,id=exp-disk0,node-name=disk0',
      '--metrics', `addr.type=unix,addr.path=${msock}`,
    ]);
  }, 60_000);
  afterAll(async () => {
    tryRun('tmux', ['-S', tmuxSock, 'kill-server']);
    reader?.kill();
    d?.qmp.close();
    await d?.proc.stop();
  });

  it('shows the export, its client\'s I/O and a running job; q quits', async () => {
    // A client that keeps reading (about 200 reads a second) until killed.
    reader = spawn(SYSTEM_PYTHON, ['-c', `import nbd, time
h = nbd.NBD()
h.set_export_name('disk0')
h.connect_unix(${JSON.stringify(nsock)})
print('connected', flush=True)
while True:
    h.pread(4096, 0)
    time.sleep(0.005)`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((r, j) => { reader!.stdout!.once('data', () => r()); reader!.once('exit', (c) => j(new Error(`reader exited ${c}`))); });
    await d.qmp.execute('blockdev-mirror', { 'job-id': 'mirror0', device: 'src0', target: 'tgt0', sync: 'full', speed: 8 * MiB });

    tmux('new-session', '-d', '-s', 'top', '-x', '180', '-y', '40', `${BLOCKCTL} -s ${join(dir, 'qmp-blockd.sock')} --metrics ${msock} top; echo top-exited-$?; sleep 30`);
    // Two refreshes at least: rates need a previous sample.
    let text = '';
    for (let i = 0; i < 100; i++) {
      await new Promise((r) => setTimeout(r, 100));
      text = screen();
      if (/^mirror0\s+mirror\s+running\s+\[#+\.*\]/m.test(text) && /^disk0\s+[1-9]\d*\s/m.test(text) && i >= 25) break;
    }
    process.stdout.write(`--- blockctl top (tmux capture-pane) ---\n${text.trimEnd()}\n---\n`);
    expect(text).toMatch(/^blockctl top: /m);
    expect(text).toMatch(/^EXPORTS \(1\)/m);
    expect(text).toMatch(/^exp-disk0\s+nbd\s+disk0\s+1\s+serving$/m);
    expect(text).toMatch(/^NODE\s+RD IOPS\s+RD MiB\/s\s+WR IOPS/m);
    // The client's reads: a rate and p50/p99 latencies.
    expect(text).toMatch(/^disk0\s+[1-9]\d*\s+\d+\.\d\s+0\s+0\.0\s+0\s+\d+(\.\d)?(us|ms)\/\d+(\.\d)?(us|ms)\s+-\s+0\s/m);
    expect(text).toMatch(/^JOBS \(1\)/m);
    const job = /^mirror0\s+mirror\s+running\s+\[(#+)\.*\]\s+([\d.]+)%\s+([\d.]+) MiB\/s/m.exec(text);
    expect(job).not.toBeNull();
    expect(Number(job![2])).toBeGreaterThan(0);
    expect(Number(job![2])).toBeLessThan(100);
    expect(Number(job![3])).toBeGreaterThan(2);
    expect(Number(job![3])).toBeLessThan(20);

    tmux('send-keys', '-t', 'top', 'q');
    // top ends with status 0 and leaves the alternate screen: the pane shows what was there before, and the echo.
    let after = '';
    for (let i = 0; i < 50; i++) {
      await new Promise((r) => setTimeout(r, 100));
      after = screen();
      if (/top-exited/.test(after)) break;
    }
    expect(after).toMatch(/^top-exited-0$/m);
    expect(after).not.toMatch(/^JOBS/m);
    await d.qmp.execute('block-job-cancel', { device: 'mirror0', force: true });
  }, 60_000);
});
