/**
 * The quorum driver's events (src/blockdev/drivers/quorum/events.ts raises
 * them through the block layer's event sink), as qsd 7.2's schema has them.
 */
import { enm, obj, opt, req } from '../../qapi/types.ts';
import type { EventDef } from '../command.ts';

export const quorumEvents: EventDef[] = [
  {
    name: 'QUORUM_FAILURE',
    data: obj('q_obj_QUORUM_FAILURE-arg', [
      req('reference', 'str', 'device name if defined else node name'),
      req('sector-num', 'int', 'number of the first sector of the failed read operation'),
      req('sectors-count', 'int', 'failed read operation sector count'),
    ]),
    doc: 'Emitted by the Quorum block driver if it fails to establish a quorum.',
  },
  {
    name: 'QUORUM_REPORT_BAD',
    data: obj('q_obj_QUORUM_REPORT_BAD-arg', [
      req('type', enm('QuorumOpType', ['read', 'write', 'flush']), 'quorum operation type (Since 2.6)'),
      opt('error', 'str', 'error message. Only present on failure.'),
      req('node-name', 'str', 'the graph name of the bad node'),
      req('sector-num', 'int', 'number of the first sector of the failed read operation'),
      req('sectors-count', 'int', 'failed read operation sector count'),
    ]),
    doc: 'Emitted to report a corruption of a Quorum file.',
  },
];
