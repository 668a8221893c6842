/**
 * The client side of fixed newstyle negotiation, in QEMU's order
 * (nbd/client.c nbd_receive_negotiate): greeting, client flags,
 * EXTENDED_HEADERS and, when the server refuses those, STRUCTURED_REPLY
 * (QEMU 8.2+: both asked for non-strictly), SET_META_CONTEXT with one
 * context (x-dirty-bitmap or base:allocation), then GO asking for block
 * sizes (EXPORT_NAME when the server has no GO, never after extended
 * headers). Errors carry QEMU's texts (nbd_handle_reply_err).
 */
import type { Socket } from 'node:net';
import {
  ByteQueue, buildClientFlags, buildExportNameData, buildInfoRequestData, buildMetaContextRequestData, buildOptionRequest,
  CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, decodeExportNameReply, decodeGreeting, decodeOptionReply, FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES, Info, isErrorReply, Opt, optName, parseInfoPayload, parseMetaContextPayload, Rep, type OptionReply,
} from './protocol.ts';
import { BlockError } from '../../../util/errors.ts';

export interface NegotiatedExport {
  size: number;
  flags: number;
  structured: boolean;
  /** Extended headers were negotiated (structured is then true too): 32-byte requests and replies, 64-bit lengths. */
  extended: boolean;
  /** The id of the negotiated meta context; undefined when none was agreed. */
  contextId?: number;
  minBlock: number;
  preferredBlock: number;
  maxBlock: number;
  /** Bytes that arrived after the handshake (normally none). */
  rest: ByteQueue;
  /** The socket transmission runs on: the TLS socket after STARTTLS, else the one negotiate() was given. */
  socket: Socket;
}

export interface NegotiateRequest {
  exportName: string;
  /** The meta context to ask for: x-dirty-bitmap, else base:allocation. */
  context: string;
  /** With tls-creds: STARTTLS first, then this turns the plain socket into the TLS one the rest runs over. */
  upgrade?: (plain: Socket) => Promise<Socket>;
}

/** Waits for whole messages on a socket during the handshake. */
class HandshakeReader {
  readonly q = new ByteQueue();
  private wake?: () => void;
  private ended?: BlockError;

  constructor(private readonly sock: Socket) {
    sock.on('data', this.onData);
    sock.once('close', this.onClose);
    sock.on('error', () => undefined);
  }

  private onData = (b: Buffer) => { this.q.push(b); this.wake?.(); };
  private onClose = () => {
    this.ended = new BlockError('EIO', 'Failed to read option reply: Unexpected end-of-file before all data were read');
    this.wake?.();
  };

  async next<T>(decode: (q: ByteQueue) => T | undefined): Promise<T> {
    for (;;) {
      const v = decode(this.q);
      if (v !== undefined) return v;
      if (this.ended) throw this.ended;
      await new Promise<void>((r) => { this.wake = r; });
      this.wake = undefined;
    }
  }

  detach(): void {
    this.sock.off('data', this.onData);
    this.sock.off('close', this.onClose);
  }
}

/** QEMU's nbd_handle_reply_err texts for an error reply. */
export function replyErrorText(r: OptionReply): string {
  const o = `option ${r.option} (${optName(r.option)})`;
  switch (r.type) {
    case Rep.ERR_POLICY: return `Denied by server for ${o}`;
    case Rep.ERR_INVALID: return `Invalid parameters for ${o}`;
    case Rep.ERR_PLATFORM: return `Server lacks support for ${o}`;
    case Rep.ERR_TLS_REQD: return `TLS negotiation required before ${o}`;
    case Rep.ERR_UNKNOWN: return 'Requested export not available';
    case Rep.ERR_SHUTDOWN: return `Server shutting down before ${o}`;
    case Rep.ERR_BLOCK_SIZE_REQD: return `Server requires INFO_BLOCK_SIZE for ${o}`;
    default: return `Unknown error code when asking for ${o}`;
  }
}

function fail(message: string): never {
  throw new BlockError('EIO', message);
}

export async function negotiate(sock: Socket, req: NegotiateRequest): Promise<NegotiatedExport> {
  const at = { sock, rd: new HandshakeReader(sock) };
  try {
    return await run(at, req);
  } finally {
    at.rd.detach();
  }
}

