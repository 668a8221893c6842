/**
 * The load run (test/load/run.ts; `npm run load` for 1,000 connections) at a
 * small scale under npm test: 50 NBD clients over Unix and TCP doing I/O, a
 * flood of unread pipelined reads, slow handshakes, 20 QMP clients and one
 * past the monitor's limit.
 */
import { describe, it, expect } from 'vitest';
import { tempDir } from '../helpers/temp.ts';
import { runLoad } from '../load/run.ts';

describe('load, small scale', () => {
  it('serves everyone, bounds memory, drops slow handshakes, refuses the QMP client past the limit', async () => {
    const f = await runLoad({ dir: tempDir('blockd-load-'), connections: 50, requests: 8, floodClients: 4, slowClients: 10, qmpClients: 20 });
    for (const t of ['unix', 'tcp']) {
      expect(f[`${t} connections held`]).toBe(50);
      expect(f[`${t} requests served`]).toBe(400);
      expect(f[`${t} request errors`]).toBe(0);
      expect(f[`${t} connections lost`]).toBe(0);
    }
    expect(f['flood probe ms']).toBeGreaterThanOrEqual(0);
    // 64 requests x 64 KiB in flight per connection at most (the per-connection caps), plus buffers.
    expect(f['flood rss MiB/client']).toBeLessThan(24);
    expect(f['slowloris handshakes dropped']).toBe(10);
    expect(f['slowloris worst probe ms']).toBeGreaterThanOrEqual(0);
    expect(f['qmp replies']).toBe(20 * 6);
    expect(f['qmp errors']).toBe(0);
    expect(f['qmp client past the limit refused']).toBe(1);
  }, 120_000);
});
