/**
 * The one place block-layer errors become NBD error numbers. The detail is
 * logged before it is reduced to a number on the wire.
 */
import type { Logger } from 'pino';
import { BlockError, toBlockError, type ErrorCode } from '../util/errors.ts';
import { NbdErrno } from '../nbd-protocol/constants.ts';

const TO_NBD: Record<ErrorCode, number> = {
  EPERM: NbdErrno.EPERM,
  EIO: NbdErrno.EIO,
  ENOMEM: NbdErrno.ENOMEM,
  EINVAL: NbdErrno.EINVAL,
  ENOSPC: NbdErrno.ENOSPC,
  EOVERFLOW: NbdErrno.EOVERFLOW,
  ENOTSUP: NbdErrno.ENOTSUP,
  ESHUTDOWN: NbdErrno.ESHUTDOWN,
  // No NBD equivalent: qemu's system_errno_to_nbd_errno() sends EINVAL for these.
  EBUSY: NbdErrno.EINVAL,
  ENOENT: NbdErrno.EINVAL,
};

/** Maps anything a block operation threw to an NBD errno, logging the detail first. */
export function nbdErrno(err: unknown, log: Logger, context: Record<string, unknown>): { errno: number; message: string } {
  const be = toBlockError(err);
  const errno = TO_NBD[be.code] ?? NbdErrno.EIO;
  // Anything that was not a BlockError is a bug below us: log it loudly.
  if (err instanceof BlockError) log.warn({ ...context, code: be.code, detail: be.message }, 'NBD request failed');
  else log.error({ ...context, err }, 'NBD request failed');
  return { errno, message: be.message };
}

/** A client broke the protocol in a way that leaves the stream unusable: close that connection only. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}
