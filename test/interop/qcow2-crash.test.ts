/**
 * Crash safety through the daemon: blockd is killed with SIGKILL at random
 * moments of a write workload, many times. Afterwards qemu-img check finds no
 * corruption (leaks are allowed and repaired), and every write acknowledged
 * with FUA, or followed by an acknowledged flush, reads back.
 */
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, tempDir } from '../helpers/daemons.ts';
import { run, tryRun, SYSTEM_PYTHON } from '../helpers/tools.ts';

const BLOCK = 4096;
const SIZE = 64 << 20;

// Writes 4 KiB blocks at fresh indexes (never twice, so a durable block has exactly
// one possible content) and reports each block once it is known to be durable.
const WRITER = `
import nbd, sys, random
sock, seed, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
h = nbd.NBD(); h.connect_uri("nbd+unix:///d0?socket=" + sock)
pending = []
i = start
try:
    while True:
        idx = i; i += 1
        buf = bytes([idx % 251 + 1]) * ${BLOCK}
        k = rnd.random()
        if k < 0.3:
            h.pwrite(buf, idx * ${BLOCK}, nbd.CMD_FLAG_FUA)
            print("D", idx, flush=True)
        else:
            h.pwrite(buf, idx * ${BLOCK})
            pending.append(idx)
            if k > 0.9:
                h.flush()
                for p in pending: print("D", p, flush=True)
                pending = []
except Exception as e:
    print("END", e, flush=True)
`;

describe('qcow2 crash safety under SIGKILL', () => {
  it('no corruption and no lost durable write after 8 kills at random moments', async () => {
    const dir = tempDir();
    const img = join(dir, 'crash.qcow2');
    const sock = join(dir, 's.sock');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', img, String(SIZE)]);
    const durable = new Set<number>();
    let next = 0;
    for (let round = 0; round < 8; round++) {
      const d = await startDaemon('blockd', [
        '--blockdev', `driver=file,node-name=f0,filename=${img}`,
        '--blockdev', 'driver=qcow2,node-name=d0,file=f0',
        '--nbd-server', `addr.type=unix,addr.path=${sock}`,
        '--export', 'type=nbd,id=e0,node-name=d0,writable=on',
      ], sock);
      // Spread the blocks over the disk so many L2 tables and refcount blocks are touched.
      const start = (round * 1999 + next) % (SIZE / BLOCK / 2);
      const w = spawn(SYSTEM_PYTHON, ['-c', WRITER, sock, String(round), String(start)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      w.stdout!.on('data', (x) => (out += x));
      await new Promise((r) => setTimeout(r, 300 + ((round * 7919) % 900)));
      d.proc.kill('SIGKILL');
      await new Promise((r) => w.once('exit', r));
      await d.stop();
      for (const line of out.split('\n')) {
        const m = /^D (\d+)$/.exec(line);
        if (m) durable.add(Number(m[1]));
      }
      next += out.split('\n').length;
      const check = tryRun('qemu-img', ['check', '--output=json', img]);
      const result = JSON.parse(check.stdout);
      expect(result['corruptions'] ?? 0, check.stdout).toBe(0);
      expect(result['check-errors'] ?? 0, check.stdout).toBe(0);
      if ((result.leaks ?? 0) > 0) run('qemu-img', ['check', '-q', '-r', 'leaks', img]);
    }
    expect(durable.size).toBeGreaterThan(100);
    const raw = join(dir, 'crash.raw');
    run('qemu-img', ['convert', '-O', 'raw', img, raw]);
    const data = readFileSync(raw);
    const lost = [...durable].filter((idx) => data[idx * BLOCK] !== (idx % 251) + 1 || data[idx * BLOCK + BLOCK - 1] !== (idx % 251) + 1);
    expect(lost).toEqual([]);
  }, 180_000);
});
