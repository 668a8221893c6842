/**
 * Events qsd 7.2's schema declares that blockd never raises, declared all
 * the same so that query-qmp-schema's events are qsd's (a client may
 * subscribe to them): BLOCK_IO_ERROR, which qsd raises only for a guest
 * device's error policy (an export has none, so neither raises it), and
 * VSERPORT_CHANGE, a virtio-serial port's (no such device in either).
 */
import { enm, obj, opt, req } from '../../qapi/types.ts';
import type { EventDef } from '../command.ts';

export const unraisedEvents: EventDef[] = [
  {
    name: 'BLOCK_IO_ERROR',
    data: obj('q_obj_BLOCK_IO_ERROR-arg', [
      req('device', 'str', 'device name. This is always present for compatibility reasons, but it can be empty ("") if the image does not have a device name associated.'),
      opt('node-name', 'str', 'node name. Note that errors may be reported for the root node that is directly attached to a guest device rather than for the node where the error occurred.'),
      req('operation', enm('IoOperationType', ['read', 'write']), 'I/O operation'),
      req('action', enm('BlockErrorAction', ['ignore', 'report', 'stop']), 'action that has been taken'),
      opt('nospace', 'bool', 'true if I/O error was caused due to a no-space condition.'),
      req('reason', 'str', 'human readable string describing the error cause.'),
    ]),
    doc: 'Emitted when a disk I/O error occurs (QEMU: by a guest device; never by blockd or qsd, which have none).',
  },
  {
    name: 'VSERPORT_CHANGE',
    data: obj('q_obj_VSERPORT_CHANGE-arg', [req('id', 'str', 'device identifier of the virtserialport'), req('open', 'bool', 'true if the guest has opened the virtserialport')]),
    doc: 'Emitted when the guest opens or closes a virtio-serial port (no such device in blockd or qsd).',
  },
];
