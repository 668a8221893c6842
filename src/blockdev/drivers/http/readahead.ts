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

  constructor(private readonly t: CurlTransport, private readonly size: number, private readonly readahead: number, private readonly log: Logger) {}

  /** Bytes past the image's end (the node counts whole sectors) read as zeroes, as in QEMU. */
  async read(offset: number, whole: Buffer): Promise<void> {
    const inside = Math.max(0, Math.min(whole.length, this.size - offset));
    whole.fill(0, inside);
    if (inside === 0) return;
    const out = whole.subarray(0, inside);
    const end = offset + out.length;
    let w = this.windows.find((x) => offset >= x.start && end <= x.start + x.buf.length);
    if (w) {
      await w.done;
    } else {
      const len = Math.min(out.length + this.readahead, this.size - offset);
      const buf = Buffer.allocUnsafe(len);
      const win: Window = { start: offset, buf, ok: false, done: Promise.resolve() };
      win.done = this.fetch(offset, buf).then(() => { win.ok = true; }, (e) => {
        this.windows = this.windows.filter((x) => x !== win);
        throw e;
      });
      this.windows.push(win);
      if (this.windows.length > CONNECTIONS) this.windows.shift();
      w = win;
      await w.done;
    }
    w.buf.copy(out, 0, offset - w.start, end - w.start);
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
