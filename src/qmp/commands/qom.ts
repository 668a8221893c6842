/**
 * qom-get and qom-set (qapi/qom.json), for the user-created objects: blockd
 * has no QOM tree, so a path names an object ("tg0", "/objects/tg0",
 * "objects/tg0/") or the /objects container itself. What a property is comes
 * from the object's type (the object-type table); every object has `type`.
 * Replies and errors as qsd 7.2's.
 */
import { obj, req } from '../../qapi/types.ts';
import { QmpError } from '../errors.ts';
import type { CommandDef } from '../command.ts';
import type { QomPath } from '../../objects/registry.ts';

/** QEMU's object_resolve_path for the part of the tree blockd has. */
function resolve(path: string): QomPath {
  const parts = path.split('/').filter((p) => p !== '');
  const absolute = path.startsWith('/');
  if (absolute && parts.length === 1 && parts[0] === 'objects') return { container: true };
  if (parts.length === 2 && parts[0] === 'objects') return { id: parts[1]! };
  if (!absolute && parts.length === 1) return { id: parts[0]! };
  throw new QmpError('DeviceNotFound', `Device '${path}' not found`);
}

function notFound(path: string): never {
  throw new QmpError('DeviceNotFound', `Device '${path}' not found`);
}

export const qomCommands: CommandDef[] = [
  {
    name: 'qom-get',
    args: obj('q_obj_qom-get-arg', [
      req('path', 'str', 'The path within the object model (an object id, or /objects/<id>)'),
      req('property', 'str', 'The property name to read'),
    ]),
    returns: 'any',
    doc: 'Get the value of a property of an object (blockd: the user-created objects; e.g. a throttle-group\'s limits).',
    handler({ path, property }: { path: string; property: string }, ctx) {
      const got = ctx.host.objects.getProperty(resolve(path), property);
      return got ? got.value : notFound(path);
    },
  },
  {
    name: 'qom-set',
    args: obj('q_obj_qom-set-arg', [
      req('path', 'str', 'The path within the object model (an object id, or /objects/<id>)'),
      req('property', 'str', 'The property name to set'),
      req('value', 'any', 'a value who\'s type is appropriate for the property type'),
    ]),
    doc: 'Set a property of an object (blockd: the user-created objects; e.g. a throttle-group\'s limits, applied at once).',
    handler({ path, property, value }: { path: string; property: string; value: unknown }, ctx) {
      if (!ctx.host.objects.setProperty(resolve(path), property, value)) notFound(path);
    },
  },
];
