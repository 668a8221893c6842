/**
 * The throttling algorithm alone (src/util/throttle): QEMU's validation and
 * its texts, the leaky buckets against worked examples (docs/throttle.txt),
 * and the group scheduler with a fake clock.
 */
import { describe, it, expect } from 'vitest';
import { applyLimits, configToLimits, emptyConfig, setLegacyLimit, validateConfig, type ThrottleLimits } from '../../src/util/throttle/config.ts';
import { ThrottleState, type Direction } from '../../src/util/throttle/leaky-bucket.ts';
import { ThrottleGroup, type ThrottleClock, type ThrottleMember } from '../../src/util/throttle/group.ts';

const cfg = (l: ThrottleLimits) => applyLimits(emptyConfig(), l);
const errorOf = (l: ThrottleLimits) => { try { cfg(l); return 'ok'; } catch (e) { return (e as Error).message; } };

describe('ThrottleLimits validation (QEMU throttle_is_valid texts, checked against qsd)', () => {
  it.each<[ThrottleLimits, string]>([
    [{ 'iops-total': 100 }, 'ok'],
    [{ 'iops-total': 100, 'iops-read': 5 }, 'bps/iops/max total values and read/write values cannot be used at the same time'],
    [{ 'bps-total-max': 100, 'bps-write-max': 5 }, 'bps/iops/max total values and read/write values cannot be used at the same time'],
    [{ 'iops-read': 10, 'bps-write': 5 }, 'ok'],
    [{ 'iops-size': 4096 }, 'iops size requires an iops value to be set'],
    [{ 'bps-total': 1, 'iops-size': 4096 }, 'iops size requires an iops value to be set'],
    [{ 'iops-total-max': 5 }, 'bps_max/iops_max require corresponding bps/iops values'],
    [{ 'iops-total': 10, 'iops-total-max': 5 }, 'bps_max/iops_max cannot be lower than bps/iops'],
    [{ 'iops-total': 10, 'iops-total-max-length': 5 }, 'burst length set without burst rate'],
    [{ 'iops-total': 10, 'iops-total-max': 20, 'iops-total-max-length': 0 }, 'the burst length cannot be 0'],
    [{ 'bps-total': 1_000_000_000_000_001 }, 'bps/iops/max values must be within [0, 1000000000000000]'],
    [{ 'bps-total': 1_000_000_000_000_000 }, 'ok'],
    [{ 'iops-total': -1 }, 'bps/iops/max values must be within [0, 1000000000000000]'],
    [{ 'iops-total-max-length': 4294967296 }, 'iops-total-max-length value must be in the range [0, 4294967295]'],
    [{ 'iops-total-max-length': -1 }, 'burst length set without burst rate'],
    [{ 'iops-total': 1, 'iops-total-max': 2, 'iops-total-max-length': -1 }, 'burst length too high for this burst rate'],
    [{ 'iops-total': 1, 'iops-total-max': 100_000_000_000_000, 'iops-total-max-length': 11 }, 'burst length too high for this burst rate'],
    [{ 'iops-total': 1, 'iops-total-max': 100_000_000_000_000, 'iops-total-max-length': 10 }, 'ok'],
    [{ 'iops-total': 1, 'iops-size': -1 }, 'ok'],
  ])('%j -> %s', (limits, expected) => {
    expect(errorOf(limits)).toBe(expected);
  });

  it('applies limits over the existing configuration and leaves it alone on error', () => {
    const base = cfg({ 'iops-total': 5, 'bps-read': 7 });
    const next = applyLimits(base, { 'bps-read': 100 });
    expect(configToLimits(next)['iops-total']).toBe(5);
    expect(configToLimits(next)['bps-read']).toBe(100);
    expect(() => applyLimits(base, { 'iops-read': 3 })).toThrow(/cannot be used at the same time/);
    expect(configToLimits(base)['bps-read']).toBe(7);
  });

  it('returns every member, burst lengths 1 by default', () => {
    const l = configToLimits(cfg({ 'iops-total': 6 }));
    expect(Object.keys(l)).toHaveLength(19);
    expect(l).toMatchObject({ 'iops-total': 6, 'iops-total-max': 0, 'iops-total-max-length': 1, 'bps-write-max-length': 1, 'iops-size': 0 });
  });

  it('legacy x- properties: negative values and long bursts refused with QEMU texts, the whole validated later', () => {
    const c = emptyConfig();
    expect(() => setLegacyLimit(c, 'iops-total', -5, 'x-iops-total')).toThrow('Property values cannot be negative');
    expect(() => setLegacyLimit(c, 'iops-total-max-length', 4294967296, 'x-iops-total-max-length'))
      .toThrow('x-iops-total-max-length value must be in therange [0, 4294967295]');
    setLegacyLimit(c, 'iops-total', 5, 'x-iops-total');
    setLegacyLimit(c, 'iops-read', 3, 'x-iops-read');
    expect(() => validateConfig(c)).toThrow('bps/iops/max total values and read/write values cannot be used at the same time');
  });
});

