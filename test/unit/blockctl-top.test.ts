/** blockctl top's screen from two samples: rates over the interval, percentiles from the histograms' deltas, jobs' bars and rates. */
import { describe, expect, it } from 'vitest';
import { renderTop, type TopSample } from '../../src/qmp/client/top.ts';
import { LatencyHistogram } from '../../src/util/stats/latency-histogram.ts';

const MiB = 1024 * 1024;

function stats(rdOps: number, rdBytes: number, rdBins: number[]): Record<string, unknown> {
  const boundaries = LatencyHistogram.boundariesNs();
  const bins = boundaries.map(() => 0).concat(0);
  rdBins.forEach((n, i) => (bins[i] = n));
  return {
    rd_operations: rdOps, rd_bytes: rdBytes, wr_operations: 0, wr_bytes: 0, flush_operations: 0, wr_highest_offset: 0,
    failed_rd_operations: 0, failed_wr_operations: 1, failed_flush_operations: 0, failed_unmap_operations: 0,
    rd_latency_histogram: { boundaries, bins }, wr_latency_histogram: { boundaries, bins: bins.map(() => 0) },
  };
}

function sample(t: number, rdOps: number, rdBins: number[], progress: number): TopSample {
  return {
    t,
    stats: [{ 'node-name': 'd0', stats: stats(rdOps, rdOps * 4096, rdBins) }],
    jobs: [{ id: 'j0', type: 'mirror', status: 'running', 'current-progress': progress, 'total-progress': 100 * MiB }],
    exports: [{ id: 'e0', type: 'nbd', 'node-name': 'd0', 'shutting-down': false }],
    clients: new Map([['e0', 2]]),
  };
}

describe('renderTop', () => {
  it('rates and percentiles over the interval between two samples', () => {
    // 1000 reads before; in the next 2 s 400 more: 200 in (1, 2] µs, 200 in (2, 4] µs.
    const a = sample(10, 1000, [0, 1000], 10 * MiB);
    const b = sample(12, 1400, [0, 1200, 200], 30 * MiB);
    const lines = renderTop(a, b, { title: 't', width: 300 });
    const text = lines.join('\n');
    expect(text).toMatch(/^e0\s+nbd\s+d0\s+2\s+serving$/m);
    // 200 IOPS, 200*4096 B/s = 0.8 MiB/s; p50 = 2 µs (the boundary), p99 within (2, 4] µs.
    expect(text).toMatch(/^d0\s+200\s+0\.8\s+0\s+0\.0\s+0\s+2us\/4us\s+-\s+1\s+0 B$/m);
    expect(text).toMatch(/^j0\s+mirror\s+running\s+\[#{7}\.{17}\]\s+30\.0%\s+10\.0 MiB\/s$/m);
  });

  it('without a previous sample: rates 0 and percentiles over everything so far; cut to the width', () => {
    const lines = renderTop(undefined, sample(1, 10, [10], 0), { title: 'x'.repeat(100), width: 40 });
    expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(40);
    const full = renderTop(undefined, { ...sample(1, 10, [10], 0), clients: undefined }, { title: 't', width: 300 }).join('\n');
    expect(full).toMatch(/^d0\s+0\s+0\.0\s+0\s+0\.0\s+0\s+1us\/1us\s/m);
    expect(full).toMatch(/^e0\s+nbd\s+d0\s+-\s+serving$/m);
  });
});
