/** The job status model as data: transition table, verb table, refusal text; and the token bucket alone. */
import { describe, it, expect } from 'vitest';
import {
  JOB_STATUSES, JOB_VERBS, TRANSITIONS, VERBS, canTransition, verbAllowed, verbRefusal,
  isReadyStatus, isCompletedStatus, type JobStatus, type JobVerb,
} from '../../src/blockdev/jobs/status.ts';
import { TokenBucket } from '../../src/util/token-bucket.ts';

/** QEMU's job.c tables written as rows of 0/1 over U C R P Y S W D X E N. */
const STT: Record<JobStatus, string> = {
  undefined: '01000000000',
  created: '00100000101',
  running: '00011010100',
  paused: '00100000000',
  ready: '00000110100',
  standby: '00001000000',
  waiting: '00000001100',
  pending: '00000000110',
  aborting: '00000000110',
  concluded: '00000000001',
  null: '00000000000',
};
const VERB_TABLE: Record<JobVerb, string> = {
  cancel: '01111111000',
  pause: '01111100000',
  resume: '01111100000',
  'set-speed': '01111100000',
  complete: '00001100000', // 7.2: complete is accepted in standby as well
  dismiss: '00000000010',
  finalize: '00000001000',
};

describe('job transition table', () => {
  it('matches QEMU JobSTT cell by cell', () => {
    for (const from of JOB_STATUSES) {
      const row = JOB_STATUSES.map((to) => (canTransition(from, to) ? '1' : '0')).join('');
      expect(`${from}: ${row}`).toBe(`${from}: ${STT[from]}`);
    }
  });

  it('lists every status exactly once, in QAPI order', () => {
    expect(Object.keys(TRANSITIONS)).toEqual([...JOB_STATUSES]);
    expect(JOB_STATUSES[0]).toBe('undefined');
    expect(JOB_STATUSES.at(-1)).toBe('null');
  });

  it('has no way out of null and only null after concluded', () => {
    expect(TRANSITIONS.null).toEqual([]);
    expect(TRANSITIONS.concluded).toEqual(['null']);
  });

  it('classifies ready and completed statuses as QEMU does', () => {
    expect(JOB_STATUSES.filter(isReadyStatus)).toEqual(['ready', 'standby']);
    expect(JOB_STATUSES.filter(isCompletedStatus)).toEqual(['waiting', 'pending', 'aborting', 'concluded', 'null']);
  });
});

describe('job verb table', () => {
  it('matches QEMU JobVerbTable (7.2) cell by cell', () => {
    expect(Object.keys(VERBS)).toEqual([...JOB_VERBS]);
    for (const verb of JOB_VERBS) {
      const row = JOB_STATUSES.map((s) => (verbAllowed(verb, s) ? '1' : '0')).join('');
      expect(`${verb}: ${row}`).toBe(`${verb}: ${VERB_TABLE[verb]}`);
    }
  });

  it('names the current state in a refusal, as QEMU does', () => {
    expect(verbRefusal('j1', 'concluded', 'pause')).toBe("Job 'j1' in state 'concluded' cannot accept command verb 'pause'");
    expect(verbRefusal('m1', 'running', 'set-speed')).toBe("Job 'm1' in state 'running' cannot accept command verb 'set-speed'");
  });
});

describe('token bucket', () => {
  it('is unlimited at rate 0', () => {
    const b = new TokenBucket(0, 0);
    b.take(1e12, 0);
    expect(b.delay(0)).toBe(0);
  });

  it('starts with a burst of a tenth of a second and then enforces the rate', () => {
    const b = new TokenBucket(1000, 0); // 1000 bytes/s, burst 100
    expect(b.capacity).toBe(100);
    b.take(100, 0);
    expect(b.delay(0)).toBe(0);
    b.take(500, 0);
    expect(b.delay(0)).toBe(500);
    expect(b.delay(250)).toBe(250);
    expect(b.delay(500)).toBe(0);
  });

  it('refills continuously up to its capacity only', () => {
    const b = new TokenBucket(1000, 0);
    b.take(100, 0);
    expect(b.level(50)).toBeCloseTo(50);
    expect(b.level(10_000)).toBe(100);
  });

  it('averages to the rate over many small takes', () => {
    const b = new TokenBucket(1_000_000, 0);
    let now = 0;
    let sent = 0;
    while (sent < 10_000_000) {
      b.take(65536, now);
      sent += 65536;
      now += b.delay(now);
    }
    // 10 MB at 1 MB/s, less the initial burst of 0.1 s, rounded up per step.
    expect(now).toBeGreaterThanOrEqual(9_900);
    expect(now).toBeLessThan(10_100);
  });

  it('keeps debt but caps credit when the rate changes', () => {
    const b = new TokenBucket(1000, 0);
    b.take(1100, 0); // 1000 in debt: 1 s
    b.setRate(2000, 0);
    expect(b.delay(0)).toBe(500);
    const c = new TokenBucket(10_000, 0); // capacity 1000
    c.setRate(100, 0); // capacity 10: credit cut down
    expect(c.level(0)).toBe(10);
  });

  it('becomes unlimited when set to 0 and limited again from empty', () => {
    const b = new TokenBucket(1000, 0);
    b.take(5000, 0);
    b.setRate(0, 0);
    expect(b.delay(0)).toBe(0);
    b.setRate(1000, 0);
    b.take(200, 0);
    expect(b.delay(0)).toBe(200);
  });

  it('does not go backwards in time and refuses bad input', () => {
    const b = new TokenBucket(1000, 100);
    b.take(200, 100);
    expect(b.delay(50)).toBe(100); // a clock going back is treated as no time passing
    expect(() => new TokenBucket(-1, 0)).toThrow(RangeError);
    expect(() => b.take(-5, 0)).toThrow(RangeError);
    expect(() => b.setRate(Number.NaN, 0)).toThrow(RangeError);
  });
});
