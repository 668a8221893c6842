/**
 * Shared by the live-operation scenario tests: a raw NBD client that keeps
 * writing and models what was acknowledged, whole-disk reads, a daemon with a
 * QMP monitor and its event log, and waiting on events.
 */
import { afterEach, expect } from 'vitest';
import { readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { startDaemon, type Running } from './daemons.ts';
import { RawClient, request, simpleReplyOf } from './nbd.ts';
import { run } from './tools.ts';

export interface Ev { event: string; data: Record<string, unknown> }

/** A client that keeps up to `depth` non-overlapping writes in flight and records what was acknowledged. */
export class Writer {
  readonly model: Buffer;
  private cookie = 1n;
  private inflight = new Map<bigint, { offset: number; data: Buffer }>();
  private stopped = false;
  private done?: Promise<void>;
  writes = 0;
  errors = 0;
  private seed: number;

  /** `seed` picks the write sequence: a writer that takes over from another needs its own. */
  constructor(private readonly c: RawClient, initial: Buffer, private readonly depth = 4, seed = 12345) {
    this.model = Buffer.from(initial);
    this.seed = seed;
  }

  private rand(n: number): number {
    this.seed = (this.seed * 1103515245 + 12345) & 0x7fffffff;
    return this.seed % n;
  }

  start(): void {
    this.done = (async () => {
      const pump = () => {
        while (!this.stopped && this.inflight.size < this.depth) {
          const len = (1 + this.rand(4)) * 4096;
          const offset = this.rand((this.model.length - len) / 512) * 512;
          if ([...this.inflight.values()].some((w) => w.offset < offset + len && offset < w.offset + w.data.length)) continue;
          const data = Buffer.alloc(len, 1 + this.rand(250));
          data.writeUInt32BE(this.writes, 0);
          const ck = this.cookie++;
          this.inflight.set(ck, { offset, data });
          this.c.write(Buffer.concat([request(1, offset, len, ck), data]));
          this.writes++;
        }
      };
      pump();
      while (this.inflight.size > 0) {
        const [err, ck] = await simpleReplyOf(this.c, 20_000);
        const w = this.inflight.get(ck)!;
        this.inflight.delete(ck);
        if (err === 0) w.data.copy(this.model, w.offset);
        else this.errors++;
        pump();
        // A guest's pace, not a benchmark's: the job must be able to converge.
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

export async function readAll(c: RawClient, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  const chunk = 1024 * 1024;
  for (let off = 0; off < size; off += chunk) {
    c.write(request(0, off, chunk, 999_999n));
    const [err] = await simpleReplyOf(c, 20_000);
    expect(err).toBe(0);
    (await c.read(chunk, 20_000)).copy(out, off);
  }
  return out;
}

/** NBD_CMD_FLUSH: everything acknowledged before it is on disk once it is answered. */
export async function flush(c: RawClient): Promise<void> {
  c.write(request(3, 0, 0, 888_888n));
  const [err] = await simpleReplyOf(c, 20_000);
  expect(err).toBe(0);
}

export async function qmpDaemon(which: 'blockd' | 'qsd', dir: string, extra: string[]): Promise<{ proc: Running; qmp: QmpClient; events: Ev[] }> {
  const sock = join(dir, `qmp-${which}.sock`);
  const proc = await startDaemon(which, ['--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'm', ...extra], sock);
  const qmp = await QmpClient.connect(sock);
  const events: Ev[] = [];
  qmp.on('event', (e: { event: string; data?: Record<string, unknown> }) => events.push({ event: e.event, data: e.data ?? {} }));
  return { proc, qmp, events };
}

export async function waitFor(events: Ev[], pred: (e: Ev) => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!events.some(pred)) {
    if (Date.now() > end) throw new Error(`timed out; events: ${JSON.stringify(events.map((e) => [e.event, e.data.status]))}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const statuses = (events: Ev[], id: string) =>
  events.filter((e) => e.data.id === id || e.data.device === id).map((e) => (e.event === 'JOB_STATUS_CHANGE' ? e.data.status : e.event));

/** An image's guest-visible contents (qemu-img convert to raw); `shared`: it is open in a running daemon (-U, no lock taken). */
export function imageContents(dir: string, image: string, shared = false): Buffer {
  const raw = join(dir, `${image}.raw`);
  run('qemu-img', ['convert', ...(shared ? ['-U'] : []), '-O', 'raw', join(dir, image), raw]);
  const b = readFileSync(raw);
  unlinkSync(raw);
  return b;
}

/** A list of clean-ups the file's tests register; after each test they run, last first (failures ignored), and the list empties. */
export function cleanupsAfterEach(): (() => Promise<void>)[] {
  const list: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const f of list.splice(0).reverse()) await f().catch(() => undefined);
  });
  return list;
}

/**
 * Polls query-jobs until job `id` has concluded, dismisses it and returns it
 * (its `type`, and `error` if it failed). For jobs started by a command
 * (blockdev-create, x-blockdev-amend) whose events the test does not follow.
 */
export async function concludedJob(qmp: QmpClient, id: string, pollMs = 20): Promise<{ type: string; error?: string }> {
  for (;;) {
    const jobs = (await qmp.execute('query-jobs')) as { id: string; type: string; status: string; error?: string }[];
    const j = jobs.find((x) => x.id === id);
    if (!j) throw new Error(`job '${id}' is not in query-jobs`);
    if (j.status === 'concluded') {
      await qmp.execute('job-dismiss', { id });
      return j;
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