/** A client that starts a request whenever the throttle lets it, as fast as it can; returns start times (ms). */
function greedy(s: ThrottleState, dir: Direction, bytes: number, untilMs: number, startMs = 0): number[] {
  const starts: number[] = [];
  let t = startMs;
  while (t < untilMs) {
    const w = s.wait(dir, t);
    if (w > 0) { t += w; continue; }
    s.account(dir, bytes);
    starts.push(t);
  }
  return starts;
}

describe('leaky buckets (util/throttle.c semantics)', () => {
  it('iops-total=100: a greedy client gets 100 IOPS after the 10-request slack of a tenth of a second', () => {
    const s = new ThrottleState(cfg({ 'iops-total': 100 }));
    const starts = greedy(s, 'read', 4096, 10_000);
    // 11 at once (the level may reach avg/10 = 10 and one more is charged over it), then one per 10 ms.
    expect(starts.filter((t) => t === 0)).toHaveLength(11);
    expect(starts.length).toBeGreaterThanOrEqual(1009);
    expect(starts.length).toBeLessThanOrEqual(1011);
    expect(starts[500]! - starts[400]!).toBeCloseTo(1000, 6);
  });

  it('bps-total=1 MiB/s with 64 KiB reads: 16 reads a second', () => {
    const s = new ThrottleState(cfg({ 'bps-total': 1048576 }));
    const starts = greedy(s, 'read', 65536, 20_000);
    const inLastTen = starts.filter((t) => t >= 10_000).length;
    expect(inLastTen).toBeGreaterThanOrEqual(159);
    expect(inLastTen).toBeLessThanOrEqual(161);
  });

  it('the burst example of docs/throttle.txt: 2000 IOPS for about 63 s (120000 / 1900), then 100 IOPS', () => {
    const s = new ThrottleState(cfg({ 'iops-total': 100, 'iops-total-max': 2000, 'iops-total-max-length': 60 }));
    const starts = greedy(s, 'write', 4096, 80_000);
    const gaps = starts.slice(1).map((t, i) => t - starts[i]!);
    const end = starts[gaps.findIndex((g) => g > 5)]!; // the first gap longer than the burst rate's 0.5 ms
    expect(end / 1000).toBeGreaterThan(63);
    expect(end / 1000).toBeLessThan(63.3);
    const burst = starts.filter((t) => t >= 10_000 && t < 20_000).length;
    expect(burst).toBeGreaterThanOrEqual(19_990);
    expect(burst).toBeLessThanOrEqual(20_010);
    const after = starts.filter((t) => t >= 70_000 && t < 80_000).length;
    expect(after).toBeGreaterThanOrEqual(999);
    expect(after).toBeLessThanOrEqual(1001);
  });

  it('a longer burst at a lower rate fits the same bucket (1000 IOPS for about 120 s)', () => {
    const s = new ThrottleState(cfg({ 'iops-total': 100, 'iops-total-max': 2000, 'iops-total-max-length': 60 }));
    // A client that asks for 1000 IOPS exactly: it is never throttled while the bucket fills at 900/s.
    let throttledAt = -1;
    for (let t = 0; t < 200_000; t += 1) {
      if (s.wait('read', t) > 0) { throttledAt = t; break; }
      s.account('read', 512);
    }
    expect(throttledAt / 1000).toBeGreaterThan(133); // 120000 / 900
    expect(throttledAt / 1000).toBeLessThan(134);
  });

  it('iops-size counts larger requests proportionally: 8 KiB is two, 6 KiB one and a half, 1 KiB one', () => {
    const s = new ThrottleState(cfg({ 'iops-total': 1000, 'iops-size': 4096 }));
    s.account('read', 8192);
    expect(s.level('iops-total').level).toBe(2);
    s.account('read', 6144);
    expect(s.level('iops-total').level).toBe(3.5);
    s.account('read', 1024);
    expect(s.level('iops-total').level).toBe(4.5);
    expect(s.level('bps-total').level).toBe(8192 + 6144 + 1024);
  });

  it('a request is charged to total and its direction only; the wait is the largest over its buckets', () => {
    const s = new ThrottleState(cfg({ 'bps-read': 1000, 'iops-write': 10 }));
    s.account('write', 100_000);
    expect(s.level('iops-write').level).toBe(1);
    expect(s.level('bps-read').level).toBe(0);
    expect(s.wait('read', 0)).toBe(0);
    s.account('read', 1100); // 1000 over bps-read's 100-byte bucket: one second
    expect(s.wait('read', 0)).toBeCloseTo(1000, 9);
    expect(s.wait('write', 0)).toBe(0);
    const both = new ThrottleState(cfg({ 'bps-total': 1000, 'iops-total': 1 }));
    both.account('read', 300); // bps: 200 over 100 -> 200 ms; iops: 1 over 0.1 -> 900 ms
    expect(both.wait('write', 0)).toBeCloseTo(900, 9);
  });

  it('configure() empties the buckets', () => {
    const s = new ThrottleState(cfg({ 'iops-total': 1 }));
    s.account('read', 1); s.account('read', 1);
    expect(s.wait('read', 0)).toBeGreaterThan(0);
    s.configure(cfg({ 'iops-total': 1 }), 0);
    expect(s.wait('read', 0)).toBe(0);
  });
});

