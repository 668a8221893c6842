/**
 * qom-get and qom-set on the part of the QOM tree outside /objects: the root
 * container, /chardevs and each chardev (`type`; a socket chardev's
 * `connected` and `addr`, read-only), with qsd 7.2's texts. A partial path
 * ("m") names a chardev as it names an object; one that names both is
 * ambiguous, which qom-get reports as not found, as QEMU does.
 */
import { QmpError, genericError } from '../errors.ts';
import type { QmpHost } from '../command.ts';
import type { Chardev } from '../chardevs/chardev.ts';

export type TreeTarget = { container: 'root' | 'chardevs' } | { chardev: Chardev };

/** The target `path` names outside /objects, or undefined (then it is the objects' business). */
export function resolveTree(host: QmpHost, path: string): TreeTarget | undefined {
  const parts = path.split('/').filter((p) => p !== '');
  const absolute = path.startsWith('/');
  const chardevs = host.chardevs();
  if (absolute && parts.length === 0) return { container: 'root' };
  if (absolute && parts.length === 1 && parts[0] === 'chardevs') return { container: 'chardevs' };
  if (absolute && parts.length === 2 && parts[0] === 'chardevs') {
    const chr = chardevs.get(parts[1]!);
    if (!chr) throw new QmpError('DeviceNotFound', `Device '${path}' not found`);
    return { chardev: chr };
  }
  if (!absolute && parts.length === 1 && chardevs.has(parts[0]!)) {
    if (host.objects.has(parts[0]!)) throw new QmpError('DeviceNotFound', `Device '${path}' not found`);
    return { chardev: chardevs.get(parts[0]!)! };
  }
  return undefined;
}

const typeOf = (t: TreeTarget) => ('container' in t ? 'container' : t.chardev.qomType);

/** The container's children, by property name, as the link paths qom-get returns. */
function children(host: QmpHost, t: TreeTarget): Map<string, string> {
  if (!('container' in t)) return new Map();
  if (t.container === 'root') return new Map([['objects', '/objects'], ['chardevs', '/chardevs']]);
  return new Map(host.chardevs().ids().map((id) => [id, `/chardevs/${id}`]));
}

export function treeGet(host: QmpHost, t: TreeTarget, name: string): unknown {
  if (name === 'type') return typeOf(t);
  const child = children(host, t).get(name);
  if (child !== undefined) return child;
  const props = 'chardev' in t ? t.chardev.socketProperties?.() : undefined;
  if (props && (name === 'connected' || name === 'addr')) return props[name];
  throw genericError(`Property '${typeOf(t)}.${name}' not found`);
}

/** Nothing here is writable. */
export function treeSet(host: QmpHost, t: TreeTarget, name: string): never {
  const socket = 'chardev' in t && t.chardev.socketProperties?.() !== undefined;
  if (name === 'type' || children(host, t).has(name) || (socket && (name === 'connected' || name === 'addr'))) {
    throw genericError(`Property '${typeOf(t)}.${name}' is not writable`);
  }
  throw genericError(`Property '${typeOf(t)}.${name}' not found`);
}
