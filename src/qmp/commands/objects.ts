/** object-add and object-del (qapi/qom.json) over the daemon's ObjectRegistry. */
import { obj, req } from '../../qapi/types.ts';
import { ObjectOptions } from '../../objects/table.ts';
import type { CommandDef } from '../command.ts';

export const objectCommands: CommandDef[] = [
  {
    name: 'object-add',
    args: ObjectOptions,
    doc: 'Create a QOM object. blockd has secret (for encrypted images), iothread (a worker thread serving the exports that name it), throttle-group, tls-creds and authz objects.',
    handler(o: Record<string, unknown>, ctx) {
      ctx.host.objects.add(o);
      ctx.host.log.info({ id: o.id, type: o['qom-type'] }, 'object added');
    },
  },
  {
    name: 'object-del',
    args: obj('q_obj_object-del-arg', [req('id', 'str', 'the name of the QOM object to remove')]),
    doc: 'Remove a QOM object (refused while a node uses it).',
    handler({ id }: { id: string }, ctx) {
      ctx.host.objects.del(id);
    },
  },
];
