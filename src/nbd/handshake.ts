/**
 * Fixed newstyle negotiation as an explicit state machine. The states, what
 * each waits for and where each may go are data (HANDSHAKE_STATES); the
 * Handshake class only moves between them and refuses, naming the current
 * state, any move the table does not allow.
 *
 * It is pure: bytes in, (bytes to send, outcome) out. The connection owns
 * the transport and the timer.
 *
 * Upgrades: an option handler may answer with `next: 'upgrade'` (STARTTLS
 * once TLS is configured: its ACK is the last plaintext message). The
 * handshake then waits in 'upgrading', having dropped whatever the client
 * sent behind that option (plaintext bytes must never be taken as if they
 * came over the new transport); the connection swaps its transport and calls
 * upgraded(), which forgets what options negotiated before it (structured
 * replies, extended headers, chosen meta contexts: doc/proto.md's TLS section; CVE-2021-3716
 * was a server that kept them) and waits for the next option.
 */
import {
  CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, MAX_PAYLOAD, MAX_STRING, Opt, Rep, optName,
} from '../nbd-protocol/constants.ts';
import { ByteQueue } from '../nbd-protocol/byte-queue.ts';
import { EMPTY } from '../nbd-protocol/bytes.ts';
import { buildGreeting, decodeClientFlags } from '../nbd-protocol/handshake.ts';
import { buildOptionError } from '../nbd-protocol/option-replies.ts';
import { BadOptionMagic, decodeOptionHeader, type OptionHeader } from '../nbd-protocol/option-requests.ts';
import {
  OPTIONS_WITH_DATA, OPTION_HANDLERS, handleOption, type Negotiated, type NegotiationEnv, type OptionHandler, type Session,
} from './options.ts';

export type HandshakeState =
  | 'client-flags' | 'option-header' | 'option-data' | 'option-skip' | 'upgrading' | 'transmission' | 'closed';

export const HANDSHAKE_STATES: Readonly<Record<HandshakeState, { waitsFor: string; next: readonly HandshakeState[] }>> = {
  'client-flags': { waitsFor: '4 bytes of client flags after the greeting', next: ['option-header', 'closed'] },
  'option-header': {
    waitsFor: '16 bytes: IHAVEOPT, option, data length',
    next: ['option-data', 'option-skip', 'option-header', 'upgrading', 'transmission', 'closed'],
  },
  'option-data': { waitsFor: "the option's data, to be handled", next: ['option-header', 'upgrading', 'transmission', 'closed'] },
  'option-skip': { waitsFor: "the option's data, to be skipped unread", next: ['option-header', 'upgrading', 'closed'] },
  upgrading: { waitsFor: 'the connection to swap its transport (upgraded())', next: ['option-header', 'closed'] },
  transmission: { waitsFor: 'nothing: negotiation is over', next: ['closed'] },
  closed: { waitsFor: 'nothing: the connection is to be closed', next: [] },
};

/** Largest option data buffered for a handler; larger is skipped and answered NBD_REP_ERR_TOO_BIG. */
export const OPTION_BUFFER_LIMIT = 1024 * 1024;

export interface HandshakeStep {
  /** Bytes to send, in order. */
  send: Buffer[];
  /** After sending `send`, swap the transport, then call upgraded(); input until then is not taken. */
  upgrade?: true;
  /** Set once negotiation ended: either transmission starts, or the connection closes. */
  done?:
    | { kind: 'transmission'; negotiated: Negotiated; rest: Buffer }
    | { kind: 'close'; reason: string; clean: boolean };
}

export class Handshake {
  private current: HandshakeState = 'client-flags';
  private readonly input = new ByteQueue();
  private option = 0;
  private length = 0;
  private skipLeft = 0;
  private tooBig = false;
  readonly session: Session = { fixedNewstyle: false, clientFlags: 0, structured: false };

  /** `handlers`: the option table (OPTION_HANDLERS; a server with TLS puts its STARTTLS in). */
  constructor(private readonly env: NegotiationEnv, private readonly handlers: Readonly<Record<number, OptionHandler>> = OPTION_HANDLERS) {}

  get state(): HandshakeState { return this.current; }

