import { describe, expect, it } from 'vitest';
import { writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { evaluate, globMatch } from '../../src/objects/authz/rules.ts';
import { findAuthz } from '../../src/objects/authz/authz.ts';
import { ObjectRegistry } from '../../src/objects/registry.ts';
import { fromJson } from '../../src/qapi/visit.ts';
import { ObjectOptions } from '../../src/objects/table.ts';
import { tempDir } from '../helpers/temp.ts';

const add = (r: ObjectRegistry, o: Record<string, unknown>) => r.add(fromJson(ObjectOptions, o) as Record<string, unknown>);

describe('authz rules (QEMU authz/list.c)', () => {
  it('glob is g_pattern_match_simple: * and ? only, * crosses commas', () => {
    expect(globMatch('C=GB,O=Example Org,CN=*', 'C=GB,O=Example Org,CN=client1')).toBe(true);
    expect(globMatch('*CN=client?', 'C=GB,CN=client2')).toBe(true);
    expect(globMatch('*CN=client?', 'C=GB,CN=client22')).toBe(false);
    expect(globMatch('[ab]', 'a')).toBe(false);
    expect(globMatch('[ab]', '[ab]')).toBe(true);
    expect(globMatch('', '')).toBe(true);
    expect(globMatch('**a*b', 'xxaYYb')).toBe(true);
    expect(globMatch('a*b', 'ab')).toBe(true);
    expect(globMatch('a*b', 'abc')).toBe(false);
  });

  it('the first matching rule decides; otherwise the default policy', () => {
    const list = {
      policy: 'deny' as const,
      rules: [
        { match: 'CN=bad*', policy: 'deny' as const, format: 'glob' as const },
        { match: 'CN=*', policy: 'allow' as const, format: 'glob' as const },
        { match: 'exact-user', policy: 'allow' as const },
      ],
    };
    expect(evaluate(list, 'CN=bad1')).toBe(false);
    expect(evaluate(list, 'CN=good')).toBe(true);
    expect(evaluate(list, 'exact-user')).toBe(true);
    expect(evaluate(list, 'exact-user2')).toBe(false);
    expect(evaluate({ ...list, policy: 'allow' }, 'nobody')).toBe(true);
  });
});

describe('authz objects', () => {
  it('authz-simple, authz-list, lookup texts', () => {
    const r = new ObjectRegistry();
    add(r, { 'qom-type': 'authz-simple', id: 'a1', identity: 'alice' });
    add(r, { 'qom-type': 'authz-list', id: 'a2', policy: 'allow', rules: [{ match: 'bob', policy: 'deny' }] });
    add(r, { 'qom-type': 'iothread', id: 'io' });
    expect(findAuthz(r, 'a1').isAllowed('alice')).toBe(true);
    expect(findAuthz(r, 'a1').isAllowed('bob')).toBe(false);
    expect(findAuthz(r, 'a2').isAllowed('bob')).toBe(false);
    expect(findAuthz(r, 'a2').isAllowed('carol')).toBe(true);
    expect(r.getProperty({ id: 'a2' }, 'rules')).toEqual({ value: [{ match: 'bob', policy: 'deny' }] });
    expect(() => findAuthz(r, 'io')).toThrow("Object 'io' is not a QAuthZ subclass");
    expect(() => findAuthz(r, 'zz')).toThrow('Cannot find QAuthZ object ID zz');
  });

  it('authz-listfile loads, refuses bad files with QEMU\'s texts, and reloads on change', async () => {
    const dir = tempDir('blockd-authz-');
    const file = join(dir, 'acl.json');
    const r = new ObjectRegistry();
    expect(() => add(r, { 'qom-type': 'authz-list-file', id: 'f0', filename: file }))
      .toThrow(`Unable to read '${file}': Failed to open file \u201C${file}\u201D: No such file or directory`);
    writeFileSync(file, '[1]');
    expect(() => add(r, { 'qom-type': 'authz-list-file', id: 'f0', filename: file })).toThrow(`File '${file}' must contain a JSON object`);
    writeFileSync(file, JSON.stringify({ policy: 'deny', rules: [{ match: 'alice', policy: 'allow' }] }));
    // As QEMU, the file is read before the path is checked for watching.
    expect(() => add(r, { 'qom-type': 'authz-list-file', id: 'f1', filename: 'acl.json' })).toThrow("Unable to read 'acl.json'");
    add(r, { 'qom-type': 'authz-list-file', id: 'f0', filename: file });
    const a = findAuthz(r, 'f0');
    expect(a.isAllowed('alice')).toBe(true);
    expect(a.isAllowed('bob')).toBe(false);
    // Replaced by a rename, as editors save.
    writeFileSync(`${file}.new`, JSON.stringify({ policy: 'deny', rules: [{ match: 'bob', policy: 'allow' }] }));
    renameSync(`${file}.new`, file);
    for (let i = 0; i < 200 && !a.isAllowed('bob'); i++) await new Promise((res) => setTimeout(res, 20));
    expect(a.isAllowed('bob')).toBe(true);
    expect(a.isAllowed('alice')).toBe(false);
    // A file that no longer loads denies everyone.
    writeFileSync(file, '{ broken');
    for (let i = 0; i < 200 && a.isAllowed('bob'); i++) await new Promise((res) => setTimeout(res, 20));
    expect(a.isAllowed('bob')).toBe(false);
    r.del('f0');
  });

  it('refresh=off does not reload', async () => {
    const dir = tempDir('blockd-authz-');
    const file = join(dir, 'acl.json');
    writeFileSync(file, JSON.stringify({ rules: [{ match: 'alice', policy: 'allow' }] }));
    const r = new ObjectRegistry();
    add(r, { 'qom-type': 'authz-list-file', id: 'f0', filename: file, refresh: false });
    writeFileSync(file, JSON.stringify({ rules: [] }));
    await new Promise((res) => setTimeout(res, 200));
    expect(findAuthz(r, 'f0').isAllowed('alice')).toBe(true);
  });
});