/** A fake clock: timers run when the test advances time; woken requests get their microtasks in between. */
class FakeClock implements ThrottleClock {
  t = 0;
  private timers = new Map<number, { at: number; cb: () => void }>();
  private seq = 0;
  now() { return this.t; }
  setTimer(ms: number, cb: () => void) { const id = ++this.seq; this.timers.set(id, { at: this.t + Math.max(0, ms), cb }); return id; }
  clearTimer(h: unknown) { this.timers.delete(h as number); }
  armed() { return this.timers.size; }
  async advance(ms: number) {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let next: [number, { at: number; cb: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at || (e[1].at === next[1].at && e[0] < next[0]))) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].cb();
    }
    this.t = end;
    await settle();
  }
}
const settle = () => new Promise<void>((r) => setImmediate(r));

/** Keeps `depth` requests of `bytes` queued on `m` at all times; records when each ran. */
function client(m: ThrottleMember, depth: number, bytes: number, dir: Direction, clock: FakeClock) {
  const ran: number[] = [];
  let stopped = false;
  const issue = () => {
    if (stopped) return;
    const p = m.intercept(bytes, dir);
    // Each request completes at once when it runs; the client then sends another.
    if (p) void p.then(() => { ran.push(clock.now()); queueMicrotask(issue); });
    else { ran.push(clock.now()); queueMicrotask(issue); }
  };
  for (let i = 0; i < depth; i++) issue();
  return { ran, stop: () => { stopped = true; } };
}