  /** The server's opening message; send it before any push(). */
  greeting(): Buffer { return buildGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES); }

  private go(to: HandshakeState): void {
    if (!HANDSHAKE_STATES[this.current].next.includes(to)) {
      throw new Error(`handshake: cannot go from state '${this.current}' to '${to}'`);
    }
    this.current = to;
  }

  /** Adds client bytes without acting on them (see next()). */
  feed(chunk: Buffer): void {
    if (this.current === 'transmission' || this.current === 'closed' || this.current === 'upgrading') {
      throw new Error(`handshake: input in state '${this.current}'`);
    }
    this.input.push(chunk);
  }

  /**
   * Acts on buffered input up to and including the next handled option;
   * undefined when more input is needed. One option at a time lets the
   * caller stop while the client is not reading its replies.
   */
  next(): HandshakeStep | undefined {
    if (this.current === 'transmission' || this.current === 'closed' || this.current === 'upgrading') return undefined;
    const step: HandshakeStep = { send: [] };
    while (!step.done && step.send.length === 0 && this.advance(step));
    return step.send.length || step.done || step.upgrade ? step : undefined;
  }

  /**
   * The connection now runs over its new transport: what options negotiated
   * so far is forgotten (the client flags stay: they came before any option)
   * and the next option is awaited.
   */
  upgraded(): void {
    if (this.current !== 'upgrading') throw new Error(`handshake: upgraded() in state '${this.current}'`);
    this.session.structured = false;
    this.session.extended = false;
    this.session.meta = undefined;
    this.go('option-header');
  }

  /** Feeds client bytes and acts on all of them; returns what to send and, once decided, how negotiation ended. */
  push(chunk: Buffer): HandshakeStep {
    this.feed(chunk);
    const all: HandshakeStep = { send: [] };
    for (let step = this.next(); step; step = this.next()) {
      all.send.push(...step.send);
      if (step.done) { all.done = step.done; break; }
      if (step.upgrade) { all.upgrade = true; break; }
    }
    return all;
  }

  private close(step: HandshakeStep, reason: string, clean = false): false {
    this.go('closed');
    step.done = { kind: 'close', reason, clean };
    this.input.clear();
    return false;
  }

  /** Acts on buffered input if the current state has what it waits for; false when it needs more. */
  private advance(step: HandshakeStep): boolean {
    switch (this.current) {
      case 'client-flags': {
        let flags = decodeClientFlags(this.input);
        if (flags === undefined) return false;
        this.session.clientFlags = flags;
        this.session.fixedNewstyle = (flags & CLIENT_FIXED_NEWSTYLE) !== 0;
        flags &= ~(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
        if (flags !== 0) return this.close(step, `Unknown client flags 0x${(flags >>> 0).toString(16)} received`);
        this.go('option-header');
        return true;
      }
      case 'option-header': {
        let h: OptionHeader | undefined;
        try {
          h = decodeOptionHeader(this.input);
        } catch (e) {
          if (e instanceof BadOptionMagic) return this.close(step, 'Bad magic received');
          throw e;
        }
        if (!h) return false;
        this.option = h.option;
        this.length = h.length;
        if (this.length > MAX_PAYLOAD) return this.close(step, `len (${this.length}) is larger than max len (${MAX_PAYLOAD})`);
        if (!this.session.fixedNewstyle && this.option !== Opt.EXPORT_NAME) {
          return this.close(step, `Unsupported option ${this.option} (${optName(this.option)})`);
        }
        if (this.option === Opt.EXPORT_NAME && this.length > MAX_STRING) return this.close(step, 'Bad length received');
        if (this.option === Opt.ABORT) return this.handle(step, EMPTY);
        this.tooBig = OPTIONS_WITH_DATA.has(this.option) && this.length > OPTION_BUFFER_LIMIT;
        if (!OPTIONS_WITH_DATA.has(this.option) || this.tooBig) {
          this.skipLeft = this.length;
          this.go('option-skip');
          return true;
        }
        if (this.length === 0) return this.handle(step, EMPTY);
        this.go('option-data');
        return true;
      }
      case 'option-data': {
        if (this.input.length < this.length) return false;
        return this.handle(step, this.input.take(this.length));
      }
      case 'option-skip': {
        this.skipLeft -= this.input.discard(this.skipLeft);
        if (this.skipLeft > 0) return false;
        if (this.tooBig) {
          step.send.push(buildOptionError(this.option, Rep.ERR_TOO_BIG, `option '${optName(this.option)}' too big`));
          this.go('option-header');
          return true;
        }
        return this.handle(step, EMPTY);
      }
      default:
        return false;
    }
  }

  private handle(step: HandshakeStep, data: Buffer): boolean {
    const out = handleOption(this.env, this.session, this.option, data, this.length, this.handlers);
    step.send.push(...out.replies);
    if (out.next === 'options') {
      this.go('option-header');
      return true;
    }
    if (out.next === 'upgrade') {
      this.go('upgrading');
      this.input.clear();
      step.upgrade = true;
      return false;
    }
    if (out.next === 'close') return this.close(step, out.reason, out.clean === true);
    this.go('transmission');
    step.done = { kind: 'transmission', negotiated: out.negotiated, rest: this.input.take(this.input.length) };
    this.input.clear();
    return false;
  }
}
