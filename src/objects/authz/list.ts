/**
 * authz-list (QEMU's authz/list.c): ordered rules (match, policy,
 * format exact|glob) and a default policy. `rules` and `policy` can be
 * read with qom-get.
 */
import type { ObjectTypeDef } from '../object-type.ts';
import type { Authz } from './authz.ts';
import { AuthZListProperties, evaluate, listFromOptions, type RuleList } from './rules.ts';

interface List extends Authz { list: RuleList }

export const authzListType: ObjectTypeDef<List> = {
  qomType: 'authz-list',
  properties: AuthZListProperties,
  create(options) {
    const a: List = { list: listFromOptions(options), isAllowed: (id) => evaluate(a.list, id) };
    return a;
  },
  getProperty(a, name) {
    if (name === 'policy') return { value: a.list.policy };
    if (name === 'rules') return { value: a.list.rules };
    return undefined;
  },
};
