/**
 * Help text from the command table (for blockctl and humans): the list of
 * commands with their one-line summaries, and one command's arguments with
 * their types and docs. The same schema drives validation and introspection,
 * so this never disagrees with what the server accepts.
 */
import type { BlockGraph } from '../blockdev/graph.ts';
import type { ObjectType, TypeRef } from '../qapi/types.ts';
import { argsType, type CommandTable } from './command.ts';

function typeName(t: TypeRef): string {
  if (typeof t === 'string') return t;
  switch (t.kind) {
    case 'array': return `[${typeName(t.element)}]`;
    case 'enum': return t.values.join('|');
    case 'alternate': return `${t.name} (${t.choices.map(typeName).join(' or ')})`;
    default: return t.name;
  }
}

const summary = (doc: string) => doc.split(/(?<=\.)\s/)[0]!;

/** One line per command: name and the first sentence of its doc. */
export function commandList(table: CommandTable): string {
  const width = Math.max(...table.commands.map((c) => c.name.length));
  return [...table.commands]
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((c) => `${c.name.padEnd(width)}  ${summary(c.doc)}`)
    .join('\n');
}

function describeMembers(t: ObjectType, indent: string, out: string[]): void {
  for (const m of t.members) {
    out.push(`${indent}${m.name}${m.optional ? '?' : ''}: ${typeName(m.type)}${m.doc ? ` - ${m.doc}` : ''}`);
  }
  if (t.union) {
    for (const [tag, v] of Object.entries(t.union.variants)) {
      if (v.members.length === 0) continue;
      out.push(`${indent}when ${t.union.discriminator} = ${tag}:`);
      describeMembers(v, `${indent}  `, out);
    }
  }
}

/** A command's usage: its doc, arguments (with union variants) and return type. */
export function commandHelp(table: CommandTable, graph: BlockGraph, name: string): string | undefined {
  const def = table.get(name);
  if (!def) return undefined;
  const out = [def.name, `  ${def.doc}`];
  if (def.features?.length) out.push(`  features: ${def.features.join(', ')}`);
  const args = argsType(def, graph);
  if (args.members.length > 0) {
    out.push('  arguments:');
    describeMembers(args, '    ', out);
  }
  if (def.returns) out.push(`  returns: ${typeName(def.returns)}`);
  return out.join('\n');
}
