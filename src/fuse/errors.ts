/**
 * The one place errors become FUSE reply errnos. A file operation refuses
 * with a FuseErrno (the exact errno qsd's handler replies); anything the
 * block layer threw is mapped by its code, and logged first.
 */
import { constants } from 'node:os';
import type { Logger } from 'pino';
import { BlockError, toBlockError } from '../util/errors.ts';

const E = constants.errno;

export class FuseErrno extends Error {
  constructor(readonly errno: number, message?: string) {
    super(message ?? `errno ${errno}`);
    this.name = 'FuseErrno';
  }
}

export const fuseErr = (name: keyof typeof constants.errno): FuseErrno => new FuseErrno(E[name], name);

/** The positive errno to reply for `err`. */
export function fuseErrno(err: unknown, log: Logger | undefined, context: Record<string, unknown>): number {
  if (err instanceof FuseErrno) return err.errno;
  const be = toBlockError(err);
  if (err instanceof BlockError) log?.warn({ ...context, code: be.code, detail: be.message }, 'FUSE request failed');
  else log?.error({ ...context, err }, 'FUSE request failed');
  return (E as Record<string, number>)[be.code] ?? E.EIO;
}
