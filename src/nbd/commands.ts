/**
 * Executes one validated transmission request against the export's node and
 * returns the reply as a list of buffers (header first, data views after) to
 * be written corked. NBD flags become block-layer ReqFlags here and only here.
 *
 * Error replies: a structured error chunk when structured replies were
 * negotiated, else a simple reply, as qsd's nbd_send_generic_reply(); the
 * wire message is generic (qsd's texts), the detail goes to the log.
 *
 * Extended headers: a request that came in an extended header is answered
 * with extended chunks (the builders of nbd-protocol/replies.ts follow
 * `req.extended`), never a simple reply: success without data is a NONE
 * chunk, block status is BLOCK_STATUS_EXT with 64-bit extent lengths.
 */
import type { Logger } from 'pino';
import { COMPLETED, ReqFlag } from '../blockdev/request.ts';
import { attempt } from '../blockdev/node.ts';
import { Cmd, CmdFlag, MAX_EXTENTS, NbdErrno } from '../nbd-protocol/constants.ts';
import { nbdErrno } from './errors.ts';
import type { NbdExport } from './exports.ts';
import type { RequestHeader } from '../nbd-protocol/requests.ts';
import type { MetaContext } from './meta.ts';
import type { BufferPool } from '../util/buffer-pool.ts';
import { chunkBlockStatus, chunkDataHeader, chunkError, chunkHole, chunkNone, readReplyHeaderSize, simpleReply, writeReadReplyHeader } from '../nbd-protocol/replies.ts';

export interface CommandContext {
  exp: NbdExport;
  structured: boolean;
  contexts: readonly MetaContext[];
  log: Logger;
  pool: BufferPool;
}

/** A reply: buffers to write corked, a pooled buffer to give back once they are written, and whether it reports a failure. */
export interface Reply { bufs: Buffer[]; release?: Buffer; failed?: true }

/** NBD command flags → block-layer request flags (the one translation point). */
export function toReqFlags(req: RequestHeader, exp: NbdExport): number {
  let f = 0;
  const fua = (req.flags & CmdFlag.FUA) !== 0;
  switch (req.type) {
    case Cmd.WRITE:
      if (fua || exp.writethrough) f |= ReqFlag.FUA;
      break;
    case Cmd.WRITE_ZEROES:
      if (fua || exp.writethrough) f |= ReqFlag.FUA;
      if (!(req.flags & CmdFlag.NO_HOLE)) f |= ReqFlag.MAY_UNMAP;
      if (req.flags & CmdFlag.FAST_ZERO) f |= ReqFlag.NO_FALLBACK;
      break;
    case Cmd.BLOCK_STATUS:
      if (req.flags & CmdFlag.REQ_ONE) f |= ReqFlag.REQ_ONE;
      break;
  }
  return f;
}

/** The reply to a request that failed validation or execution. */
export function errorReply(ctx: { structured: boolean }, req: RequestHeader, errno: number, message: string): Buffer[] {
  return [ctx.structured ? chunkError(req, errno, message) : simpleReply(req, errno)];
}

const WIRE_MESSAGE: Record<number, string> = {
  [Cmd.READ]: 'reading from file failed',
  [Cmd.WRITE]: 'writing to file failed',
  [Cmd.WRITE_ZEROES]: 'writing to file failed',
  [Cmd.FLUSH]: 'flush failed',
  [Cmd.TRIM]: 'discard failed',
  [Cmd.CACHE]: 'caching data failed',
  [Cmd.BLOCK_STATUS]: "can't get block status",
};

/**
 * Runs a valid request; never throws (failures become error replies). A
 * WRITE's payload goes back to the pool once the node is done with it. A
 * plain read or write that the node finished at once (COMPLETED) returns its
 * reply directly rather than a promise of it.
 */
