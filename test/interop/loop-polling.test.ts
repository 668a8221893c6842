/**
 * Adaptive polling of the main event loop (native/src/loop_poll.c,
 * src/daemon/loop-polling.ts). Each probe runs in a child node process of
 * its own: the polling belongs to the loop of the thread that set it. The probe ping-pongs
 * 2000 small messages with an echo child over a Unix socket (the queue-depth-1
 * pattern polling is for), then lets its loop wait on 20 ms timers (an idle
 * daemon) and prints the statistics after each phase.
 */
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loopPollingFromEnv, DEFAULT_LOOP_POLLING } from '../../src/daemon/loop-polling.ts';
import { tempDir } from '../helpers/temp.ts';

const ADDON = path.resolve('native/build/Release/blockd_native.node');

const probe = (sock: string, maxNs: number, thenPool: boolean) => `
  const n = require(${JSON.stringify(ADDON)});
  const net = require('net'), fs = require('fs');
  n.loopPollSet(${maxNs});
  const s = net.connect(${JSON.stringify(sock)});
  let left = 2000;
  const out = {};
  s.on('connect', () => s.write('x'));
  s.on('data', (d) => {
    if (--left > 0) return void s.write('x');
    out.busy = n.loopPollStats();
    s.destroy();
    let t = 0;
    const idle = () => {
      if (++t < 10) return void setTimeout(idle, 20);
      out.idle = n.loopPollStats();
      if (!${thenPool}) return void process.stdout.write(JSON.stringify(out));
      // File I/O in the thread pool: the loop must not spin while it runs.
      const before = n.loopPollStats().polls;
      let k = 0;
      const next = () => fs.stat('/', () => { if (++k < 200) next(); else { out.poolPolls = n.loopPollStats().polls - before; process.stdout.write(JSON.stringify(out)); } });
      next();
    };
    idle();
  });`;

const echo = (sock: string) => `
  const net = require('net');
  const srv = net.createServer((c) => { c.setNoDelay(true); c.on('data', (d) => c.write(d)); c.on('close', () => srv.close()); });
  srv.listen(${JSON.stringify(sock)}, () => process.stdout.write('up'));`;

interface Stats { pollNs: number; maxNs: number; polls: number; hits: number }

async function run(maxNs: number, thenPool = false): Promise<{ busy: Stats; idle: Stats; poolPolls?: number }> {
  const sock = path.join(tempDir(), 'echo.sock');
  const server = spawn(process.execPath, ['-e', echo(sock)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => { server.stdout!.once('data', () => resolve()); server.once('exit', (c) => reject(new Error(`echo exited ${c}`))); });
  try {
    const child = spawn(process.execPath, ['-e', probe(sock, maxNs, thenPool)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    expect(err).toBe('');
    expect(code).toBe(0);
    return JSON.parse(out) as { busy: Stats; idle: Stats; poolPolls?: number };
  } finally {
    server.kill();
  }
}

describe('event-loop polling', () => {
  it('opens its window under back-to-back round trips and takes events in it', async () => {
    const r = await run(1_000_000);
    expect(r.busy.maxNs).toBe(1_000_000);
    expect(r.busy.polls).toBeGreaterThan(100);
    expect(r.busy.hits).toBeGreaterThan(r.busy.polls / 4);
  });

  it('closes it when the loop idles, and does not spin while thread-pool work runs', async () => {
    const r = await run(1_000_000, true);
    expect(r.idle.pollNs).toBe(0);
    // Idle waits (20 ms, more than 4 x the 1 ms window) never reopen it.
    expect(r.idle.polls - r.busy.polls).toBeLessThanOrEqual(2);
    expect(r.poolPolls).toBe(0);
  });

  it('never polls with a maximum of 0', async () => {
    const r = await run(0);
    expect(r.busy.polls).toBe(0);
    expect(r.busy.pollNs).toBe(0);
  });

  it('refuses a bad maximum; each thread\'s loop polls on its own, and a worker that exits polling leaves the main loop as it was', () => {
    const r = spawnSync(process.execPath, ['-e', `
      const n = require(${JSON.stringify(ADDON)});
      const { Worker } = require('worker_threads');
      try { n.loopPollSet(-1); } catch (e) { console.log(e.message); }
      n.loopPollSet(1000);
      const w = new Worker("const n = require(${JSON.stringify(ADDON).replace(/"/g, '\\"')}); n.loopPollSet(5000); console.log('worker ' + n.loopPollStats().maxNs);", { eval: true });
      w.on('exit', () => { console.log('main ' + n.loopPollStats().maxNs); n.loopPollSet(0); });`], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual(['loopPollSet: maxNs must be an integer >= 0', 'worker 5000', 'main 1000']);
  });
});

describe('BLOCKD_POLL_MAX_NS', () => {
  it('defaults, takes an integer, refuses anything else', () => {
    expect(loopPollingFromEnv({})).toEqual(DEFAULT_LOOP_POLLING);
    expect(DEFAULT_LOOP_POLLING.maxNs).toBe(65536);
    expect(loopPollingFromEnv({ BLOCKD_POLL_MAX_NS: '0' })).toEqual({ maxNs: 0 });
    expect(loopPollingFromEnv({ BLOCKD_POLL_MAX_NS: '' })).toEqual(DEFAULT_LOOP_POLLING);
    for (const bad of ['-1', '1e5', 'abc', '9007199254740993']) {
      expect(() => loopPollingFromEnv({ BLOCKD_POLL_MAX_NS: bad })).toThrow(`BLOCKD_POLL_MAX_NS: '${bad}' is not an integer >= 0`);
    }
  });

  it('a bad value stops blockd before it starts', () => {
    const r = spawnSync('bin/blockd', ['--blockdev', 'driver=null-co,node-name=n'], { encoding: 'utf8', env: { ...process.env, BLOCKD_POLL_MAX_NS: 'lots' }, timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe("blockd: BLOCKD_POLL_MAX_NS: 'lots' is not an integer >= 0");
  });
});
