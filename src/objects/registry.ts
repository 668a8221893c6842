/**
 * User-creatable objects (--object, object-add, object-del): what qsd calls
 * QOM objects. The registry keeps them by id; what each qom-type is comes
 * from its entry in the object-type table (table.ts). A qom-type outside the
 * table is refused by the schema already, as qsd refuses an unknown type.
 */
import { BlockError } from '../util/errors.ts';
import { VALID_ID } from '../qapi/ids.ts';
import type { ObjectTypeDef } from './object-type.ts';
import type { ObjectLookup } from './lookup.ts';
import type { Secret } from './secret.ts';
import { OBJECT_TYPES } from './table.ts';

interface Entry { def: ObjectTypeDef; state: unknown; users: number }

/** What a qom-get/qom-set path resolves to: the /objects container, or an object by id. */
export type QomPath = { container: true } | { id: string };

export class ObjectRegistry implements ObjectLookup {
  private readonly objects = new Map<string, Entry>();
  private readonly types: Map<string, ObjectTypeDef>;

  constructor(types: readonly ObjectTypeDef[] = OBJECT_TYPES) {
    this.types = new Map(types.map((t) => [t.qomType, t]));
  }

  /** Creates an object from validated ObjectOptions. */
  add(options: Record<string, unknown>): void {
    const type = options['qom-type'] as string;
    const id = options.id as string;
    const def = this.types.get(type);
    if (!def) throw new BlockError('EINVAL', `invalid object type: ${type}`);
    if (!VALID_ID.test(id)) throw new BlockError('EINVAL', "Parameter 'id' expects an identifier");
    if (this.objects.has(id)) throw new BlockError('EINVAL', `attempt to add duplicate property '${id}' to object (type 'container')`);
    this.objects.set(id, { def, state: def.create(options, this), users: 0 });
  }

  /** object-del: refused while the object is in use (QEMU's text). */
  del(id: string): void {
    const e = this.objects.get(id);
    if (!e) throw new BlockError('ENOENT', `object '${id}' not found`);
    if (e.users > 0 || e.def.canBeDeleted?.(e.state) === false) throw new BlockError('EBUSY', `object '${id}' is in use, can not be deleted`);
    this.objects.delete(id);
    e.def.delete?.(e.state);
  }

  has(id: string): boolean { return this.objects.has(id); }

  /** Object ids in creation order (the children of /objects). */
  ids(): string[] { return [...this.objects.keys()]; }

  type(id: string): string | undefined { return this.objects.get(id)?.def.qomType; }

  lookup<T>(id: string, qomType: string): T | undefined {
    const e = this.objects.get(id);
    return e && e.def.qomType === qomType ? e.state as T : undefined;
  }

  secret(id: string): Buffer {
    const e = this.objects.get(id);
    if (!e) throw new BlockError('ENOENT', `No secret with id '${id}'`);
    if (e.def.qomType !== 'secret') throw new BlockError('EINVAL', `Object '${id}' is not a secret object`);
    return Buffer.from((e.state as Secret).bytes);
  }

  /** qom-get: `{ value }`, or undefined when there is no such object. Unknown properties get QEMU's text. */
  getProperty(at: QomPath, name: string): { value: unknown } | undefined {
    if ('container' in at) {
      if (name === 'type') return { value: 'container' };
      if (this.objects.has(name)) return { value: `/objects/${name}` };
      throw new BlockError('EINVAL', `Property 'container.${name}' not found`);
    }
    const e = this.objects.get(at.id);
    if (!e) return undefined;
    if (name === 'type') return { value: e.def.qomType };
    const got = e.def.getProperty?.(e.state, name);
    if (!got) throw new BlockError('EINVAL', `Property '${e.def.qomType}.${name}' not found`);
    return got;
  }

  /** qom-set: false when there is no such object. */
  setProperty(at: QomPath, name: string, value: unknown): boolean {
    const type = 'container' in at ? 'container' : this.objects.get(at.id)?.def.qomType;
    if (type === undefined) return false;
    const e = 'id' in at ? this.objects.get(at.id) : undefined;
    if (name === 'type' || (!e && this.objects.has(name))) throw new BlockError('EINVAL', `Property '${type}.${name}' is not writable`);
    if (!e || !e.def.setProperty?.(e.state, name, value)) throw new BlockError('EINVAL', `Property '${type}.${name}' not found`);
    return true;
  }

  use(id: string): () => void {
    const e = this.objects.get(id);
    if (!e) throw new BlockError('ENOENT', `object '${id}' not found`);
    e.users++;
    let released = false;
    return () => { if (!released) { released = true; e.users--; } };
  }
}
