/**
 * What the main loop and an iothread's worker say to each other (over the
 * worker's port; statistics over a second port the main thread reads
 * synchronously). Plain data only: buffers, numbers, strings.
 */
import type { MovedConnection } from '../nbd/moved-connection.ts';
import type { NbdExportSettings } from '../nbd/exports.ts';

/** How a connection was served where it came from (NBD server options that act per request). */
export interface ServingLimits {
  maxInflightRequests?: number;
  maxInflightBytes?: number;
  specErrnos?: boolean;
}

export type ToWorker =
  /** Open a copy of the export's nodes (inline blockdev options) and serve the export. */
  | { type: 'lease'; exportId: string; options: Record<string, unknown>; settings: NbdExportSettings; writable: boolean; writethrough: boolean }
  /** Serve this connection of a leased export from here on. */
  | { type: 'connection'; exportId: string; cid: number; moved: MovedConnection; limits: ServingLimits }
  | { type: 'close'; cid: number }
  | { type: 'destroy'; cid: number }
  /** Give every connection of the export back, close the copy of its nodes, report the last statistics. */
  | { type: 'recall'; exportId: string };

/** Counters an iothread added since its last report: the export's, then its nodes' (subtree order). */
export interface StatsReport { export: number[]; nodes: number[][] }

export type FromWorker =
  | { type: 'ready'; timeOrigin: number }
  | { type: 'leased'; exportId: string }
  | { type: 'lease-failed'; exportId: string; message: string }
  /** A connection released back (at a request boundary). */
  | { type: 'returned'; cid: number; moved: MovedConnection }
  /** A connection closed in the iothread. */
  | { type: 'ended'; cid: number }
  | { type: 'recalled'; exportId: string; stats: StatsReport }
  /** One log line (pino's JSON) for the main logger. */
  | { type: 'log'; line: string };

/** The synchronous statistics request's answer: by export id, and the worker loop's polling counters. */
export interface StatsAnswer {
  exports: Record<string, StatsReport>;
  poll: { polls: number; hits: number };
}
