/** Statistics counted in an iothread and carried back (src/iothread/stats-delta.ts). */
import { describe, expect, it } from 'vitest';
import { NodeStats } from '../../src/blockdev/node.ts';
import { ExportIoStats, ExportOp } from '../../src/export/io-stats.ts';
import { addDelta, delta, flatten } from '../../src/iothread/stats-delta.ts';

describe('stats deltas', () => {
  it('adds what the copy counted since its last report, whatever the main copy had', () => {
    const main = new NodeStats();
    main.rdOps = 5; main.rdBytes = 5000; main.wrHighestOffset = 8192; main.rdLatency.record(3000);
    const worker = new NodeStats();
    let prev = flatten(worker);
    worker.rdOps = 2; worker.rdBytes = 1024; worker.wrOps = 1; worker.wrHighestOffset = 4096; worker.rdLatency.record(5000); worker.lastAccessNs = 1000;
    let cur = flatten(worker);
    addDelta(main, delta(cur, prev, worker), 500);
    expect([main.rdOps, main.rdBytes, main.wrOps]).toEqual([7, 6024, 1]);
    // A high-water mark is the higher one, not a sum; a time moves onto the main clock.
    expect(main.wrHighestOffset).toBe(8192);
    expect(main.lastAccessNs).toBe(1500);
    expect(main.rdLatency.count).toBe(2);
    expect(main.rdLatency.sumNs).toBe(8000);
    prev = cur;
    worker.rdOps = 3; worker.wrHighestOffset = 1 << 20;
    cur = flatten(worker);
    addDelta(main, delta(cur, prev, worker), 500);
    expect(main.rdOps).toBe(8);
    expect(main.wrHighestOffset).toBe(1 << 20);
    expect(main.rdLatency.count).toBe(2);
    // Nothing new: nothing changes.
    addDelta(main, delta(cur, cur, worker), 500);
    expect(main.rdOps).toBe(8);
  });

  it("carries an export's arrays and histograms, and refuses a delta of another shape", () => {
    const main = new ExportIoStats();
    const worker = new ExportIoStats();
    const prev = flatten(worker);
    const t0 = worker.started();
    worker.ended(ExportOp.WRITE, 4096, t0, false);
    worker.refused(ExportOp.TRIM);
    addDelta(main, delta(flatten(worker), prev, worker), 0);
    expect(main.ops[ExportOp.WRITE]).toBe(1);
    expect(main.bytes[ExportOp.WRITE]).toBe(4096);
    expect(main.invalid[ExportOp.TRIM]).toBe(1);
    expect(main.latency[ExportOp.WRITE]!.count).toBe(1);
    expect(main.inFlight).toBe(0);
    expect(() => addDelta(main, [1, 2, 3], 0)).toThrow(/assertion failed/);
  });
});
