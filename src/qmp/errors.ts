/**
 * QMP's error edge: every failure a command reports becomes `{ class, desc }`
 * here, in one place. QEMU reports almost everything as GenericError; the few
 * other classes (CommandNotFound, DeviceNotActive, ...) travel on the error
 * itself as `qmpClass`.
 */
import { BlockError } from '../util/errors.ts';

export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap';

export interface QmpErrorBody { class: string; desc: string }

/** An error raised by the QMP layer itself, with its QMP class. */
export class QmpError extends Error {
  constructor(readonly qmpClass: QmpErrorClass, message: string) {
    super(message);
    this.name = 'QmpError';
  }
}

export const genericError = (desc: string) => new QmpError('GenericError', desc);

/** Whether an error is an expected, user-facing one (anything else is logged as a bug). */
export function isUserError(e: unknown): boolean {
  return e instanceof QmpError || e instanceof BlockError;
}

/** The one mapping from anything a handler throws to QMP's error object. */
export function toQmpError(e: unknown): QmpErrorBody {
  if (e && typeof e === 'object') {
    const cls = (e as { qmpClass?: unknown }).qmpClass;
    const desc = e instanceof Error ? e.message : String(e);
    if (typeof cls === 'string') return { class: cls, desc };
    return { class: 'GenericError', desc };
  }
  return { class: 'GenericError', desc: String(e) };
}
