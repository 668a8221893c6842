/**
 * Request validation: a pure function of the request header and what was
 * negotiated. It runs before anything touches the block layer and returns an
 * NBD errno (0 = valid).
 *
 * Checks and their order follow qemu-storage-daemon 7.2's
 * nbd_co_receive_request(): length limit for READ/WRITE/CACHE, read-only,
 * range, flags; then BLOCK_STATUS's own checks. qsd answers every one of
 * these rejections with EINVAL (its nbd_trip() replaces the ENOSPC/EROFS it
 * computes by EINVAL). blockd does the same except for one case: a write,
 * trim or write-zeroes on a read-only export gets EPERM, as the NBD spec
 * says it should (and as blockd's users asked). With `specErrnos` a write
 * or write-zeroes past the end also gets the spec's ENOSPC.
 */
import { Cmd, CmdFlag, MAX_PAYLOAD, NbdErrno, cmdName } from '../nbd-protocol/constants.ts';
import type { RequestHeader } from '../nbd-protocol/requests.ts';

export interface ValidationContext {
  /** Export size in bytes. */
  size: number;
  readOnly: boolean;
  structured: boolean;
  /** Extended headers: requests may carry NBD_CMD_FLAG_PAYLOAD_LEN (WRITE must). */
  extended?: boolean;
  /** Number of metadata contexts selected with NBD_OPT_SET_META_CONTEXT for this export. */
  metaContexts: number;
  /** Use the spec's preferred errnos rather than qsd's (see above). */
  specErrnos?: boolean;
}

export interface Rejection { errno: number; reason: string }

const KNOWN = new Set<number>([Cmd.READ, Cmd.WRITE, Cmd.DISC, Cmd.FLUSH, Cmd.TRIM, Cmd.CACHE, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS]);
const WRITES = new Set<number>([Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES]);
const LENGTH_LIMITED = new Set<number>([Cmd.READ, Cmd.WRITE, Cmd.CACHE]);

/**
 * Flags each command accepts. FUA is accepted everywhere, as qsd does (it
 * flushes before a FUA read). With extended headers WRITE carries
 * PAYLOAD_LEN; no other command has a payload form here (blockd does not
 * offer NBD_FLAG_BLOCK_STATUS_PAYLOAD), so on them the flag is refused
 * once the payload has been read.
 */
export function validFlags(type: number, structured: boolean, extended = false): number {
  switch (type) {
    case Cmd.WRITE: return CmdFlag.FUA | (extended ? CmdFlag.PAYLOAD_LEN : 0);
    case Cmd.READ: return CmdFlag.FUA | (structured ? CmdFlag.DF : 0);
    case Cmd.WRITE_ZEROES: return CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO;
    case Cmd.BLOCK_STATUS: return CmdFlag.FUA | CmdFlag.REQ_ONE;
    default: return CmdFlag.FUA;
  }
}

/** The rejection of a request, or null if it may run. NBD_CMD_DISC is never rejected. */
export function checkRequest(req: RequestHeader, ctx: ValidationContext): Rejection | null {
  const { type, flags, offset, length } = req;
  const name = cmdName(type);
  if (type === Cmd.DISC) return null;
  if (LENGTH_LIMITED.has(type) && length > MAX_PAYLOAD) {
    return { errno: NbdErrno.EINVAL, reason: `len (${length}) is larger than max len (${MAX_PAYLOAD})` };
  }
  if (ctx.readOnly && WRITES.has(type)) {
    return { errno: NbdErrno.EPERM, reason: 'Export is read-only' };
  }
  if (offset > ctx.size || length > ctx.size - offset) {
    const nospc = ctx.specErrnos && (type === Cmd.WRITE || type === Cmd.WRITE_ZEROES);
    return {
      errno: nospc ? NbdErrno.ENOSPC : NbdErrno.EINVAL,
      reason: `operation past EOF; From: ${offset}, Len: ${length}, Size: ${ctx.size}`,
    };
  }
  if (flags & ~validFlags(type, ctx.structured, ctx.extended)) {
    return { errno: NbdErrno.EINVAL, reason: `unsupported flags for command ${name} (got 0x${flags.toString(16)})` };
  }
  if (ctx.extended && type === Cmd.WRITE && !(flags & CmdFlag.PAYLOAD_LEN)) {
    return { errno: NbdErrno.EINVAL, reason: 'write without NBD_CMD_FLAG_PAYLOAD_LEN under extended headers' };
  }
  if (!KNOWN.has(type)) return { errno: NbdErrno.EINVAL, reason: `invalid request type (${type}) received` };
  if (type === Cmd.BLOCK_STATUS) {
    if (length === 0) return { errno: NbdErrno.EINVAL, reason: 'need non-zero length' };
    if (ctx.metaContexts === 0) return { errno: NbdErrno.EINVAL, reason: 'CMD_BLOCK_STATUS not negotiated' };
  }
  return null;
}

/** The errno for a request: 0 when it is valid. */
export function validateRequest(req: RequestHeader, ctx: ValidationContext): number {
  return checkRequest(req, ctx)?.errno ?? 0;
}
