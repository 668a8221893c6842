/**
 * Option handlers of fixed newstyle negotiation, one per NBD_OPT_*. Each is a
 * function of the session so far and the option's data; it returns the
 * replies to send and what happens next. Replies and error texts are qsd's.
 */
import {
  CLIENT_NO_ZEROES, Info, MAX_STRING, Opt, Rep, TxFlag, optName,
} from '../nbd-protocol/constants.ts';
import { NbdProtocolError } from '../nbd-protocol/errors.ts';
import { buildExportNameReply } from '../nbd-protocol/handshake.ts';
import {
  buildInfoPayload, buildMetaContextPayload, buildOptionError as optionError, buildOptionReply as optionReply, buildServerPayload,
} from '../nbd-protocol/option-replies.ts';
import { OptionDataReader, parseInfoRequestData, readMetaQueries } from '../nbd-protocol/option-requests.ts';
import type { NbdExport } from './exports.ts';
import { selectContexts, type MetaContext } from './meta.ts';

/** What negotiation needs from the server. */
export interface NegotiationEnv {
  findExport(name: string): NbdExport | undefined;
  listExports(): NbdExport[];
  /** Advertise NBD_FLAG_CAN_MULTI_CONN (qsd: unless max-connections is 1). */
  multiConn: boolean;
}

export interface Session {
  fixedNewstyle: boolean;
  clientFlags: number;
  /** Structured replies (NBD_OPT_STRUCTURED_REPLY, or implied by extended headers). */
  structured: boolean;
  /** NBD_OPT_EXTENDED_HEADERS was acknowledged: 32-byte requests and replies. */
  extended?: boolean;
  /** Contexts chosen by the last successful NBD_OPT_SET_META_CONTEXT, and for which export. */
  meta?: { exp: NbdExport; contexts: MetaContext[] };
}

/** The outcome of negotiation: the export and what the transmission phase may use. */
export interface Negotiated {
  exp: NbdExport;
  structured: boolean;
  /** Extended headers (structured is then true too). */
  extended: boolean;
  contexts: MetaContext[];
  /** The client asked for NBD_INFO_BLOCK_SIZE (it will honour the minimum). */
  honoursBlockSize: boolean;
  transmissionFlags: number;
}

export type OptionOutcome =
  | { replies: Buffer[]; next: 'options' }
  /** Send the replies, then swap the connection's transport (STARTTLS) and forget what was negotiated. */
  | { replies: Buffer[]; next: 'upgrade' }
  | { replies: Buffer[]; next: 'transmission'; negotiated: Negotiated }
  | { replies: Buffer[]; next: 'close'; reason: string; clean?: boolean };

export type OptionHandler = (env: NegotiationEnv, s: Session, option: number, data: Buffer, length: number) => OptionOutcome;

const cont = (...replies: Buffer[]): OptionOutcome => ({ replies, next: 'options' });

/** qsd shortens names in error replies to 80 characters. */
const sanitize = (name: string) => (name.length < 80 ? name : `${name.slice(0, 80)}...`);

function noDataAllowed(option: number, length: number): OptionOutcome | undefined {
  if (length === 0) return undefined;
  return cont(optionError(option, Rep.ERR_INVALID, `option '${optName(option)}' has unexpected length`));
}

function exportFlags(env: NegotiationEnv, s: Session, exp: NbdExport): number {
  return exp.transmissionFlags(env.multiConn) | (s.structured ? TxFlag.SEND_DF : 0);
}

/** Contexts carried into transmission: only those chosen for this very export (qsd's nbd_check_meta_export). */
function contextsFor(s: Session, exp: NbdExport): MetaContext[] {
  return s.meta && s.meta.exp === exp ? s.meta.contexts : [];
}

