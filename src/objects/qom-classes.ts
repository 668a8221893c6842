/**
 * The part of QEMU's class tree that blockd's QOM commands show (qom-list,
 * qom-list-types, qom-list-properties): each type blockd implements, with its
 * parent, its interfaces and its properties as qemu-storage-daemon 7.2 lists
 * them (name, QOM type, in qsd's order, which for some classes is its hash
 * table's), and the abstract classes above them. Data taken from qsd 7.2's
 * replies; the user-creatable types are the object table's.
 */

export interface QomClass {
  name: string;
  parent?: string;
  abstract?: boolean;
  interfaces?: string[];
  /** [name, type] after the `type` property every object has. */
  properties: [string, string][];
}

const THROTTLE_X = ['x-bps-write-max-length', 'x-iops-total-max-length', 'x-iops-size', 'limits', 'x-bps-total', 'x-iops-read-max-length',
  'x-bps-write', 'x-iops-write-max-length', 'x-bps-read-max', 'x-iops-read-max', 'x-bps-total-max', 'x-bps-read-max-length', 'x-iops-read',
  'x-bps-read', 'x-bps-write-max', 'x-iops-total-max', 'x-iops-total', 'x-iops-write', 'x-bps-total-max-length', 'x-iops-write-max'];

const TLS_COMMON: [string, string][] = [['endpoint', 'QCryptoTLSCredsEndpoint'], ['dir', 'string'], ['verify-peer', 'bool'], ['priority', 'string']];
const USER = ['user-creatable'];

export const QOM_CLASSES: readonly QomClass[] = [
  { name: 'object', abstract: true, properties: [] },
  { name: 'container', parent: 'object', properties: [] },
  { name: 'user-creatable', abstract: true, properties: [] },
  { name: 'authz', parent: 'object', abstract: true, interfaces: USER, properties: [] },
  { name: 'authz-list', parent: 'authz', interfaces: USER, properties: [['policy', 'QAuthZListPolicy'], ['rules', 'QAuthZListRule']] },
  { name: 'authz-list-file', parent: 'authz', interfaces: USER, properties: [['filename', 'string'], ['refresh', 'bool']] },
  { name: 'authz-simple', parent: 'authz', interfaces: USER, properties: [['identity', 'string']] },
  { name: 'event-loop-base', parent: 'object', abstract: true, interfaces: USER, properties: [] },
  {
    name: 'iothread', parent: 'event-loop-base', interfaces: USER,
    properties: [['thread-pool-min', 'int'], ['aio-max-batch', 'int'], ['thread-pool-max', 'int'], ['poll-max-ns', 'int'], ['poll-grow', 'int'], ['poll-shrink', 'int']],
  },
  { name: 'secret_common', parent: 'object', abstract: true, interfaces: USER, properties: [] },
  {
    name: 'secret', parent: 'secret_common', interfaces: USER,
    properties: [['iv', 'string'], ['keyid', 'string'], ['loaded', 'bool'], ['format', 'QCryptoSecretFormat'], ['file', 'string'], ['data', 'string']],
  },
  { name: 'throttle-group', parent: 'object', interfaces: USER, properties: THROTTLE_X.map((n) => [n, n === 'limits' ? 'ThrottleLimits' : 'int']) },
  { name: 'tls-creds', parent: 'object', abstract: true, interfaces: USER, properties: [] },
  { name: 'tls-creds-anon', parent: 'tls-creds', interfaces: USER, properties: [...TLS_COMMON, ['loaded', 'bool']] },
  { name: 'tls-creds-psk', parent: 'tls-creds', interfaces: USER, properties: [...TLS_COMMON, ['username', 'string'], ['loaded', 'bool']] },
  { name: 'tls-creds-x509', parent: 'tls-creds', interfaces: USER, properties: [...TLS_COMMON, ['sanity-check', 'bool'], ['passwordid', 'string'], ['loaded', 'bool']] },
  { name: 'chardev', parent: 'object', abstract: true, properties: [] },
  { name: 'chardev-socket', parent: 'chardev', properties: [['connected', 'bool'], ['addr', 'SocketAddress']] },
  // The other chardev types blockd opens (qsd lists no properties for them).
  { name: 'chardev-fd', parent: 'chardev', abstract: true, properties: [] },
  { name: 'chardev-file', parent: 'chardev-fd', properties: [] },
  { name: 'chardev-pipe', parent: 'chardev-fd', properties: [] },
  { name: 'chardev-stdio', parent: 'chardev-fd', properties: [] },
  { name: 'chardev-null', parent: 'chardev', properties: [] },
  { name: 'chardev-udp', parent: 'chardev', properties: [] },
  { name: 'chardev-ringbuf', parent: 'chardev', properties: [] },
  { name: 'chardev-memory', parent: 'chardev-ringbuf', properties: [] },
];

const byName = new Map(QOM_CLASSES.map((c) => [c.name, c]));

export function qomClass(name: string): QomClass | undefined {
  return byName.get(name);
}

/** Whether `c` is `ancestor` or below it, or implements it (object_class_dynamic_cast). */
export function qomImplements(c: QomClass, ancestor: string): boolean {
  for (let k: QomClass | undefined = c; k; k = k.parent ? byName.get(k.parent) : undefined) {
    if (k.name === ancestor || k.interfaces?.includes(ancestor)) return true;
  }
  return false;
}

/** qom-list-properties / qom-list of an instance: `type` first, then the class's. */
export function qomProperties(c: QomClass): { name: string; type: string }[] {
  return [{ name: 'type', type: 'string' }, ...c.properties.map(([name, type]) => ({ name, type }))];
}
