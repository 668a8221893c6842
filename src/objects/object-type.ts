/**
 * One entry of the object-type table: what a qom-type is (its properties'
 * schema), how an object of it is made from validated options, and whether
 * and how it may go away again. The registry knows no type but through these.
 */
import type { ObjectType } from '../qapi/types.ts';
import type { ObjectLookup } from './lookup.ts';

export interface ObjectTypeDef<State = unknown> {
  /** The qom-type (QEMU's class name): 'secret', 'iothread', later 'throttle-group', 'tls-creds-x509'... */
  readonly qomType: string;
  /** The type's own members of object-add (QEMU's <Type>Properties); qom-type and id come from the registry. */
  readonly properties: ObjectType;
  /**
   * Builds the object's state from its validated options (qom-type and id
   * included). Throws a BlockError with QEMU's text on bad input; `objects`
   * holds the objects that already exist (a secret encrypted with another one
   * looks its key up there).
   */
  create(options: Record<string, unknown>, objects: ObjectLookup): State;
  /**
   * QEMU's user_creatable_can_be_deleted(): false refuses object-del with
   * "object 'x' is in use, can not be deleted". Users registered with
   * ObjectLookup.use() are counted by the registry already; this is for a
   * type that knows its users itself.
   */
  canBeDeleted?(state: State): boolean;
  /** Releases what the object holds, once it is out of the registry. */
  delete?(state: State): void;
  /**
   * qom-get of a property of the type's own (every object also has `type`):
   * `{ value }`, or undefined when the type has no such property.
   */
  getProperty?(state: State, name: string): { value: unknown } | undefined;
  /**
   * qom-set: validates and applies `value` (QMP JSON); false when the type
   * has no such property. Throws QEMU's text for a property that cannot be
   * set or a bad value.
   */
  setProperty?(state: State, name: string, value: unknown): boolean;
}