const exportName: OptionHandler = (env, s, option, data) => {
  // The spec forbids EXPORT_NAME after extended headers; QEMU 8.2+ disconnects with this text.
  if (s.extended) return { replies: [], next: 'close', reason: 'Extended headers already negotiated' };
  if (data.length > MAX_STRING) return { replies: [], next: 'close', reason: 'Bad length received' };
  const exp = env.findExport(data.toString('utf8'));
  if (!exp) return { replies: [], next: 'close', reason: 'export not found' };
  const noZeroes = (s.clientFlags & CLIENT_NO_ZEROES) !== 0;
  const flags = exportFlags(env, s, exp);
  return {
    replies: [buildExportNameReply({ size: exp.size, transmissionFlags: flags }, noZeroes)],
    next: 'transmission',
    negotiated: { exp, structured: s.structured, extended: false, contexts: contextsFor(s, exp), honoursBlockSize: false, transmissionFlags: flags },
  };
};

const infoOrGo: OptionHandler = (env, s, option, data) => {
  const { name, requests } = parseInfoRequestData(data, option);
  const sendName = requests.includes(Info.NAME);
  const blockSize = requests.includes(Info.BLOCK_SIZE);
  const exp = env.findExport(name);
  if (!exp) return cont(optionError(option, Rep.ERR_UNKNOWN, `export '${sanitize(name)}' not present`));

  const replies: Buffer[] = [];
  if (sendName) replies.push(optionReply(option, Rep.INFO, buildInfoPayload({ type: Info.NAME, name })));
  if (exp.description !== undefined) {
    replies.push(optionReply(option, Rep.INFO, buildInfoPayload({ type: Info.DESCRIPTION, description: exp.description })));
  }
  const honours = option === Opt.INFO || blockSize;
  const [minimum, preferred, maximum] = exp.blockSizes(honours);
  replies.push(optionReply(option, Rep.INFO, buildInfoPayload({ type: Info.BLOCK_SIZE, minimum, preferred, maximum })));
  const flags = exportFlags(env, s, exp);
  replies.push(optionReply(option, Rep.INFO, buildInfoPayload({ type: Info.EXPORT, size: exp.size, transmissionFlags: flags })));
  if (option === Opt.INFO && !blockSize && exp.node.limits.alignment > 1) {
    replies.push(optionError(option, Rep.ERR_BLOCK_SIZE_REQD, 'request NBD_INFO_BLOCK_SIZE to use this export'));
    return cont(...replies);
  }
  replies.push(optionReply(option, Rep.ACK));
  if (option === Opt.INFO) return cont(...replies);
  return {
    replies,
    next: 'transmission',
    negotiated: {
      exp, structured: s.structured, extended: s.extended === true, contexts: contextsFor(s, exp), honoursBlockSize: blockSize, transmissionFlags: flags,
    },
  };
};

const list: OptionHandler = (env, s, option, _data, length) => {
  const bad = noDataAllowed(option, length);
  if (bad) return bad;
  const replies = env.listExports().map((e) =>
    optionReply(option, Rep.SERVER, buildServerPayload(e.name, e.description ?? '')));
  replies.push(optionReply(option, Rep.ACK));
  return cont(...replies);
};

const abort: OptionHandler = (_env, _s, option) =>
  ({ replies: [optionReply(option, Rep.ACK)], next: 'close', reason: 'client sent NBD_OPT_ABORT', clean: true });

const starttls: OptionHandler = (_env, _s, option, _data, length) =>
  noDataAllowed(option, length) ?? cont(optionError(option, Rep.ERR_POLICY, 'TLS not configured'));

const structuredReply: OptionHandler = (_env, s, option, _data, length) => {
  const bad = noDataAllowed(option, length);
  if (bad) return bad;
  // Extended headers take precedence; the spec's error for a client that asks to go back (QEMU 8.2+'s text).
  if (s.extended) return cont(optionError(option, Rep.ERR_EXT_HEADER_REQD, 'extended headers already negotiated'));
  if (s.structured) return cont(optionError(option, Rep.ERR_INVALID, 'structured reply already negotiated'));
  s.structured = true;
  return cont(optionReply(option, Rep.ACK));
};

