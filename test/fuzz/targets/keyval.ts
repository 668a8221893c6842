/**
 * The key=value command-line parser (src/qapi/keyval.ts).
 *
 * Input: a tree of keys (nested dicts, lists as numbered keys) and string
 * values containing anything, commas included (written doubled), rendered in
 * a shuffled order; or arbitrary text.
 *
 * Properties: a rendered tree parses back to that tree; arbitrary text parses
 * or is refused with a BlockError, never anything else.
 */
import fc from 'fast-check';
import { parseKeyval, parseKeyvalHelp, type KeyvalValue } from '../../../src/qapi/keyval.ts';
import { outcome, type FuzzTarget } from '../harness.ts';

const keyArb = fc.stringMatching(/^[a-z][a-z0-9_-]{0,6}$/);
const valueArb = fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('', ',', 'a,b', '=', 'on', 'help', '.', '0'));

const treeArb: fc.Arbitrary<KeyvalValue> = fc.letrec<{ node: KeyvalValue }>((tie) => ({
  node: fc.oneof({ depthSize: 'small', maxDepth: 3 },
    valueArb,
    fc.dictionary(keyArb, tie('node'), { minKeys: 1, maxKeys: 4 }),
    fc.array(tie('node'), { minLength: 1, maxLength: 3 })),
})).node;

/** The key=value pairs that describe `v` under `prefix`. */
function pairs(v: KeyvalValue, prefix: string): [string, string][] {
  if (typeof v === 'string') return [[prefix, v]];
  const entries: [string, KeyvalValue][] = Array.isArray(v) ? v.map((x, i) => [String(i), x]) : Object.entries(v);
  return entries.flatMap(([k, x]) => pairs(x, prefix ? `${prefix}.${k}` : k));
}

export interface KeyvalInput {
  tree: Record<string, KeyvalValue>;
  order: number[];
  text: string;
}

export const keyval: FuzzTarget<KeyvalInput> = {
  name: 'keyval',
  about: 'key=value parser: round trip of nested dicts/lists with escaped commas, any text',
  runs: 500,
  arbitrary: () => fc.record({
    tree: fc.dictionary(keyArb, treeArb, { minKeys: 1, maxKeys: 5 }),
    order: fc.array(fc.nat(), { maxLength: 20 }),
    text: fc.oneof(fc.string({ maxLength: 40 }), fc.stringMatching(/^([a-z0-9.,=?]|help){0,20}$/)),
  }),
  check(x) {
    const list = pairs(x.tree, '');
    // Shuffle by the generated order (a stable permutation), so the parser sees keys in any order.
    const ranked = list.map((p, i) => ({ p, r: x.order[i] ?? i })).sort((a, b) => a.r - b.r).map((e) => e.p);
    const text = ranked.map(([k, v]) => `${k}=${v.replaceAll(',', ',,')}`).join(',');
    const got = parseKeyval(text);
    if (JSON.stringify(sortKeys(got)) !== JSON.stringify(sortKeys(x.tree))) {
      throw new Error(`round trip of ${JSON.stringify(text)}: got ${JSON.stringify(got)}`);
    }
    outcome(() => parseKeyvalHelp(x.text), `parseKeyvalHelp(${JSON.stringify(x.text)})`);
    outcome(() => parseKeyval(x.text, 'driver'), `parseKeyval(${JSON.stringify(x.text)}, 'driver')`);
  },
};

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, x]) => [k, sortKeys(x)]));
  return v;
}