async function run(at: { sock: Socket; rd: HandshakeReader }, req: NegotiateRequest): Promise<NegotiatedExport> {
  let { sock, rd } = at;
  const g = await rd.next(decodeGreeting);
  if (!(g.handshakeFlags & FLAG_FIXED_NEWSTYLE)) fail(req.upgrade ? 'Server does not support STARTTLS' : 'Server does not support fixed newstyle negotiation');
  const noZeroes = (g.handshakeFlags & FLAG_NO_ZEROES) !== 0;
  sock.write(buildClientFlags(CLIENT_FIXED_NEWSTYLE | (noZeroes ? CLIENT_NO_ZEROES : 0)));
  const reply = () => rd.next((q) => decodeOptionReply(q));
  const expect = (r: OptionReply, option: number) => {
    if (r.option !== option) fail(`Unexpected option type ${r.option} (${optName(r.option)}), expected ${option} (${optName(option)})`);
  };

  if (req.upgrade) {
    // QEMU's nbd_receive_starttls: the ACK is the last plaintext message; everything after runs over TLS.
    sock.write(buildOptionRequest(Opt.STARTTLS));
    const r = await reply();
    expect(r, Opt.STARTTLS);
    if (r.type === Rep.ERR_UNSUP) fail("Server don't support STARTTLS option");
    if (r.type !== Rep.ACK) fail(isErrorReply(r.type) ? replyErrorText(r) : `Unexpected reply type ${r.type}, expected ${Rep.ACK}`);
    rd.detach();
    sock = await req.upgrade(sock);
    rd = new HandshakeReader(sock);
    at.sock = sock;
    at.rd = rd;
  }

  // Asked for non-strictly, as QEMU does: any error reply just means the next style down (a TLS-only server's TLS_REQD too).
  const ask = async (option: number): Promise<boolean> => {
    sock.write(buildOptionRequest(option));
    const a = await reply();
    expect(a, option);
    if (a.type !== Rep.ACK && !isErrorReply(a.type)) fail(`Unexpected reply type ${a.type}, expected ${Rep.ACK}`);
    return a.type === Rep.ACK;
  };
  const extended = await ask(Opt.EXTENDED_HEADERS);
  const structured = extended || await ask(Opt.STRUCTURED_REPLY);
  let r: OptionReply;

  let contextId: number | undefined;
  if (structured) {
    sock.write(buildOptionRequest(Opt.SET_META_CONTEXT, buildMetaContextRequestData({ exportName: req.exportName, queries: [req.context] })));
    let got = 0;
    for (r = await reply(); r.type === Rep.META_CONTEXT; r = await reply()) {
      expect(r, Opt.SET_META_CONTEXT);
      const m = parseMetaContextPayload(r.payload);
      if (++got > 1) fail('Server answered with more than one context');
      if (m.name !== req.context) fail(`Failed to negotiate meta context '${req.context}', server answered with different context '${m.name}'`);
      contextId = m.id;
    }
    expect(r, Opt.SET_META_CONTEXT);
    // An error here (an unknown export) is not fatal: GO reports it with its own text, as in QEMU.
    if (r.type !== Rep.ACK && !isErrorReply(r.type)) fail(`Unexpected reply type ${r.type}, expected ${Rep.ACK}`);
  }

  sock.write(buildOptionRequest(Opt.GO, buildInfoRequestData({ name: req.exportName, requests: [Info.BLOCK_SIZE] })));
  let size: number | undefined;
  let flags = 0;
  let minBlock = 0;
  let preferredBlock = 0;
  let maxBlock = 0;
  for (r = await reply(); r.type === Rep.INFO; r = await reply()) {
    expect(r, Opt.GO);
    const item = parseInfoPayload(r.payload);
    if ('size' in item) { size = item.size; flags = item.transmissionFlags; }
    else if ('minimum' in item) {
      ({ minimum: minBlock, preferred: preferredBlock, maximum: maxBlock } = item);
      checkBlockSizes(minBlock, preferredBlock, maxBlock);
    }
  }
  expect(r, Opt.GO);
  if (r.type === Rep.ERR_UNSUP && extended) {
    // The spec: a server that acknowledged extended headers must support GO; EXPORT_NAME is then forbidden.
    fail('Server refused NBD_OPT_GO after acknowledging extended headers');
  } else if (r.type === Rep.ERR_UNSUP) {
    // An old server: EXPORT_NAME, which cannot fail politely (the server just closes).
    sock.write(buildOptionRequest(Opt.EXPORT_NAME, buildExportNameData(req.exportName)));
    const e = await rd.next((q) => decodeExportNameReply(q, noZeroes));
    size = e.size;
    flags = e.transmissionFlags;
  } else if (r.type !== Rep.ACK) {
    fail(isErrorReply(r.type) ? replyErrorText(r) : `unexpected reply type ${r.type}, expected ${Rep.INFO}`);
  } else if (size === undefined) fail('broken server omitted NBD_INFO_EXPORT');
  if (minBlock && size! % minBlock !== 0) fail(`export size ${size} is not multiple of minimum block size ${minBlock}`);
  rd.q.retain();
  return { size: size!, flags, structured, extended, contextId, minBlock, preferredBlock, maxBlock, rest: rd.q, socket: sock };
}

/** QEMU's checks of NBD_INFO_BLOCK_SIZE (nbd_opt_info_or_go). */
function checkBlockSizes(min: number, pref: number, max: number): void {
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  if (!pow2(min) || min > 64 * 1024) fail(`server minimum block size ${min} is not a power of two`);
  if (!pow2(pref) || pref < min) fail(`server preferred block size ${pref} is not valid`);
  if (max < pref || max % min !== 0) fail(`server maximum block size ${max} is not valid`);
}
