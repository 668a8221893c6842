/**
 * Coalescing of small writes into thread-pool jobs. Writes a file node is
 * given in one run of the microtask queue (at queue depth 32, the writes of
 * one socket read) leave together, at most BATCH_MAX per job, through the
 * addon's pwriteBatch: each thread-pool hand-off (a futex wake, a completion
 * through libuv's async handle, a callback) costs more than the page-cache
 * write it carries. A lone write, or a large one (its copy is the cost, and
 * spreading large writes over threads keeps both cores busy), goes out
 * alone as before. Each write still succeeds or fails on its own: a short
 * write continues where it stopped, an errno rejects that write only.
 */
import { getSystemErrorName } from 'node:util';
import { native } from '../../../platform/native.ts';
import { BlockError } from '../../../util/errors.ts';
import { pwriteFull } from './io.ts';

/** Writes up to this size are batched; larger ones go alone. */
export const BATCH_WRITE_MAX = 64 * 1024;
/** Most writes in one job: two jobs at depth 32, so both pool threads a 2-core machine runs at once have work. */
export const BATCH_MAX = 16;

interface Pending { fd: number; buf: Buffer; pos: number; resolve: () => void; reject: (e: unknown) => void }

/** The error node:fs would give for a failed write(2), from the negated errno the addon returns. */
export function writeError(negErrno: number): NodeJS.ErrnoException {
  const code = getSystemErrorName(negErrno);
  const e = new Error(`${code}: ${native().strerror(negErrno).toLowerCase()}, write`) as NodeJS.ErrnoException;
  e.errno = negErrno;
  e.code = code;
  e.syscall = 'write';
  return e;
}

export class WriteBatcher {
  private pending: Pending[] = [];

  /** Writes all of `buf` at `pos` on `fd`, batched with the other small writes of this tick. */
  write(fd: number, buf: Buffer, pos: number): Promise<void> {
    if (buf.length > BATCH_WRITE_MAX) return pwriteFull(fd, buf, pos);
    return new Promise((resolve, reject) => {
      // After the microtasks that are running: the other requests of this read reach the driver first.
      if (this.pending.length === 0) process.nextTick(this.flush);
      this.pending.push({ fd, buf, pos, resolve, reject });
    });
  }

  private readonly flush = (): void => {
    const all = this.pending;
    this.pending = [];
    for (let i = 0; i < all.length;) {
      // One job per run of writes to the same descriptor (a reopen can change it between two).
      let j = i + 1;
      while (j < all.length && j - i < BATCH_MAX && all[j]!.fd === all[i]!.fd) j++;
      submit(all.slice(i, j));
      i = j;
    }
  };
}

function submit(items: Pending[]): void {
  if (items.length === 1) {
    const w = items[0]!;
    pwriteFull(w.fd, w.buf, w.pos).then(w.resolve, w.reject);
    return;
  }
  native().pwriteBatch(items[0]!.fd, items.map((w) => w.buf), items.map((w) => w.pos)).then((results) => {
    items.forEach((w, k) => settle(w, results[k]!));
  }, (e: unknown) => { for (const w of items) w.reject(e); });
}

function settle(w: Pending, n: number): void {
  if (n === w.buf.length) return w.resolve();
  if (n < 0) return w.reject(writeError(n));
  if (n === 0) return w.reject(new BlockError('EIO', 'write made no progress'));
  pwriteFull(w.fd, w.buf.subarray(n), w.pos + n).then(w.resolve, w.reject);
}
