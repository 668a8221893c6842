/** scripts/profile/breakdown.ts: a V8 CPU profile's self time by request stage, inside the measured window only. */
import { describe, it, expect } from 'vitest';
import { breakdown, formatBreakdown, type CpuProfile } from '../../scripts/profile/breakdown.ts';

const frame = (id: number, functionName: string, url: string) => ({ id, callFrame: { functionName, url } });

// Samples 1..6 at 100 µs steps from t=1000; each sample's time is the delta that follows it.
const profile: CpuProfile = {
  nodes: [
    frame(1, '(root)', ''), frame(2, '(idle)', ''), frame(3, 'parseRequest', 'file:///x/src/nbd-protocol/requests.ts'),
    frame(4, 'send', 'file:///x/src/nbd/connection.ts'), frame(5, 'writeBuffer', ''), frame(6, 'read', 'file:///x/src/blockdev/drivers/file/posix-file.ts'),
  ],
  samples: [3, 4, 5, 5, 6, 2],
  timeDeltas: [1000, 100, 100, 100, 100, 100],
  startTime: 0,
  endTime: 1600,
};

describe('CPU profile breakdown', () => {
  it('gives each sample the time up to the next one, by the stage of its file', () => {
    expect(breakdown(profile)).toEqual([
      { stage: 'idle (waiting in epoll)', us: 0 },
      { stage: 'socket write syscalls (writeBuffer, writev)', us: 200 },
      { stage: 'parse and encode (src/nbd-protocol)', us: 100 },
      { stage: 'dispatch and reply (src/nbd)', us: 100 },
      { stage: 'driver (src/blockdev/drivers)', us: 100 },
    ]);
  });

  it('counts only samples taken inside the window', () => {
    expect(breakdown(profile, { from: 1150, to: 1350 })).toEqual([{ stage: 'socket write syscalls (writeBuffer, writev)', us: 200 }]);
  });

  it('prints µs per request and shares of the busy time, idle left out of the shares', () => {
    const text = formatBreakdown([{ stage: 'idle (waiting in epoll)', us: 1000 }, { stage: 'dispatch and reply (src/nbd)', us: 300 }, { stage: 'driver (src/blockdev/drivers)', us: 100 }], 100);
    expect(text).toMatch(/dispatch and reply \(src\/nbd\)\s+0\s+75\.0\s+3\.00/);
    expect(text).toMatch(/busy \(all but idle\), main thread\s+0\s+100\.0\s+4\.00/);
  });
});
