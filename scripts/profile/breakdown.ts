/**
 * Where a V8 CPU profile (.cpuprofile, from node --cpu-prof) spends its
 * time, in the stages of an NBD request: each sample's self time goes to
 * the stage of the function it was in, named by the source file's place in
 * the tree (src/nbd-protocol is parsing and encoding, src/nbd dispatch and
 * replies, src/blockdev the block layer, its drivers/ the driver...), and
 * Node's own code by what it does (socket streams, fs calls into the
 * thread pool, promise and microtask machinery). Pure: a profile in, a
 * table out.
 */

export interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}

export interface CpuProfile {
  nodes: CpuProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Stages in request order, then the rest; the first rule that matches a frame wins. */
export const STAGES: readonly { stage: string; test: (url: string, fn: string) => boolean }[] = [
  { stage: 'idle (waiting in epoll)', test: (u, f) => u === '' && f === '(idle)' },
  { stage: 'garbage collection', test: (u, f) => u === '' && f === '(garbage collector)' },
  { stage: 'native (libuv, syscalls, addon)', test: (u, f) => u === '' && (f === '(program)' || f === '(root)') },
  { stage: 'socket write syscalls (writeBuffer, writev)', test: (u, f) => u === '' && /^write(Buffer|v|Utf8String|Latin1String)$/.test(f) },
  { stage: 'other native builtins', test: (u) => u === '' },
  { stage: 'socket streams (node:net, streams)', test: (u) => /node:(net|stream|internal\/stream|internal\/streams|internal\/net)/.test(u) },
  { stage: 'file calls (node:fs)', test: (u) => /node:(fs|internal\/fs)/.test(u) },
  { stage: 'promises, timers, microtasks', test: (u) => /node:internal\/(process\/task_queues|timers|async_hooks)|node:timers/.test(u) },
  { stage: 'parse and encode (src/nbd-protocol)', test: (u) => u.includes('/src/nbd-protocol/') },
  { stage: 'dispatch and reply (src/nbd)', test: (u) => u.includes('/src/nbd/') },
  { stage: 'export layer (src/export)', test: (u) => u.includes('/src/export/') },
  { stage: 'driver (src/blockdev/drivers)', test: (u) => u.includes('/src/blockdev/drivers/') },
  { stage: 'filters (src/blockdev/filters)', test: (u) => u.includes('/src/blockdev/filters/') },
  { stage: 'block layer (src/blockdev)', test: (u) => u.includes('/src/blockdev/') },
  { stage: 'platform, util (src/platform, src/util)', test: (u) => /\/src\/(platform|util)\//.test(u) },
  { stage: 'other project code (src/)', test: (u) => u.includes('/src/') },
  { stage: 'dependencies (node_modules)', test: (u) => u.includes('/node_modules/') },
  { stage: 'other Node internals', test: (u) => u.startsWith('node:') },
  { stage: 'other', test: () => true },
];

export interface StageTime { stage: string; us: number }

/**
 * Self time per stage in µs, in STAGES order, stages with no sample left
 * out. `window` (µs on the profile's clock, CLOCK_MONOTONIC as
 * process.hrtime): only samples taken in it count, so start-up is left out.
 */
export function breakdown(p: CpuProfile, window?: { from: number; to: number }): StageTime[] {
  const stageOf = new Map<number, string>();
  for (const n of p.nodes) {
    const rule = STAGES.find((r) => r.test(n.callFrame.url, n.callFrame.functionName));
    stageOf.set(n.id, rule!.stage);
  }
  const us = new Map<string, number>();
  // timeDeltas[i] is the time before sample i: it belongs to the sample before it.
  let at = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    at += p.timeDeltas[i] ?? 0;
    if (window && (at < window.from || at > window.to)) continue;
    const dt = p.timeDeltas[i + 1] ?? 0;
    const s = stageOf.get(p.samples[i]!)!;
    us.set(s, (us.get(s) ?? 0) + dt);
  }
  return STAGES.filter((r) => us.has(r.stage)).map((r) => ({ stage: r.stage, us: us.get(r.stage)! }));
}

/** The `n` functions with the most self time in the window: "µs/req stage function file:line". */
export function topFunctions(p: CpuProfile, requests: number, n: number, window?: { from: number; to: number }): string {
  const byId = new Map(p.nodes.map((x) => [x.id, x]));
  const self = new Map<string, { us: number; stage: string }>();
  let at = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    at += p.timeDeltas[i] ?? 0;
    if (window && (at < window.from || at > window.to)) continue;
    const node = byId.get(p.samples[i]!)!;
    const { functionName, url } = node.callFrame;
    if (functionName === '(idle)') continue;
    const key = `${functionName || '(anonymous)'} ${url.replace(/^file:\/\/.*?\/(src|node_modules)\//, '$1/')}`;
    const e = self.get(key) ?? { us: 0, stage: STAGES.find((r) => r.test(url, functionName))!.stage.split(' (')[0]! };
    e.us += p.timeDeltas[i + 1] ?? 0;
    self.set(key, e);
  }
  return [...self].sort((a, b) => b[1].us - a[1].us).slice(0, n)
    .map(([k, v]) => `${(v.us / requests).toFixed(2).padStart(9)}  ${v.stage.padEnd(28)} ${k}`).join('\n');
}

/** The table: stage, ms, share of the busy (non-idle) time, µs per request. */
export function formatBreakdown(rows: StageTime[], requests: number): string {
  const busy = rows.filter((r) => !r.stage.startsWith('idle')).reduce((a, r) => a + r.us, 0);
  const lines = [`${'stage'.padEnd(42)}${'ms'.padStart(9)}${'busy %'.padStart(9)}${'µs/req'.padStart(9)}`];
  for (const r of rows) {
    const idle = r.stage.startsWith('idle');
    lines.push(`${r.stage.padEnd(42)}${(r.us / 1000).toFixed(0).padStart(9)}${(idle ? '' : (100 * r.us / busy).toFixed(1)).padStart(9)}${(r.us / requests).toFixed(2).padStart(9)}`);
  }
  lines.push(`${'busy (all but idle), main thread'.padEnd(42)}${(busy / 1000).toFixed(0).padStart(9)}${'100.0'.padStart(9)}${(busy / requests).toFixed(2).padStart(9)}`);
  return lines.join('\n');
}
