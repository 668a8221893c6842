/**
 * One QMP client connection: greeting, capabilities negotiation, the input
 * stream (QEMU's streaming JSON: no framing needed), responses in order,
 * events once negotiated.
 *
 * Memory is bounded both ways:
 * - input: one message is parsed at a time; raw input beyond IN_HIGH bytes
 *   pauses the socket; a message beyond the parser's limit is an error.
 * - output: while more than OUT_SOFT bytes wait to be written, no further
 *   input is processed (a client that never reads its replies stops being
 *   read); events still queue, and past OUT_HARD the client is dropped.
 */
import type { Readable, Writable } from 'node:stream';
import type { Logger } from 'pino';
import { JsonStreamParser, DEFAULT_LIMITS, type JsonLimits } from './json-stream.ts';
import { toQmpJson } from './json-writer.ts';
import type { Dispatcher } from './dispatcher.ts';
import type { SessionState } from './command.ts';
import type { QmpEvent } from './events.ts';

export interface SessionLimits extends JsonLimits {
  /** Unparsed input kept before the socket is paused. */
  inHigh: number;
  /** Pending output above which input processing stops. */
  outSoft: number;
  /** Pending output above which the client is disconnected. */
  outHard: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  ...DEFAULT_LIMITS, inHigh: 64 * 1024, outSoft: 256 * 1024, outHard: 4 * 1024 * 1024,
};

export interface SessionIo {
  input: Readable;
  output: Writable;
  /** Ends the connection after pending output (graceful). */
  end(): void;
  /** Drops the connection now. */
  destroy(): void;
  /** end() closes the connection at once (stdio), no 'close' event to wait for. */
  endIsClose?: boolean;
}

export class QmpSession implements SessionState {
  negotiated = false;
  oob = false;
  private readonly parser: JsonStreamParser;
  private pumping = false;
  /** pump() was called while the loop ran. */
  private pumpAgain = false;
  private inputEnded = false;
  private closed = false;
  /** A command is being executed (its reply not yet sent). */
  private handling = false;
  /** close() came while a command was executed: end once its reply is out. */
  private closeAfterReply = false;
  private readonly finishedPromise: Promise<void>;
  private resolveFinished!: () => void;

  constructor(
    private readonly io: SessionIo,
    private readonly dispatcher: Dispatcher,
    private readonly opts: { pretty: boolean; greeting: Record<string, unknown>; log: Logger; limits?: SessionLimits },
  ) {
    this.parser = new JsonStreamParser(this.limits);
    this.finishedPromise = new Promise((r) => (this.resolveFinished = r));
  }

  private get limits(): SessionLimits { return this.opts.limits ?? DEFAULT_SESSION_LIMITS; }

  /** Bytes waiting to be written and raw input bytes not yet parsed (for limits checks and debugging). */
  get buffers(): { pendingOutput: number; bufferedInput: number } {
    return { pendingOutput: this.io.output.writableLength, bufferedInput: this.parser.bufferedBytes };
  }

  /** Resolves once the connection is closed. */
  get finished(): Promise<void> { return this.finishedPromise; }

  start(): void {
    const { input, output } = this.io;
    input.on('data', (chunk: Buffer) => {
      if (this.closed) return;
      this.parser.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
      if (this.parser.bufferedBytes > this.limits.inHigh) input.pause();
      this.pump();
    });
    input.on('end', () => { this.inputEnded = true; this.pump(); });
    input.on('error', () => this.destroy());
    output.on('error', () => this.destroy());
    output.on('close', () => this.destroy());
    output.on('drain', () => this.pump());
    this.send({ QMP: this.opts.greeting });
    input.resume();
  }

  /** Sends an event if the client has negotiated (QEMU sends none before). */
  event(e: QmpEvent): void {
    if (!this.negotiated || this.closed) return;
    this.send(e as unknown as Record<string, unknown>);
  }

  /**
   * Ends the connection once pending output is written; `finished` resolves
   * when it is closed. A command being executed gets its reply out first
   * (quit's reply comes after the shutdown's events, as in qsd).
   */
  close(): void {
    if (this.closed) return;
    if (this.handling) { this.closeAfterReply = true; return; }
    this.closed = true;
    this.io.end();
    if (this.io.endIsClose) this.resolveFinished();
  }

  /** Drops the connection now. Idempotent. */
  destroy(): void {
    this.closed = true;
    this.io.destroy();
    this.resolveFinished();
  }

  private send(msg: Record<string, unknown>): void {
    if (this.closed) return;
    // QEMU's monitor turns every newline into CR LF.
    const text = `${toQmpJson(msg, this.opts.pretty)}\n`.replace(/\n/g, '\r\n');
    this.io.output.write(text);
    if (this.io.output.writableLength > this.limits.outHard) {
      this.opts.log.warn({ pending: this.io.output.writableLength }, 'QMP client does not read its output; disconnecting it');
      this.destroy();
    }
  }

  /**
   * Processes buffered input one message at a time while output is not
   * backed up. A call while the loop runs is remembered and the loop runs
   * again once it has ended: the loop can end (input resumed, nothing left
   * to parse) inside a 'drain' handler, and the resumed stream then hands
   * over what it had buffered in a tick that comes before the loop's
   * ending is seen; that data would otherwise wait for input that the
   * client, having sent everything, never sends.
   */
  private pump(): void {
    if (this.closed) return;
    if (this.pumping) { this.pumpAgain = true; return; }
    this.pumping = true;
    void this.loop().finally(() => {
      this.pumping = false;
      if (this.pumpAgain) {
        this.pumpAgain = false;
        this.pump();
      }
    });
  }

  private async loop(): Promise<void> {
    const { input, output } = this.io;
    while (!this.closed) {
      if (output.writableLength > this.limits.outSoft) {
        input.pause();
        return; // 'drain' calls pump() again
      }
      const msg = this.parser.next();
      if (!msg) {
        if (this.inputEnded) { this.close(); return; }
        if (input.isPaused()) input.resume();
        return;
      }
      if ('error' in msg) {
        this.send({ error: { class: 'GenericError', desc: msg.error } });
        continue;
      }
      this.handling = true;
      const response = await this.dispatcher.handle(msg.value, this).finally(() => { this.handling = false; });
      try {
        this.send(response);
      } catch (err) {
        // A handler returned something JSON cannot carry: a bug, reported rather than fatal.
        this.opts.log.error({ err }, 'QMP reply could not be serialised');
        const id = (response as { id?: unknown }).id;
        this.send({ error: { class: 'GenericError', desc: `Internal error: ${(err as Error).message}` }, ...(id === undefined ? {} : { id }) });
      }
      if (this.closeAfterReply) { this.close(); return; }
    }
  }
}