export function execute(ctx: CommandContext, req: RequestHeader, payload?: Buffer): Reply | Promise<Reply> {
  if (req.type === Cmd.READ && req.flags === 0 && (!ctx.structured || (req.length > 0 && req.length < SPARSE_READ_MIN))) return plainRead(ctx, req);
  if (req.type === Cmd.WRITE) return plainWrite(ctx, req, payload!);
  return executeAny(ctx, req, payload);
}

async function executeAny(ctx: CommandContext, req: RequestHeader, payload?: Buffer): Promise<Reply> {
  try {
    return await run(ctx, req, payload);
  } catch (e) {
    return failed(ctx, req, e);
  } finally {
    ctx.pool.release(payload);
  }
}

/** The failure reply of a request, its detail logged. */
function failed(ctx: CommandContext, req: RequestHeader, e: unknown): Reply {
  const { errno } = nbdErrno(e, ctx.log, { cmd: req.type, offset: req.offset, length: req.length });
  return { bufs: errorReply(ctx, req, errno, WIRE_MESSAGE[req.type] ?? 'request failed'), failed: true };
}

/**
 * The most common request of all, a small read without flags, in one
 * promise step: header and data share one pooled buffer that the driver
 * fills in place, and the reply leaves as one write. (The general path
 * below costs three more async frames, measurable at queue depth 1.)
 */
function plainRead(ctx: CommandContext, req: RequestHeader): Reply | Promise<Reply> {
  const hl = readReplyHeaderSize(ctx.structured, req.extended);
  const whole = ctx.pool.acquire(hl + req.length);
  return settle(ctx, req, attempt(() => ctx.exp.node.read(req.offset, whole.subarray(hl))), whole, readReply);
}

function readReply(ctx: CommandContext, req: RequestHeader, whole: Buffer): Reply {
  writeReadReplyHeader(whole, ctx.structured, req, req.offset, req.length);
  return { bufs: [whole], release: whole };
}

/** A write, in one promise step like plainRead (or none); the payload goes back to the pool when the node is done with it. */
function plainWrite(ctx: CommandContext, req: RequestHeader, payload: Buffer): Reply | Promise<Reply> {
  return settle(ctx, req, attempt(() => ctx.exp.node.write(req.offset, payload, toReqFlags(req, ctx.exp))), payload, written);
}

function written(ctx: CommandContext, req: RequestHeader, payload: Buffer): Reply {
  ctx.pool.release(payload);
  return ok(req);
}

/**
 * The reply of a plain request once the node is done: at once if it finished
 * already (COMPLETED), else a promise of it. On failure `buf` goes back to
 * the pool and the reply is the error.
 */
function settle(ctx: CommandContext, req: RequestHeader, pending: Promise<void>, buf: Buffer,
  done: (ctx: CommandContext, req: RequestHeader, buf: Buffer) => Reply): Reply | Promise<Reply> {
  if (pending === COMPLETED) return done(ctx, req, buf);
  return pending.then(
    () => done(ctx, req, buf),
    (e: unknown) => {
      ctx.pool.release(buf);
      return failed(ctx, req, e);
    },
  );
}

/**
 * The reply of a request that succeeded without data: a simple reply, or a
 * NONE chunk under extended headers (where simple replies are not allowed).
 * (A plain function: tsx names every closure created per request.)
 */
function ok(req: RequestHeader): Reply {
  return { bufs: [req.extended ? chunkNone(req) : simpleReply(req, 0)] };
}

async function run(ctx: CommandContext, req: RequestHeader, payload?: Buffer): Promise<Reply> {
  const { exp } = ctx;
  const node = exp.node;
  switch (req.type) {
    case Cmd.READ:
      return read(ctx, req);
    case Cmd.WRITE_ZEROES:
      await node.writeZeroes(req.offset, req.length, toReqFlags(req, exp));
      return ok(req);
    case Cmd.TRIM:
      await node.discard(req.offset, req.length);
      if (req.flags & CmdFlag.FUA) await node.flush();
      return ok(req);
    case Cmd.FLUSH:
      await node.flush();
      return ok(req);
    case Cmd.CACHE:
      // Advisory: there is no cache to fill below an export yet.
      return ok(req);
    case Cmd.BLOCK_STATUS:
      return { bufs: await blockStatus(ctx, req) };
    default:
      return { bufs: errorReply(ctx, req, NbdErrno.EINVAL, `invalid request type (${req.type}) received`), failed: true };
  }
}

