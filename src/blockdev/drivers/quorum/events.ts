/**
 * quorum's QMP events, with QEMU's members in its order (quorum_report_bad,
 * quorum_report_failure): the request's range in 512-byte sectors, and for
 * a failed child operation the text of its errno.
 */
import { BlockError } from '../../../util/errors.ts';
import type { BlockEventSink } from '../../driver.ts';

const SECTOR = 512;

/** glibc's strerror for the errno values a child's request fails with. */
const STRERROR: Record<BlockError['code'], string> = {
  EIO: 'Input/output error', EINVAL: 'Invalid argument', ENOSPC: 'No space left on device', EPERM: 'Operation not permitted',
  ENOTSUP: 'Operation not supported', EOVERFLOW: 'Value too large for defined data type', ENOMEM: 'Cannot allocate memory',
  ENOENT: 'No such file or directory', EBUSY: 'Device or resource busy', ESHUTDOWN: 'Cannot send after transport endpoint shutdown',
};

export type QuorumOp = 'read' | 'write' | 'flush';

function sectors(offset: number, bytes: number): { 'sector-num': number; 'sectors-count': number } {
  const start = Math.floor(offset / SECTOR);
  return { 'sector-num': start, 'sectors-count': Math.ceil((offset + bytes) / SECTOR) - start };
}

/** The errno a thrown error stands for (EIO for anything that is not a BlockError). */
export function errorCode(e: unknown): BlockError['code'] {
  return e instanceof BlockError ? e.code : 'EIO';
}

/** QUORUM_REPORT_BAD: child `nodeName` failed (`error` given) or was outvoted. */
export function reportBad(events: BlockEventSink, type: QuorumOp, offset: number, bytes: number, nodeName: string, error?: unknown): void {
  events.emit('QUORUM_REPORT_BAD', {
    type,
    ...(error !== undefined ? { error: STRERROR[errorCode(error)] } : {}),
    'node-name': nodeName,
    ...sectors(offset, bytes),
  });
}

/** QUORUM_FAILURE: no quorum for the request on node `reference`. */
export function reportFailure(events: BlockEventSink, reference: string, offset: number, bytes: number): void {
  events.emit('QUORUM_FAILURE', { reference, ...sectors(offset, bytes) });
}
