/**
 * The object types blockd has, and the object-add schema built from them.
 * A new type (throttle-group, tls-creds-*, authz-*) is one more entry here,
 * in the order of QEMU's ObjectType enum (qapi/qom.json), which is the order
 * query-qmp-schema and `--object help` list them in.
 */
import { enm, obj, req, type EnumType, type ObjectType } from '../qapi/types.ts';
import type { ObjectTypeDef } from './object-type.ts';
import { iothreadType } from './iothread.ts';
import { secretType } from './secret.ts';
import { throttleGroupType } from './throttle-group.ts';
import { authzListType } from './authz/list.ts';
import { authzListFileType } from './authz/listfile.ts';
import { authzSimpleType } from './authz/simple.ts';
import { tlsCredsAnonType } from './tls/anon.ts';
import { tlsCredsPskType } from './tls/psk.ts';
import { tlsCredsX509Type } from './tls/x509.ts';

export const OBJECT_TYPES: readonly ObjectTypeDef[] = [
  authzListType, authzListFileType, authzSimpleType,
  iothreadType, secretType, throttleGroupType,
  tlsCredsAnonType, tlsCredsPskType, tlsCredsX509Type,
] as ObjectTypeDef[];

/** object-add's arguments (and --object's) for a set of types: a flat union on qom-type. */
export function objectOptionsType(types: readonly ObjectTypeDef[]): { options: ObjectType; typeEnum: EnumType } {
  const typeEnum = enm('ObjectType', types.map((t) => t.qomType));
  const variants = Object.fromEntries(types.map((t) => [t.qomType, t.properties]));
  const options = obj('ObjectOptions', [
    req('qom-type', typeEnum, 'the class name for the object to be created'),
    req('id', 'str', 'the name of the new object'),
  ], { union: { discriminator: 'qom-type', variants }, doc: 'Describes the options of a user creatable QOM object.' });
  return { options, typeEnum };
}

const schema = objectOptionsType(OBJECT_TYPES);
export const ObjectOptions: ObjectType = schema.options;
export const ObjectTypeEnum: EnumType = schema.typeEnum;
