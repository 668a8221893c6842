/**
 * The one error vocabulary of the block layer. Each wire protocol maps these
 * codes once at its edge (NBD error numbers, QMP classes, CLI exit status).
 */
export type ErrorCode =
  | 'EIO' | 'EINVAL' | 'ENOSPC' | 'EPERM' | 'ENOTSUP' | 'EOVERFLOW' | 'ESHUTDOWN' | 'ENOMEM' | 'EBUSY' | 'ENOENT';

export class BlockError extends Error {
  constructor(readonly code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BlockError';
  }
}

const SYSTEM_CODES: Record<string, ErrorCode> = {
  ENOSPC: 'ENOSPC', EDQUOT: 'ENOSPC', EPERM: 'EPERM', EACCES: 'EPERM', EROFS: 'EPERM',
  EINVAL: 'EINVAL', EOPNOTSUPP: 'ENOTSUP', ENOTSUP: 'ENOTSUP', EFBIG: 'EOVERFLOW',
  ENOMEM: 'ENOMEM', ENOENT: 'ENOENT', EBUSY: 'EBUSY', EAGAIN: 'EBUSY',
};

/** Turns anything thrown below the block layer (node:fs errors, addon errors) into a BlockError. */
export function toBlockError(err: unknown, context?: string): BlockError {
  if (err instanceof BlockError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = (e && typeof e.code === 'string' && SYSTEM_CODES[e.code]) || 'EIO';
  const msg = e && e.message ? e.message : String(err);
  return new BlockError(code, context ? `${context}: ${msg}` : msg, { cause: err });
}

/** Internal invariant check: a failure is a bug in blockd, not bad input. */
export function assert(cond: unknown, what: string): asserts cond {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}
