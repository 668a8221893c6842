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
import { QOM_CLASSES, qomClass, qomImplements, qomProperties } from '../../objects/qom-classes.ts';
import { arr, opt } from '../../qapi/types.ts';
import type { QmpHost } from '../command.ts';
import { resolveTree, treeGet, treeSet } from './qom-chardevs.ts';

const ObjectPropertyInfo = obj('ObjectPropertyInfo', [
  req('name', 'str', 'the name of the property'),
  req('type', 'str', 'the type of the property.'),
  opt('description', 'str', 'if specified, the description of the property.'),
  opt('default-value', 'any', 'the default value, if any (since 5.0)'),
]);
const ObjectTypeInfo = obj('ObjectTypeInfo', [
  req('name', 'str', 'the type name found in the search'),
  opt('abstract', 'bool', 'the type is abstract and can\'t be directly instantiated. Omitted if false. (since 2.10)'),
  opt('parent', 'str', 'Name of parent type, if any (since 2.10)'),
]);

const child = (type: string) => `child<${type}>`;

/** qom-list of the tree blockd has: /, /objects, /chardevs and what they hold. */
function listPath(host: QmpHost, path: string): { name: string; type: string }[] {
  // QEMU's object_resolve_path: an empty partial path matches everything.
  if (path === '') throw new QmpError('GenericError', "Path '' is ambiguous");
  const parts = path.split('/').filter((p) => p !== '');
  const absolute = path.startsWith('/');
  const typeProp = { name: 'type', type: 'string' };
  if (absolute && parts.length === 0) return [typeProp, { name: 'objects', type: child('container') }, { name: 'chardevs', type: child('container') }];
  if (absolute && parts.length === 1 && parts[0] === 'objects') return [typeProp, ...host.objects.ids().map((id) => ({ name: id, type: child(host.objects.type(id)!) }))];
  if (absolute && parts.length === 1 && parts[0] === 'chardevs') return [typeProp, ...host.chardevs().list().map((c) => ({ name: c.id, type: child(c.qomType) }))];
  // An object by /objects/<id> or (a partial path) by its id alone.
  const id = parts.length === 2 && parts[0] === 'objects' && absolute ? parts[1] : !absolute && parts.length === 1 ? parts[0] : undefined;
  // A partial path naming a chardev (and no object: both is ambiguous).
  const partial = !absolute && parts.length === 1 ? host.chardevs().get(parts[0]!) : undefined;
  if (partial && host.objects.has(parts[0]!)) throw new QmpError('GenericError', `Path '${path}' is ambiguous`);
  if (partial) return qomProperties(qomClass(partial.qomType)!);
  if (id !== undefined && host.objects.has(id)) return qomProperties(qomClass(host.objects.type(id)!)!);
  const chr = absolute && parts.length === 2 && parts[0] === 'chardevs' ? host.chardevs().get(parts[1]!) : undefined;
  if (chr) return qomProperties(qomClass(chr.qomType)!);
  return notFound(path);
}

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
    name: 'qom-list',
    args: obj('q_obj_qom-list-arg', [req('path', 'str', 'the path within the object model. See @qom-get for a description of this parameter.')]),
    returns: arr(ObjectPropertyInfo),
    doc: 'This command will list any properties of a object given a path in the object model.',
    handler: ({ path }: { path: string }, ctx) => listPath(ctx.host, path),
  },
  {
    name: 'qom-list-types',
    args: obj('q_obj_qom-list-types-arg', [
      opt('implements', 'str', 'if specified, only return types that implement this type name'),
      opt('abstract', 'bool', 'if true, include abstract types in the results'),
    ]),
    returns: arr(ObjectTypeInfo),
    doc: 'This command will return a list of types given search parameters (blockd: the types it implements, and the abstract ones above them).',
    handler({ implements: impl, abstract }: { implements?: string; abstract?: boolean }) {
      return QOM_CLASSES.filter((c) => (abstract || !c.abstract) && (impl === undefined || qomImplements(c, impl)))
        .map((c) => ({ name: c.name, ...(c.abstract ? { abstract: true } : {}), ...(c.parent ? { parent: c.parent } : {}) }));
    },
  },
  {
    name: 'qom-list-properties',
    args: obj('q_obj_qom-list-properties-arg', [req('typename', 'str', 'the type name of an object')]),
    returns: arr(ObjectPropertyInfo),
    doc: 'List properties associated with a QOM object.',
    handler({ typename }: { typename: string }) {
      const c = qomClass(typename);
      if (!c) throw new QmpError('DeviceNotFound', `Class '${typename}' not found`);
      return qomProperties(c);
    },
  },
  {
    name: 'qom-get',
    args: obj('q_obj_qom-get-arg', [
      req('path', 'str', 'The path within the object model (an object id, or /objects/<id>)'),
      req('property', 'str', 'The property name to read'),
    ]),
    returns: 'any',
    doc: 'Get the value of a property of an object (blockd: the user-created objects, e.g. a throttle-group\'s limits; the chardevs; the containers).',
    handler({ path, property }: { path: string; property: string }, ctx) {
      const tree = resolveTree(ctx.host, path);
      if (tree) return treeGet(ctx.host, tree, property);
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
      const tree = resolveTree(ctx.host, path);
      if (tree) treeSet(ctx.host, tree, property);
      if (!ctx.host.objects.setProperty(resolve(path), property, value)) notFound(path);
    },
  },
];
