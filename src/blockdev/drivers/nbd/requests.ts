/**
 * One NBD request the client has accepted, from submission to its last
 * reply chunk, and how replies fill it in. A request survives a reconnect:
 * it is sent again as it was (its buffers belong to the caller until it
 * settles).
 */
import { BlockError, type ErrorCode } from '../../../util/errors.ts';
import { Cmd, ReplyType, STATE_HOLE, STATE_ZERO, type DecodedReply } from './protocol.ts';
import type { Extent } from '../../request.ts';

export interface NbdRequest {
  /** Submission order; re-sends after a reconnect keep it. */
  seq: number;
  type: number;
  flags: number;
  offset: number;
  length: number;
  /** WRITE's data. */
  data?: Buffer;
  /** READ's destination. */
  buf?: Buffer;
  /** BLOCK_STATUS: the context whose extents are kept. */
  contextId?: number;
  extents?: Extent[];
  error?: BlockError;
  resolve(extents?: Extent[]): void;
  reject(e: BlockError): void;
}

const ERRNO: Record<number, ErrorCode> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };
const TEXT: Record<ErrorCode, string> = {
  EPERM: 'Operation not permitted', EIO: 'Input/output error', ENOMEM: 'Cannot allocate memory', EINVAL: 'Invalid argument',
  ENOSPC: 'No space left on device', EOVERFLOW: 'Value too large for defined data type', ENOTSUP: 'Operation not supported',
  ESHUTDOWN: 'Cannot send after transport endpoint shutdown', EBUSY: 'Device or resource busy', ENOENT: 'No such file or directory',
};

/** An NBD error number as the block layer's error (QEMU's nbd_errno_to_system_errno: unknown ones are EINVAL). */
export function errorFromWire(errno: number, message?: string): BlockError {
  const code = ERRNO[errno] ?? 'EINVAL';
  return new BlockError(code, message || TEXT[code]);
}

/** Applies one reply (or chunk) to its request; true when the request is complete. Throws on a reply that cannot belong to it. */
export function applyReply(r: NbdRequest, reply: DecodedReply): boolean {
  if (reply.kind === 'simple') {
    if (reply.error !== 0) r.error = errorFromWire(reply.error);
    else if (reply.data) reply.data.copy(r.buf!, 0);
    return true;
  }
  const c = reply.chunk;
  if ('error' in c) {
    r.error ??= errorFromWire(c.error, c.message);
  } else if (c.type === ReplyType.OFFSET_DATA && 'data' in c) {
    const at = c.offset - r.offset;
    if (r.type !== Cmd.READ || at < 0 || at + c.data.length > r.length) throw new BlockError('EIO', 'server sent an invalid data chunk');
    c.data.copy(r.buf!, at);
  } else if (c.type === ReplyType.OFFSET_HOLE && 'length' in c) {
    const at = c.offset - r.offset;
    if (r.type !== Cmd.READ || at < 0 || at + c.length > r.length) throw new BlockError('EIO', 'server sent an invalid hole chunk');
    r.buf!.fill(0, at, at + c.length);
  } else if ((c.type === ReplyType.BLOCK_STATUS || c.type === ReplyType.BLOCK_STATUS_EXT) && 'extents' in c) {
    if (r.type !== Cmd.BLOCK_STATUS) throw new BlockError('EIO', 'server sent block status for another command');
    if (c.contextId === r.contextId && !r.extents) r.extents = toExtents(r.offset, r.length, c.extents);
  } else if (c.type !== ReplyType.NONE) {
    throw new BlockError('EIO', `server sent an unexpected chunk type ${c.type}`);
  }
  return reply.done;
}

/** base:allocation's flags as extents, clipped to the request (the last may reach past it). */
function toExtents(offset: number, length: number, wire: { length: number; flags: number }[]): Extent[] {
  const out: Extent[] = [];
  const end = offset + length;
  let pos = offset;
  for (const w of wire) {
    if (pos >= end) break;
    if (w.length === 0) throw new BlockError('EIO', 'server sent an extent of length 0');
    const len = Math.min(w.length, end - pos);
    out.push({ offset: pos, length: len, data: (w.flags & STATE_HOLE) === 0, zero: (w.flags & STATE_ZERO) !== 0, allocated: true, depth: 1 });
    pos += len;
  }
  return out;
}
