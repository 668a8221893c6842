/**
 * query-qmp-schema: the command table in QEMU's introspection format
 * (qapi/introspect.json). As in QEMU 7.2:
 *
 * - commands, then events, then every type they use, in order of first use;
 * - types are named by numbers in order of first use ("0", "1", ...), except
 *   built-ins, which keep their names, and arrays, "[" + element + "]";
 * - all integer types are reported as "int";
 * - optional members carry "default": null.
 */
import type { BlockGraph } from '../blockdev/graph.ts';
import type { TypeDef, TypeRef } from '../qapi/types.ts';
import { argsType, EMPTY, type CommandTable } from './command.ts';

export type SchemaInfo = Record<string, unknown>;

const JSON_TYPES: Record<string, string> = {
  str: 'string', int: 'int', bool: 'boolean', number: 'number', any: 'value', null: 'null',
};
const INTEGERS = new Set(['int', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64', 'size']);

export function introspect(table: CommandTable, graph: BlockGraph): SchemaInfo[] {
  const entities: SchemaInfo[] = [];
  const numbers = new Map<string, string>();
  /** Named types already resolved, for references by name (BlockdevRef → BlockdevOptions). */
  const named = new Map<string, TypeDef>();
  const used: (TypeRef & object | string)[] = [];
  const usedNames = new Set<string>();

  const resolve = (t: TypeRef): TypeRef => {
    if (typeof t === 'string' || t.kind !== 'ref') return t;
    const r = t.resolve?.() ?? named.get(t.name);
    if (!r) throw new Error(`assertion failed: schema type '${t.name}' cannot be resolved`);
    return resolve(r);
  };

  /** The name a type is shown under; queues it for emission the first time. */
  const use = (t0: TypeRef): string => {
    const t = resolve(t0);
    if (typeof t === 'string') {
      const b = INTEGERS.has(t) ? 'int' : t;
      if (!usedNames.has(b)) { usedNames.add(b); used.push(b); }
      return b;
    }
    if (t.kind === 'array') {
      const key = `[${arrayKey(t.element)}]`;
      if (!usedNames.has(key)) {
        usedNames.add(key);
        used.push(t);
      }
      return `[${use(t.element)}]`;
    }
    if (t.kind === 'ref') return use(resolve(t));
    named.set(t.name, t);
    let n = numbers.get(t.name);
    if (n === undefined) {
      n = String(numbers.size);
      numbers.set(t.name, n);
      used.push(t);
    }
    return n;
  };
  const arrayKey = (e: TypeRef): string => {
    const r = resolve(e);
    if (typeof r === 'string') return INTEGERS.has(r) ? 'int' : r;
    if (r.kind === 'array') return `[${arrayKey(r.element)}]`;
    return `#${(r as { name: string }).name}`;
  };

  for (const c of table.commands) {
    const e: SchemaInfo = { name: c.name, 'meta-type': 'command' };
    e['arg-type'] = use(argsType(c, graph));
    e['ret-type'] = use(c.returns ?? EMPTY);
    if (c.allowOob) e['allow-oob'] = true;
    if (c.features?.length) e.features = c.features;
    entities.push(e);
  }
  for (const ev of table.events) {
    entities.push({ name: ev.name, 'meta-type': 'event', 'arg-type': use(ev.data ?? EMPTY) });
  }
  for (let i = 0; i < used.length; i++) {
    const t = used[i]!;
    if (typeof t === 'string') {
      entities.push({ name: t, 'meta-type': 'builtin', 'json-type': JSON_TYPES[t] ?? 'value' });
      continue;
    }
    switch (t.kind) {
      case 'array': {
        const el = use(t.element);
        entities.push({ name: `[${el}]`, 'meta-type': 'array', 'element-type': el });
        break;
      }
      case 'enum':
        entities.push({
          name: numbers.get(t.name), 'meta-type': 'enum',
          members: t.values.map((v) => (t.valueFeatures?.[v] ? { name: v, features: t.valueFeatures[v] } : { name: v })),
          values: t.values,
        });
        break;
      case 'alternate':
        entities.push({ name: numbers.get(t.name), 'meta-type': 'alternate', members: t.choices.map((c) => ({ type: use(c) })) });
        break;
      case 'object': {
        const e: SchemaInfo = { name: numbers.get(t.name), 'meta-type': 'object' };
        e.members = t.members.map((m) => (m.optional ? { name: m.name, default: null, type: use(m.type) } : { name: m.name, type: use(m.type) }));
        if (t.union) {
          e.tag = t.union.discriminator;
          e.variants = Object.entries(t.union.variants).map(([tag, v]) => ({ case: tag, type: use(v) }));
        }
        entities.push(e);
        break;
      }
    }
  }
  return entities;
}
