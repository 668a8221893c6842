/**
 * What the TLS session asks an authorization object (QEMU's QAuthZ): is
 * this identity (an x509 distinguished name, a PSK username) allowed?
 * The three types keep their state behind this one interface; findAuthz
 * looks one up by id with QEMU's texts (authz/base.c).
 */
import { BlockError } from '../../util/errors.ts';
import type { ObjectLookup } from '../lookup.ts';

export interface Authz {
  isAllowed(identity: string): boolean;
}

export const AUTHZ_TYPES = ['authz-list', 'authz-list-file', 'authz-simple'] as const;

/** QEMU's qauthz_is_allowed_by_id lookup. */
export function findAuthz(objects: ObjectLookup, id: string): Authz {
  for (const t of AUTHZ_TYPES) {
    const a = objects.lookup<Authz>(id, t);
    if (a) return a;
  }
  if (objects.type(id) !== undefined) throw new BlockError('EINVAL', `Object '${id}' is not a QAuthZ subclass`);
  throw new BlockError('ENOENT', `Cannot find QAuthZ object ID ${id}`);
}
