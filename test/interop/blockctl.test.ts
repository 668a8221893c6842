/** blockctl end to end against a running blockd with a QMP monitor. */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';

const BLOCKCTL = resolve(import.meta.dirname, '../../bin/blockctl');

describe('blockctl', () => {
  const dir = tempDir();
  const qmp = join(dir, 'qmp.sock');
  let daemon: Running;
  const ctl = (...args: string[]) => spawnSync(BLOCKCTL, ['-s', qmp, ...args], { encoding: 'utf8', timeout: 30_000 });

  beforeAll(async () => {
    daemon = await startDaemon('blockd', [
      '--blockdev', 'driver=null-co,node-name=n0,size=1048576',
      '--chardev', `socket,id=m0,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m0',
    ], qmp);
  });
  afterAll(async () => { await daemon?.stop(); });

  it('shows query results as a table, or JSON with --json', () => {
    const t = ctl('query-named-block-nodes');
    expect(t.status).toBe(0);
    expect(t.stdout).toMatch(/^NODE-NAME\s+DRIVER/m);
    expect(t.stdout).toMatch(/^n0\s+null-co\s+no\s+1 MiB/m);
    const j = ctl('--json', 'query-named-block-nodes');
    expect(JSON.parse(j.stdout).map((n: { 'node-name': string }) => n['node-name'])).toContain('n0');
  });

  it('takes key=value and JSON arguments', () => {
    const img = join(dir, 'x.img');
    const c = ctl('blockdev-create', 'job-id=c0', 'options.driver=file', `options.filename=${img}`, 'options.size=4194304', '--watch');
    expect(c.stderr).toBe('');
    expect(c.status).toBe(0);
    expect(c.stdout).toMatch(/c0\s+create\s+concluded\s+\[#+\]\s+100\.0%/);
    expect(statSync(img).size).toBe(4194304);
    expect(ctl('job-dismiss', 'id=c0').status).toBe(0);
    expect(ctl('blockdev-add', 'driver=file', 'node-name=f1', `filename=${img}`).status).toBe(0);
    expect(ctl('blockdev-add', JSON.stringify({ driver: 'raw', 'node-name': 'r1', file: 'f1' })).status).toBe(0);
    expect(ctl('query-named-block-nodes').stdout).toMatch(/^r1\s+raw\s+no\s+4 MiB/m);
  });

  it('shows a daemon error as a readable message with a non-zero exit', () => {
    const r = ctl('blockdev-del', 'node-name=nosuch');
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toMatch(/^blockctl: .*nosuch.* \(GenericError\)$/);
    const bad = ctl('blockdev-add', 'driver=null-co', 'size=abc');
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/Parameter 'size' expects integer/);
  });

  it('streams events', async () => {
    const ev = spawn(BLOCKCTL, ['-s', qmp, 'events'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    ev.stdout!.on('data', (d) => (out += d));
    await new Promise((r) => setTimeout(r, 1500));
    const img = join(dir, 'y.img');
    expect(ctl('blockdev-create', 'job-id=c1', 'options.driver=file', `options.filename=${img}`, 'options.size=1048576', '--watch').status).toBe(0);
    for (let i = 0; i < 50 && !out.includes('"concluded"'); i++) await new Promise((r) => setTimeout(r, 100));
    ev.kill();
    expect(out).toMatch(/JOB_STATUS_CHANGE \{"status":"created","id":"c1"\}/);
    expect(out).toMatch(/JOB_STATUS_CHANGE \{"status":"concluded","id":"c1"\}/);
    expect(existsSync(img)).toBe(true);
  });

  it('--help, -h and help print the usage (exit 0); --help after a command is its help', () => {
    for (const words of [['--help'], ['-h'], ['help']]) {
      const r = spawnSync(BLOCKCTL, words, { encoding: 'utf8' });
      expect([words, r.status, r.stderr]).toEqual([words, 0, '']);
      expect(r.stdout).toMatch(/^Usage: blockctl /);
      expect(r.stdout).toMatch(/^\s+top\s+a live view/m);
    }
    expect(spawnSync(BLOCKCTL, ['help'], { encoding: 'utf8' }).stdout).toMatch(/^query-blockstats\s/m);
    const c = spawnSync(BLOCKCTL, ['query-jobs', '--help'], { encoding: 'utf8' });
    expect([c.status, c.stdout.split('\n')[0]]).toEqual([0, 'query-jobs']);
  });

  it('stats: query-blockstats of every node, a table or JSON for scripts', () => {
    const j = ctl('stats', '--json');
    expect(j.status).toBe(0);
    const stats = JSON.parse(j.stdout) as { 'node-name': string; stats: Record<string, unknown> }[];
    const n0 = stats.find((s) => s['node-name'] === 'n0')!;
    expect(n0.stats).toMatchObject({ rd_operations: 0, wr_operations: 0, account_failed: true, timed_stats: [] });
    const t = ctl('stats');
    expect(t.status).toBe(0);
    expect(t.stdout).toMatch(/^NODE\s+RD OPS\s+RD BYTES\s+RD AVG\s+WR OPS/m);
    expect(t.stdout).toMatch(/^n0\s+0\s+0 B\s+-\s+0\s/m);
    expect(ctl('stats', 'x=1').status).toBe(2);
  });

  it('prints help generated from the command table', () => {
    const r = spawnSync(BLOCKCTL, ['help', 'blockdev-add'], { encoding: 'utf8' });
    expect(r.stdout).toMatch(/driver: .*null-co/);
    expect(r.stdout).toMatch(/when driver = file:/);
  });
});
