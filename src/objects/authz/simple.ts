/** authz-simple (QEMU's authz/simple.c): exactly one identity is allowed. */
import { obj, req } from '../../qapi/types.ts';
import type { ObjectTypeDef } from '../object-type.ts';
import type { Authz } from './authz.ts';

const AuthZSimpleProperties = obj('AuthZSimpleProperties', [
  req('identity', 'str', 'Identifies the allowed user. Its format depends on the network service that authorization object is associated with. For authorizing based on TLS x509 certificates, the identity must be the x509 distinguished name.'),
]);

interface Simple extends Authz { identity: string }

export const authzSimpleType: ObjectTypeDef<Simple> = {
  qomType: 'authz-simple',
  properties: AuthZSimpleProperties,
  create(options) {
    const a: Simple = { identity: options.identity as string, isAllowed: (id) => id === a.identity };
    return a;
  },
  getProperty: (a, name) => (name === 'identity' ? { value: a.identity } : undefined),
};
