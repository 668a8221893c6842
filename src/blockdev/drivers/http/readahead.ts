/**
 * The read-ahead buffers of a curl node (QEMU's CURLState buffers and
 * curl_find_buf): a read that misses fetches its bytes plus `readahead` more
 * (up to the end of the image) in one range request; a later read inside a
 * buffer, fetched or still arriving, is served from it. The last
 * CONNECTIONS buffers are kept. Transient failures are tried again, with a
 * growing pause, while the request's time limit lasts (at most RETRIES
 * times without one); then the read fails with EIO.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockError } from '../../../util/errors.ts';
import type { Logger } from 'pino';
import { CONNECTIONS, describe, type CurlTransport } from './transport.ts';

/** Attempts after the first when there is no time limit. */
const RETRIES = 4;
const FIRST_PAUSE_MS = 100;

interface Window { start: number; buf: Buffer; done: Promise<void>; ok: boolean }

export class ReadAhead {
  private windows: Window[] = [];
  private failures = 0;
  /** Transfers in flight, and reads waiting for one to end. */
  private busy = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly t: CurlTransport, private readonly size: number, private readonly readahead: number, private readonly log: Logger) {}

  /** Bytes past the image's end (the node counts whole sectors) read as zeroes, as in QEMU. */
  async read(offset: number, whole: Buffer): Promise<void> {
    const inside = Math.max(0, Math.min(whole.length, this.size - offset));
    whole.fill(0, inside);
    if (inside === 0) return;
    const out = whole.subarray(0, inside);
    const end = offset + out.length;
    let w = this.find(offset, end);
    if (!w) {
      // As QEMU's free_state_waitq: at most CONNECTIONS transfers; a read waiting for one looks again when it has it.
      await this.acquire();
      w = this.find(offset, end);
      if (w) this.release();
      else w = this.start(offset, Math.min(out.length + this.readahead, this.size - offset));
    }
    await w.done;
    w.buf.copy(out, 0, offset - w.start, end - w.start);
  }

  private find(offset: number, end: number): Window | undefined {
    return this.windows.find((x) => offset >= x.start && end <= x.start + x.buf.length);
  }

  /** A new window fetching [offset, offset+len); it holds a transfer slot until its bytes are in. */
  private start(offset: number, len: number): Window {
    const win: Window = { start: offset, buf: Buffer.allocUnsafe(len), ok: false, done: Promise.resolve() };
    win.done = this.fetch(offset, win.buf).then(() => {
      win.ok = true;
      // Keep the last CONNECTIONS windows that arrived (and every one still arriving).
      const arrived = this.windows.filter((x) => x.ok);
      if (arrived.length > CONNECTIONS) this.windows = this.windows.filter((x) => x !== arrived[0]);
    }, (e) => {
      this.windows = this.windows.filter((x) => x !== win);
      throw e;
    }).finally(() => this.release());
    this.windows.push(win);
    return win;
  }

  private acquire(): Promise<void> {
    if (this.busy < CONNECTIONS) { this.busy++; return Promise.resolve(); }
    return new Promise((r) => this.waiting.push(r));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.busy--;
  }

  private async fetch(offset: number, buf: Buffer): Promise<void> {
    const limit = this.t.cfg.timeoutMs;
    const deadline = limit > 0 ? Date.now() + limit : Infinity;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.t.getRange(offset, buf);
        return;
      } catch (e) {
        const err = describe(e, this.t.cfg.timeoutMs, this.t.url);
        const pause = FIRST_PAUSE_MS * 2 ** Math.min(attempt, 5);
        const again = err.transient && (limit > 0 ? Date.now() + pause < deadline : attempt < RETRIES);
        if (!again) {
          // QEMU's "curl: %s" error_report for a failed transfer, as a log line.
          if (this.failures++ < 100) this.log.error({ url: this.t.cfg.url, offset, length: buf.length }, `curl: ${err.message}`);
          throw new BlockError('EIO', `curl: ${err.message}`);
        }
        this.log.warn({ url: this.t.cfg.url, offset, attempt: attempt + 1 }, `curl: ${err.message}; trying again`);
        await sleep(pause);
      }
    }
  }

  clear(): void { this.windows = []; }
}
