/** The object registry over its object-type table: a fake type's hooks, the in-use refusal, secrets' texts. */
import { describe, it, expect } from 'vitest';
import { ObjectRegistry } from '../../src/objects/registry.ts';
import { OBJECT_TYPES, ObjectOptions, ObjectTypeEnum, objectOptionsType } from '../../src/objects/table.ts';
import type { ObjectTypeDef } from '../../src/objects/object-type.ts';
import { secretType } from '../../src/objects/secret.ts';
import { obj, opt } from '../../src/qapi/types.ts';
import { fromJson } from '../../src/qapi/visit.ts';

interface Group { limit: number; members: number; deleted: boolean }

/** A throttle-group-like type that counts its members itself and refuses deletion while it has any. */
function groupType(calls: string[]): ObjectTypeDef<Group> {
  return {
    qomType: 'fake-group',
    properties: obj('FakeGroupProperties', [opt('limit', 'int')]),
    create(o, objects) {
      calls.push(`create ${o.id as string}`);
      // Other objects are visible while creating (as a secret's keyid is).
      if (o.limit === undefined) objects.secret('key0');
      return { limit: (o.limit as number | undefined) ?? 0, members: 0, deleted: false };
    },
    canBeDeleted: (g) => g.members === 0,
    delete(g) { calls.push('delete'); g.deleted = true; },
  };
}

describe('object registry', () => {
  it('creates, looks up by type and deletes through the type table', () => {
    const calls: string[] = [];
    const reg = new ObjectRegistry([groupType(calls), secretType]);
    reg.add({ 'qom-type': 'fake-group', id: 'g0', limit: 5 });
    expect(calls).toEqual(['create g0']);
    expect(reg.type('g0')).toBe('fake-group');
    const g = reg.lookup<Group>('g0', 'fake-group')!;
    expect(g.limit).toBe(5);
    expect(reg.lookup('g0', 'secret')).toBeUndefined();
    expect(reg.lookup('nope', 'fake-group')).toBeUndefined();
    expect(() => reg.secret('g0')).toThrow("Object 'g0' is not a secret object");

    g.members = 1;
    expect(() => reg.del('g0')).toThrow("object 'g0' is in use, can not be deleted");
    expect(reg.has('g0')).toBe(true);
    g.members = 0;
    reg.del('g0');
    expect(calls).toEqual(['create g0', 'delete']);
    expect(g.deleted).toBe(true);
    expect(reg.has('g0')).toBe(false);
    expect(() => reg.del('g0')).toThrow("object 'g0' not found");
  });

  it('refuses object-del while a user holds the object, until it releases it', () => {
    const reg = new ObjectRegistry();
    reg.add({ 'qom-type': 'secret', id: 's0', data: 'pw' });
    const release = reg.use('s0');
    expect(() => reg.del('s0')).toThrow("object 's0' is in use, can not be deleted");
    release();
    release(); // idempotent: one use, one release
    reg.del('s0');
    expect(() => reg.use('s0')).toThrow("object 's0' not found");
  });

  it('a type create() that throws leaves no object behind; types outside the table are refused', () => {
    const reg = new ObjectRegistry([groupType([]), secretType]);
    expect(() => reg.add({ 'qom-type': 'fake-group', id: 'g1' })).toThrow("No secret with id 'key0'");
    expect(reg.has('g1')).toBe(false);
    expect(() => reg.add({ 'qom-type': 'iothread', id: 'io0' })).toThrow('invalid object type: iothread');
    expect(() => reg.add({ 'qom-type': 'secret', id: '0bad', data: 'x' })).toThrow("Parameter 'id' expects an identifier");
    reg.add({ 'qom-type': 'secret', id: 'key0', data: 'x' });
    expect(() => reg.add({ 'qom-type': 'secret', id: 'key0', data: 'y' })).toThrow("attempt to add duplicate property 'key0' to object (type 'container')");
  });

  it('secrets: bytes are a copy; base64 and keyid decryption as QEMU', async () => {
    const { createCipheriv, randomBytes } = await import('node:crypto');
    const reg = new ObjectRegistry();
    reg.add({ 'qom-type': 'secret', id: 's0', data: 'aGVsbG8=', format: 'base64' });
    const b = reg.secret('s0');
    expect(b.toString()).toBe('hello');
    b.fill(0);
    expect(reg.secret('s0').toString()).toBe('hello');
    expect(() => reg.secret('nope')).toThrow("No secret with id 'nope'");

    const key = randomBytes(32);
    const iv = randomBytes(16);
    reg.add({ 'qom-type': 'secret', id: 'master', data: key.toString('base64'), format: 'base64' });
    const c = createCipheriv('aes-256-cbc', key, iv);
    const enc = Buffer.concat([c.update('s3cret'), c.final()]);
    reg.add({ 'qom-type': 'secret', id: 'pw', data: enc.toString('base64'), format: 'base64', keyid: 'master', iv: iv.toString('base64') });
    expect(reg.secret('pw').toString()).toBe('s3cret');
    expect(() => reg.add({ 'qom-type': 'secret', id: 'pw2', data: 'x', keyid: 'master' })).toThrow('IV is required to decrypt secret');
    expect(() => reg.add({ 'qom-type': 'secret', id: 'pw3', data: 'x', keyid: 's0', iv: iv.toString('base64') })).toThrow('Key secret length 5 must be 32 bytes');
  });

  it('the object-add schema is built from the table: one variant per type, in table order', () => {
    expect(ObjectTypeEnum.values).toEqual(OBJECT_TYPES.map((t) => t.qomType));
    const all = ['authz-list', 'authz-list-file', 'authz-simple', 'iothread', 'secret', 'throttle-group', 'tls-creds-anon', 'tls-creds-psk', 'tls-creds-x509'];
    expect(ObjectTypeEnum.values).toEqual(all);
    expect(Object.keys(ObjectOptions.union!.variants)).toEqual(all);
    const { options } = objectOptionsType([groupType([]), secretType]);
    expect(fromJson(options, { 'qom-type': 'fake-group', id: 'g', limit: 3 })).toEqual({ 'qom-type': 'fake-group', id: 'g', limit: 3 });
    expect(() => fromJson(options, { 'qom-type': 'iothread', id: 'g' })).toThrow(/qom-type/);
  });
});
