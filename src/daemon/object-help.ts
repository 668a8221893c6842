/**
 * `--object help` and `--object TYPE,help`, as qsd prints them: the object
 * types blockd can create, or one type's properties. Generated from the same
 * ObjectOptions schema that object-add validates against.
 */
import { ObjectOptions, ObjectTypeEnum } from '../objects/table.ts';
import type { TypeRef } from '../qapi/types.ts';

function typeLabel(t: TypeRef): string {
  if (typeof t === 'string') return t === 'str' ? 'string' : t;
  // A list is shown by its element type, as QEMU shows authz-list's rules=<QAuthZListRule>.
  return t.kind === 'array' ? typeLabel(t.element) : (t as { name: string }).name;
}

/** The help text for an --object value, or undefined when the value asks for none. */
export function objectHelp(value: string): string | undefined {
  if (value === 'help' || value === '?') {
    return `List of user creatable objects:\n${ObjectTypeEnum.values.map((v) => `  ${v}\n`).join('')}`;
  }
  const m = /^(?:qom-type=)?([^,=]+),(?:help|\?)$/.exec(value);
  if (!m) return undefined;
  const variant = ObjectOptions.union!.variants[m[1]];
  if (!variant) return undefined;
  // Sorted as whole lines, byte-wise, as QEMU does ("x-bps-read-max-length=<int>" before "x-bps-read-max=<int>").
  // QEMU's help leaves out the tls-creds' deprecated `loaded` (a QAPI member, still accepted).
  const lines = variant.members.filter((p) => p.name !== 'loaded').map((p) => `  ${p.name}=<${typeLabel(p.type)}>`).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return `${m[1]} options:\n${lines.join('\n')}\n`;
}
