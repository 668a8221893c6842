/**
 * A raw QMP connection for tests and debugging: sends bytes exactly as given
 * and hands back each message the server wrote, both parsed and as the exact
 * text (CR LF line ends and all). Unlike src/qmp/client, it does not
 * negotiate, match ids or hide errors.
 */
import { connect, type Socket } from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { JsonStreamParser } from './json-stream.ts';

export interface RawMessage { value: Record<string, unknown>; text: string }

export class RawQmpConnection {
  private readonly parser = new JsonStreamParser({ maxMessageBytes: 1 << 30, maxTokens: 1 << 30, maxNesting: 1 << 20 });
  private readonly queue: RawMessage[] = [];
  private waiters: (() => void)[] = [];
  private pendingText = '';
  private readonly decoder = new StringDecoder('utf8');
  private closed = false;
  readonly closedPromise: Promise<void>;

  private constructor(readonly socket: Socket) {
    this.closedPromise = new Promise((resolve) => socket.once('close', () => { this.closed = true; this.wake(); resolve(); }));
    socket.on('error', () => undefined);
    socket.on('data', (d: Buffer) => {
      this.pendingText += this.decoder.write(d);
      this.parser.push(d);
      for (let m = this.parser.next(); m; m = this.parser.next()) {
        if ('error' in m) throw new Error(`server sent invalid JSON: ${m.error}`);
        // Each message ends with CR LF; its text is everything up to and including that.
        const end = this.pendingText.indexOf('\r\n', this.textEnd(this.pendingText));
        const text = end >= 0 ? this.pendingText.slice(0, end + 2) : this.pendingText;
        this.pendingText = this.pendingText.slice(text.length);
        this.queue.push({ value: m.value as Record<string, unknown>, text });
      }
      this.wake();
    });
  }

  /** Where the first complete JSON value in `s` ends (brackets balanced outside strings). */
  private textEnd(s: string): number {
    let depth = 0;
    let inStr = false;
    for (let i = 0; i < s.length; i++) {
      const c = s[i];
      if (inStr) {
        if (c === '\\') i++;
        else if (c === '"') inStr = false;
      } else if (c === '"') inStr = true;
      else if (c === '{' || c === '[') depth++;
      else if ((c === '}' || c === ']') && --depth === 0) return i + 1;
    }
    return s.length;
  }

  static async open(target: string | { host: string; port: number }): Promise<RawQmpConnection> {
    const socket = typeof target === 'string' ? connect(target) : connect(target.port, target.host);
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
    return new RawQmpConnection(socket);
  }

  /** Opens, reads the greeting and (unless told not to) negotiates. */
  static async negotiated(target: string | { host: string; port: number }, negotiate = true): Promise<RawQmpConnection> {
    const c = await RawQmpConnection.open(target);
    await c.next();
    if (negotiate) {
      c.send('{"execute":"qmp_capabilities"}');
      const r = await c.next();
      if (!('return' in r)) throw new Error(`negotiation failed: ${JSON.stringify(r)}`);
    }
    return c;
  }

  send(data: string | Buffer): void { this.socket.write(data); }

  /** Sends one command and returns the next message that is not an event. */
  async command(execute: string, args?: Record<string, unknown>, id?: unknown): Promise<Record<string, unknown>> {
    const msg: Record<string, unknown> = { execute };
    if (args) msg.arguments = args;
    if (id !== undefined) msg.id = id;
    this.send(`${JSON.stringify(msg)}\n`);
    for (;;) {
      const m = await this.next();
      if (!('event' in m)) return m;
    }
  }

  async next(timeoutMs = 10_000): Promise<Record<string, unknown>> {
    return (await this.nextRaw(timeoutMs)).value;
  }

  async nextRaw(timeoutMs = 10_000): Promise<RawMessage> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      if (this.closed) throw new Error('QMP connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a QMP message');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
    return this.queue.shift()!;
  }

  /** Messages already received and not yet taken. */
  get buffered(): number { return this.queue.length; }

  close(): void { this.socket.end(); }
  destroy(): void { this.socket.destroy(); }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
