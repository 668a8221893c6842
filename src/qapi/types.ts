/**
 * A small QAPI-style type system. One schema, written with these, drives
 * argument validation (JSON from QMP, key=value strings from the command line),
 * query-qmp-schema introspection and generated help.
 */

/**
 * Built-in scalar types, named as QAPI names them. 'int' is int64; 'size' is a
 * uint64 that the command line also accepts with k/M/G/T/P/E suffixes.
 */
export type BuiltinName =
  | 'str' | 'int' | 'int8' | 'int16' | 'int32' | 'int64'
  | 'uint8' | 'uint16' | 'uint32' | 'uint64' | 'size'
  | 'bool' | 'number' | 'any' | 'null';

export interface Member {
  name: string;
  type: TypeRef;
  optional?: boolean;
  doc?: string;
}

export interface ObjectType {
  kind: 'object';
  name: string;
  members: Member[];
  /** Flat union: the member named `discriminator` (an enum member above) selects extra members. */
  union?: { discriminator: string; variants: Record<string, ObjectType> };
  doc?: string;
}

export interface EnumType {
  kind: 'enum';
  name: string;
  values: string[];
  doc?: string;
  /** QAPI features of single values ('deprecated'), shown by query-qmp-schema. */
  valueFeatures?: Record<string, string[]>;
}

export interface ArrayType {
  kind: 'array';
  element: TypeRef;
}

/** Either of several types, chosen by the JSON type of the value (QAPI alternate). */
export interface AlternateType {
  kind: 'alternate';
  name: string;
  choices: TypeRef[];
  doc?: string;
}

/**
 * A reference to a named type, for recursive schemas (BlockdevRef names
 * BlockdevOptions, which contains BlockdevRef). `resolve`, when given, wins;
 * otherwise the visitor resolves the name to the nearest enclosing object type
 * of that name, then to the `types` it was given.
 */
export interface RefType {
  kind: 'ref';
  name: string;
  resolve?: () => TypeDef;
}

export type TypeDef = ObjectType | EnumType | ArrayType | AlternateType | RefType;
export type TypeRef = BuiltinName | TypeDef;

export const obj = (name: string, members: Member[], extra: Partial<ObjectType> = {}): ObjectType =>
  ({ kind: 'object', name, members, ...extra });
export const enm = (name: string, values: string[], doc?: string): EnumType => ({ kind: 'enum', name, values, doc });
export const arr = (element: TypeRef): ArrayType => ({ kind: 'array', element });
export const alt = (name: string, choices: TypeRef[]): AlternateType => ({ kind: 'alternate', name, choices });
export const ref = (name: string, resolve?: () => TypeDef): RefType => (resolve ? { kind: 'ref', name, resolve } : { kind: 'ref', name });
export const req = (name: string, type: TypeRef, doc?: string): Member => ({ name, type, doc });
export const opt = (name: string, type: TypeRef, doc?: string): Member => ({ name, type, optional: true, doc });
