/**
 * authz-list's rule evaluation (QEMU's authz/list.c), pure: the first rule
 * whose match fits decides; no match, the default policy. `glob` is
 * GLib's g_pattern_match_simple: `*` any run, `?` one character, nothing
 * else special (no classes, no escapes), and `*` crosses `/` and `,`.
 */
import { arr, enm, obj, opt, req, type ObjectType } from '../../qapi/types.ts';

export const QAuthZListPolicy = enm('QAuthZListPolicy', ['deny', 'allow'], 'The authorization policy result');
export const QAuthZListFormat = enm('QAuthZListFormat', ['exact', 'glob'], 'The authorization policy match format');
export const QAuthZListRule = obj('QAuthZListRule', [
  req('match', 'str', 'a string or glob to match against a user identity'),
  req('policy', QAuthZListPolicy, 'the result to return if @match evaluates to true'),
  opt('format', QAuthZListFormat, "the format of the @match rule (default 'exact')"),
], { doc: 'A single authorization rule.' });

export const AuthZListProperties: ObjectType = obj('AuthZListProperties', [
  opt('policy', QAuthZListPolicy, 'Default policy to apply when no rule matches (default: deny)'),
  opt('rules', arr(QAuthZListRule), 'Authorization rules based on matching user'),
]);

export interface Rule { match: string; policy: 'deny' | 'allow'; format?: 'exact' | 'glob' }
export interface RuleList { policy: 'deny' | 'allow'; rules: Rule[] }

export function listFromOptions(o: Record<string, unknown>): RuleList {
  return { policy: (o.policy as RuleList['policy'] | undefined) ?? 'deny', rules: (o.rules as Rule[] | undefined) ?? [] };
}

export function evaluate(list: RuleList, identity: string): boolean {
  for (const r of list.rules) {
    const hit = (r.format ?? 'exact') === 'glob' ? globMatch(r.match, identity) : r.match === identity;
    if (hit) return r.policy === 'allow';
  }
  return list.policy === 'allow';
}

/** g_pattern_match_simple: `*` and `?` only. Iterative, with one backtrack point (linear-ish, no regex). */
export function globMatch(pattern: string, s: string): boolean {
  const p = [...pattern];
  const t = [...s];
  let pi = 0;
  let ti = 0;
  let star = -1;
  let mark = 0;
  while (ti < t.length) {
    if (pi < p.length && (p[pi] === '?' || (p[pi] !== '*' && p[pi] === t[ti]))) { pi++; ti++; continue; }
    if (pi < p.length && p[pi] === '*') { star = pi++; mark = ti; continue; }
    if (star >= 0) { pi = star + 1; ti = ++mark; continue; }
    return false;
  }
  while (pi < p.length && p[pi] === '*') pi++;
  return pi === p.length;
}
