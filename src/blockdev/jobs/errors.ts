/**
 * Errors the job layer gives back to the user. They are BlockErrors (the one
 * internal vocabulary) that also carry the QMP error class QEMU uses, since
 * block-job-* lookups fail with DeviceNotActive rather than GenericError.
 */
import { BlockError, type ErrorCode } from '../../util/errors.ts';

export type QmpErrorClass = 'GenericError' | 'DeviceNotActive' | 'DeviceNotFound' | 'CommandNotFound';

export class JobError extends BlockError {
  constructor(code: ErrorCode, message: string, readonly qmpClass: QmpErrorClass = 'GenericError') {
    super(code, message);
    this.name = 'JobError';
  }
}

/** The message QEMU gives a job that was cancelled (strerror(ECANCELED)). */
export const CANCELED_MESSAGE = 'Operation canceled';

/** Thrown inside a job's run() when its work is cut short by a forced cancel. */
export class JobCancelledError extends Error {
  constructor() {
    super(CANCELED_MESSAGE);
    this.name = 'JobCancelledError';
  }
}

const STRERROR: Record<string, string> = {
  EIO: 'Input/output error', ENOSPC: 'No space left on device', EPERM: 'Operation not permitted',
  EINVAL: 'Invalid argument', ENOTSUP: 'Operation not supported', EOVERFLOW: 'Value too large for defined data type',
  ESHUTDOWN: 'Cannot send after transport endpoint shutdown', ENOMEM: 'Cannot allocate memory', EBUSY: 'Device or resource busy',
  ENOENT: 'No such file or directory',
};

/** A job that fails on an I/O error reports strerror's text, as qsd does; the detail goes to the log. */
export function jobFailure(err: BlockError): BlockError {
  return new BlockError(err.code, STRERROR[err.code] ?? err.message, { cause: err });
}
