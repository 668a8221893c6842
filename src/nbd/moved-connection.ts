/**
 * A connection in transmission, as it moves between event loops (the main
 * one and an iothread's, src/iothread): everything the other side needs to
 * go on serving it, in a form a MessagePort carries (numbers, strings, one
 * buffer). What was negotiated travels by name; the other side looks the
 * export and its metadata contexts up in its own copy (same names, same
 * context ids: the providers number them in the same order).
 */
import type { NbdExport } from './exports.ts';
import type { Negotiated } from './options.ts';

/** What negotiation chose, by name. */
export interface NegotiatedState {
  exportName: string;
  structured: boolean;
  extended: boolean;
  /** The metadata contexts the client selected, in its order. */
  contexts: string[];
  honoursBlockSize: boolean;
  transmissionFlags: number;
}

export interface MovedConnection {
  /** A duplicate of the socket's descriptor, owned by whoever takes the connection up. */
  fd: number;
  /** Bytes read from the socket and not yet framed: raw request bytes (the move happens between requests). */
  rest: Buffer;
  negotiated: NegotiatedState;
}

/** How a stand-in closes the connection it stands for (served in another event loop). */
export interface RemoteEnd {
  close(): void;
  destroy(): void;
}

export function negotiatedState(n: Negotiated): NegotiatedState {
  return {
    exportName: n.exp.name,
    structured: n.structured,
    extended: n.extended,
    contexts: n.contexts.map((c) => c.name),
    honoursBlockSize: n.honoursBlockSize,
    transmissionFlags: n.transmissionFlags,
  };
}

/** The negotiation outcome over `exp` (this side's copy of the export); throws if a context is missing from it. */
export function negotiatedFor(s: NegotiatedState, exp: NbdExport): Negotiated {
  const contexts = s.contexts.map((name) => {
    const c = exp.metaContexts.find((m) => m.name === name);
    if (!c) throw new Error(`assertion failed: export '${exp.name}' has no metadata context '${name}' here`);
    return c;
  });
  return { exp, structured: s.structured, extended: s.extended, contexts, honoursBlockSize: s.honoursBlockSize, transmissionFlags: s.transmissionFlags };
}