/**
 * NBD_OPT_EXTENDED_HEADERS (QEMU 8.2+'s server): no data, once only; it
 * implies structured replies, before or after NBD_OPT_STRUCTURED_REPLY.
 */
const extendedHeaders: OptionHandler = (_env, s, option, _data, length) => {
  const bad = noDataAllowed(option, length);
  if (bad) return bad;
  if (s.extended) return cont(optionError(option, Rep.ERR_INVALID, 'extended headers already negotiated'));
  s.extended = true;
  s.structured = true;
  return cont(optionReply(option, Rep.ACK));
};

const metaContext: OptionHandler = (env, s, option, data) => {
  const isList = option === Opt.LIST_META_CONTEXT;
  if (!isList && !s.structured) {
    return cont(optionError(option, Rep.ERR_INVALID, `request option '${optName(option)}' when structured reply is not negotiated`));
  }
  // SET forgets the previous selection even if it then fails, as qsd does.
  if (!isList) s.meta = undefined;
  // The export is looked up before the queries are read: an unknown export is answered as such, however bad the rest.
  const r = new OptionDataReader(data, option);
  const name = r.name();
  const exp = env.findExport(name);
  if (!exp) return cont(optionError(option, Rep.ERR_UNKNOWN, `export '${sanitize(name)}' not present`));
  const queries = readMetaQueries(r, MAX_STRING);
  const chosen = selectContexts(exp.metaContexts, queries, isList);
  const replies = chosen.map((c) => optionReply(option, Rep.META_CONTEXT, buildMetaContextPayload(isList ? 0 : c.id, c.name)));
  replies.push(optionReply(option, Rep.ACK));
  if (!isList) s.meta = { exp, contexts: chosen };
  return cont(...replies);
};

const unsupported: OptionHandler = (_env, _s, option) =>
  cont(optionError(option, Rep.ERR_UNSUP, `Unsupported option ${option} (${optName(option)})`));

/** Key of a table's handler for options it has no entry for (a TLS-only server's refusal); without one, NBD_REP_ERR_UNSUP. */
export const ANY_OTHER_OPTION = -1;

/** Handlers by option; anything else is answered NBD_REP_ERR_UNSUP. */
export const OPTION_HANDLERS: Readonly<Record<number, OptionHandler>> = {
  [Opt.EXPORT_NAME]: exportName,
  [Opt.ABORT]: abort,
  [Opt.LIST]: list,
  [Opt.STARTTLS]: starttls,
  [Opt.INFO]: infoOrGo,
  [Opt.GO]: infoOrGo,
  [Opt.STRUCTURED_REPLY]: structuredReply,
  [Opt.EXTENDED_HEADERS]: extendedHeaders,
  [Opt.LIST_META_CONTEXT]: metaContext,
  [Opt.SET_META_CONTEXT]: metaContext,
};

/** Options whose data the handler reads; the data of any other option is skipped unread. */
export const OPTIONS_WITH_DATA: ReadonlySet<number> = new Set([
  Opt.EXPORT_NAME, Opt.INFO, Opt.GO, Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT,
]);

/** Runs the handler for `option`; malformed data becomes NBD_REP_ERR_INVALID with qsd's text. */
export function handleOption(env: NegotiationEnv, s: Session, option: number, data: Buffer, length: number,
  handlers: Readonly<Record<number, OptionHandler>> = OPTION_HANDLERS): OptionOutcome {
  const handler = handlers[option] ?? handlers[ANY_OTHER_OPTION] ?? unsupported;
  try {
    return handler(env, s, option, data, length);
  } catch (e) {
    if (e instanceof NbdProtocolError) return cont(optionError(option, Rep.ERR_INVALID, e.message));
    throw e;
  }
}