async function read(ctx: CommandContext, req: RequestHeader): Promise<Reply> {
  const node = ctx.exp.node;
  const { offset, length } = req;
  // qsd flushes before a read with FUA (the spec documents FUA for writes only).
  if (req.flags & CmdFlag.FUA) await node.flush();
  if (ctx.structured && length === 0) return { bufs: [chunkNone(req)] };
  if (ctx.structured && !(req.flags & CmdFlag.DF) && length >= SPARSE_READ_MIN) return sparseRead(ctx, req);
  // One buffer for header and data: the driver fills the data part in place and the reply leaves as one write.
  const hl = readReplyHeaderSize(ctx.structured, req.extended);
  const whole = ctx.pool.acquire(hl + length);
  try {
    if (length > 0) await node.read(offset, whole.subarray(hl));
  } catch (e) {
    ctx.pool.release(whole);
    throw e;
  }
  writeReadReplyHeader(whole, ctx.structured, req, offset, length);
  return { bufs: [whole], release: whole };
}

/**
 * Reads below this size go out as one OFFSET_DATA chunk without asking for
 * block status first: on a file that question is two more syscalls on the
 * thread pool per read, while a hole chunk saves at most a few KiB on the wire.
 */
const SPARSE_READ_MIN = 64 * 1024;

/** Reads as qsd does: runs that read as zeroes go out as OFFSET_HOLE chunks, the rest as OFFSET_DATA. */
async function sparseRead(ctx: CommandContext, req: RequestHeader): Promise<Reply> {
  const node = ctx.exp.node;
  const { offset, length } = req;
  const end = offset + length;
  const runs: { offset: number; length: number; hole: boolean }[] = [];
  for (let pos = offset; pos < end;) {
    for (const e of await node.blockStatus(pos, end - pos)) {
      const last = runs[runs.length - 1];
      if (last && last.hole === e.zero) last.length += e.length;
      else runs.push({ offset: e.offset, length: e.length, hole: e.zero });
      pos = e.offset + e.length;
    }
  }
  const data = runs.some((r) => !r.hole) ? ctx.pool.acquire(length) : undefined;
  try {
    // Only the data runs' bytes are filled (by the driver) and only they are sent.
    await Promise.all(runs.filter((r) => !r.hole).map((r) => node.read(r.offset, data!.subarray(r.offset - offset, r.offset - offset + r.length))));
  } catch (e) {
    ctx.pool.release(data);
    throw e;
  }
  const bufs: Buffer[] = [];
  runs.forEach((r, i) => {
    const done = i === runs.length - 1;
    if (r.hole) bufs.push(chunkHole(req, done, r.offset, r.length));
    else bufs.push(chunkDataHeader(req, done, r.offset, r.length), data!.subarray(r.offset - offset, r.offset - offset + r.length));
  });
  return { bufs, release: data };
}

async function blockStatus(ctx: CommandContext, req: RequestHeader): Promise<Buffer[]> {
  const max = req.flags & CmdFlag.REQ_ONE ? 1 : MAX_EXTENTS;
  // BLOCK_STATUS_EXT (extended headers) carries 64-bit extent lengths; BLOCK_STATUS 32-bit ones.
  const maxLength = req.extended ? Number.MAX_SAFE_INTEGER : 0xffffffff;
  const all = await Promise.all(ctx.contexts.map((c) => c.extents(req.offset, req.length, max, maxLength)));
  return all.map((extents, i) => chunkBlockStatus(req, i === all.length - 1, ctx.contexts[i].id, extents));
}