describe('throttle group scheduling (block/throttle-groups.c semantics, fake clock)', () => {
  it('one member at iops-read=100: 100 requests a second, FIFO, one timer armed at a time', async () => {
    const clock = new FakeClock();
    const g = new ThrottleGroup(cfg({ 'iops-read': 100 }), clock);
    const m = g.join();
    const c = client(m, 8, 4096, 'read', clock);
    await clock.advance(5000);
    expect(clock.armed()).toBe(1);
    c.stop();
    const inWindow = c.ran.filter((t) => t >= 1000 && t < 5000).length;
    expect(inWindow).toBeGreaterThanOrEqual(399);
    expect(inWindow).toBeLessThanOrEqual(401);
  });

  it('writes are not held by a throttled read queue (one queue and one timer per direction)', async () => {
    const clock = new FakeClock();
    const g = new ThrottleGroup(cfg({ 'iops-read': 1 }), clock);
    const m = g.join();
    client(m, 4, 512, 'read', clock);
    expect(m.queued('read')).toBeGreaterThan(0);
    expect(m.intercept(512, 'write')).toBeUndefined();
  });

  it('two members with different queue depths share the group limit evenly (round-robin)', async () => {
    const clock = new FakeClock();
    const g = new ThrottleGroup(cfg({ 'iops-total': 200 }), clock);
    const a = client(g.join(), 1, 4096, 'read', clock);
    const b = client(g.join(), 16, 4096, 'read', clock);
    await clock.advance(5000);
    a.stop(); b.stop();
    const na = a.ran.filter((t) => t >= 1000).length;
    const nb = b.ran.filter((t) => t >= 1000).length;
    expect(na + nb).toBeGreaterThanOrEqual(798);
    expect(na + nb).toBeLessThanOrEqual(802);
    expect(Math.abs(na - nb)).toBeLessThanOrEqual(4);
  });

  it('disable() (drain) lets every queued request through at once; new ones do not wait until enable()', async () => {
    const clock = new FakeClock();
    const g = new ThrottleGroup(cfg({ 'iops-total': 1 }), clock);
    const m = g.join();
    const done: number[] = [];
    for (let i = 0; i < 10; i++) {
      const p = m.intercept(512, 'read');
      if (p) void p.then(() => done.push(i)); else done.push(i);
    }
    await settle();
    expect(done.length).toBeLessThan(10);
    m.disable();
    await settle();
    expect(done).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(m.intercept(512, 'read')).toBeUndefined();
    m.enable();
    expect(m.intercept(512, 'read')).toBeDefined();
    expect(clock.t).toBe(0);
  });

  it('a drained member does not wait behind another member\'s throttled requests', async () => {
    const clock = new FakeClock();
    const g = new ThrottleGroup(cfg({ 'iops-total': 1 }), clock);
    const other = g.join();
    const m = g.join();
    client(other, 4, 512, 'read', clock);
    const mine: number[] = [];
    for (let i = 0; i < 3; i++) void m.intercept(512, 'read')?.then(() => mine.push(i));
    m.disable();
    await settle();
    expect(mine).toEqual([0, 1, 2]);
  });

  it('configure() re-times waiting requests under the new limits', async () => {
    const clock = new FakeClock();
    const g = new ThrottleGroup(cfg({ 'iops-total': 1 }), clock);
    const m = g.join();
    const c = client(m, 2, 512, 'read', clock);
    await clock.advance(100);
    const before = c.ran.length;
    g.configure(cfg({ 'iops-total': 1000 }));
    await clock.advance(1000);
    c.stop();
    expect(c.ran.length - before).toBeGreaterThanOrEqual(1000);
  });

  it('a member drained and leaving hands the group\'s timer on to the others', async () => {
    const clock = new FakeClock();
    const g = new ThrottleGroup(cfg({ 'iops-total': 10 }), clock);
    const a = g.join();
    const b = g.join();
    // a fills the bucket; its third request arms the group's timer; b queues behind it.
    const pa: number[] = [];
    for (let i = 0; i < 3; i++) void a.intercept(512, 'read')?.then(() => pa.push(clock.now()));
    const pb: number[] = [];
    void b.intercept(512, 'read')?.then(() => pb.push(clock.now()));
    expect([a.queued('read'), b.queued('read')]).toEqual([1, 1]);
    a.disable();
    await settle();
    expect(pa).toEqual([0]);
    a.leave();
    expect(g.members).toEqual([b]);
    await clock.advance(1000);
    // b waits for the level a left behind (3 requests against a 1-request bucket at 10/s): 200 ms.
    expect(pb).toHaveLength(1);
    expect(pb[0]).toBeCloseTo(200, 6);
  });
});
