/**
 * LUKS1 headers: a volume created in memory opens with its passphrase (and
 * not with another), QEMU's layout (slot areas, payload offset) and every
 * header check with QEMU 7.2's text (the texts qemu-img prints; see the
 * interop test for images made by qemu-img and cryptsetup).
 */
import { describe, expect, it } from 'vitest';
import { BlockError } from '../../src/util/errors.ts';
import { createLuks1 } from '../../src/crypto/luks1-create.ts';
import { KEY_SLOT_ENABLED, LUKS1_HEADER_SIZE, parseLuks1Header, serializeLuks1Header, type Luks1Header } from '../../src/crypto/luks1-header.ts';
import { findKey } from '../../src/crypto/luks1-keyslot.ts';
import { parseCipherSpec } from '../../src/crypto/cipher-spec.ts';

function memoryVolume() {
  let disk = Buffer.alloc(0);
  return {
    get disk() { return disk; },
    init: async (size: number) => { disk = Buffer.alloc(size); },
    write: async (offset: number, data: Buffer) => { data.copy(disk, offset); },
    read: async (offset: number, length: number) => Buffer.from(disk.subarray(offset, offset + length)),
  };
}

describe('LUKS1 create and unlock', () => {
  it('creates QEMU\'s layout (aes-256-xts-plain64, sha256) and unlocks slot 0 with the passphrase only', async () => {
    const v = memoryVolume();
    const created = await createLuks1({ iterTime: 10 }, Buffer.from('pass1'), v.init, v.write);
    expect(created.payloadOffset).toBe(4040 * 512);
    expect(v.disk.length).toBe(4040 * 512);
    const h = parseLuks1Header(v.disk);
    expect(h).toMatchObject({ cipherName: 'aes', cipherMode: 'xts-plain64', hashSpec: 'sha256', payloadOffsetSector: 4040, masterKeyLen: 64 });
    expect(h.keySlots.map((s) => s.keyOffsetSector)).toEqual([8, 512, 1016, 1520, 2024, 2528, 3032, 3536]);
    expect(h.keySlots.map((s) => s.active === KEY_SLOT_ENABLED)).toEqual([true, false, false, false, false, false, false, false]);
    expect(h.keySlots[0].iterations).toBeGreaterThanOrEqual(1000);
    expect(h.masterKeyIterations).toBeGreaterThanOrEqual(1000);
    const spec = parseCipherSpec(h.cipherName, h.cipherMode, h.hashSpec, h.masterKeyLen);
    const { key, slot } = await findKey(h, spec, Buffer.from('pass1'), v.read);
    expect(slot).toBe(0);
    expect(key.equals(created.masterKey)).toBe(true);
    await expect(findKey(h, spec, Buffer.from('pass2'), v.read)).rejects.toThrow(new BlockError('EPERM', 'Invalid password, cannot unlock any keyslot'));
  });

  it('cbc-essiv:sha256 with aes-128 and sha1: 128-sector slot areas, payload at 1032', async () => {
    const v = memoryVolume();
    const created = await createLuks1({ iterTime: 10, cipherAlg: 'aes-128', cipherMode: 'cbc', ivgenAlg: 'essiv', hashAlg: 'sha1' }, Buffer.from('x'), v.init, v.write);
    const h = parseLuks1Header(v.disk);
    expect(h).toMatchObject({ cipherName: 'aes', cipherMode: 'cbc-essiv:sha256', hashSpec: 'sha1', masterKeyLen: 16, payloadOffsetSector: 8 + 8 * 128 });
    const spec = parseCipherSpec(h.cipherName, h.cipherMode, h.hashSpec, h.masterKeyLen);
    expect(spec.ivgenCipherAlg).toBe('aes-256');
    expect((await findKey(h, spec, Buffer.from('x'), v.read)).key.equals(created.masterKey)).toBe(true);
  });

  it('refuses what blockd cannot run before writing anything', async () => {
    const v = memoryVolume();
    await expect(createLuks1({ cipherAlg: 'twofish-256' }, Buffer.from('x'), v.init, v.write)).rejects.toThrow("Cipher 'twofish-256' in mode 'xts' is not supported by blockd");
    await expect(createLuks1({ cipherAlg: 'des' }, Buffer.from('x'), v.init, v.write)).rejects.toThrow("Algorithm 'des' not supported");
    await expect(createLuks1({ ivgenAlg: 'essiv', ivgenHashAlg: 'sha1' }, Buffer.from('x'), v.init, v.write)).rejects.toThrow('No AES cipher with key size 20 available');
    expect(v.disk.length).toBe(0);
  });
});

describe('LUKS1 header checks (QEMU 7.2 texts)', () => {
  // A valid header to damage: QEMU's default layout.
  const good = (): Luks1Header => parseLuks1Header(serializeLuks1Header({
    version: 1, cipherName: 'aes', cipherMode: 'xts-plain64', hashSpec: 'sha256', payloadOffsetSector: 4040, masterKeyLen: 64,
    masterKeyDigest: Buffer.alloc(20), masterKeySalt: Buffer.alloc(32), masterKeyIterations: 1000, uuid: '00000000-0000-0000-0000-000000000000',
    keySlots: Array.from({ length: 8 }, (_, i) => ({ active: i === 0 ? KEY_SLOT_ENABLED : 0xdead, iterations: 1000, salt: Buffer.alloc(32), keyOffsetSector: 8 + i * 504, stripes: 4000 })),
  }));
  const damaged = (f: (h: Luks1Header) => void) => { const h = good(); f(h); return serializeLuks1Header(h); };
  const raw = (f: (b: Buffer) => void) => { const b = serializeLuks1Header(good()); f(b); return b; };
  const opening = (b: Buffer) => () => { const h = parseLuks1Header(b); parseCipherSpec(h.cipherName, h.cipherMode, h.hashSpec, h.masterKeyLen); };

  it.each<[string, Buffer]>([
    ['Volume is not in LUKS format', raw((b) => { b[0] = 0; })],
    ['Volume is not in LUKS format', Buffer.alloc(100)],
    ['LUKS version 2 is not supported', damaged((h) => { h.version = 2; })],
    ['LUKS header cipher name is not NUL terminated', raw((b) => b.fill(0x61, 8, 40))],
    ['LUKS header cipher mode is not NUL terminated', raw((b) => b.fill(0x61, 40, 72))],
    ['LUKS header hash spec is not NUL terminated', raw((b) => b.fill(0x61, 72, 104))],
    ['LUKS payload is overlapping with the header', damaged((h) => { h.payloadOffsetSector = 2; })],
    ['LUKS key iteration count is zero', damaged((h) => { h.masterKeyIterations = 0; })],
    ['Keyslot 3 is corrupted (stripes 5 != 4000)', damaged((h) => { h.keySlots[3].stripes = 5; })],
    ['Keyslot 2 state (active/disable) is corrupted', damaged((h) => { h.keySlots[2].active = 1; })],
    ['Keyslot 0 iteration count is zero', damaged((h) => { h.keySlots[0].iterations = 0; })],
    ['Keyslot 0 is overlapping with the LUKS header', damaged((h) => { h.keySlots[0].keyOffsetSector = 2; })],
    ['Keyslot 7 is overlapping with the encrypted payload', damaged((h) => { h.keySlots[7].keyOffsetSector = 4000; })],
    ['Keyslots 4 and 5 are overlapping in the header', damaged((h) => { h.keySlots[5].keyOffsetSector = h.keySlots[4].keyOffsetSector; })],
    ["Algorithm 'foo' with key size 32 bytes not supported", damaged((h) => { h.cipherName = 'foo'; })],
    ["Algorithm 'aes' with key size 8 bytes not supported", damaged((h) => { h.masterKeyLen = 16; })],
    ["Algorithm 'aes' with key size 64 bytes not supported", damaged((h) => { h.cipherMode = 'cbc-plain64'; })],
    ["Unexpected cipher mode string format 'xts'", damaged((h) => { h.cipherMode = 'xts'; })],
    ["IV generator 'foo' not supported", damaged((h) => { h.cipherMode = 'xts-foo'; })],
    ["Cipher mode 'foo' not supported", damaged((h) => { h.cipherMode = 'foo-plain64'; })],
    ['Missing IV generator hash specification', damaged((h) => { h.cipherMode = 'xts-essiv'; })],
    ["Hash algorithm 'foo' not supported", damaged((h) => { h.cipherMode = 'xts-essiv:foo'; })],
    ["Hash algorithm 'sha2566' not supported", damaged((h) => { h.hashSpec = 'sha2566'; })],
  ])('%s', (text, bytes) => {
    expect(opening(bytes)).toThrow(text);
    expect(bytes.length === LUKS1_HEADER_SIZE || bytes.length === 100).toBe(true);
  });

  it('a plain ivgen with a hash is accepted, as dm-crypt does', () => {
    expect(opening(damaged((h) => { h.cipherMode = 'xts-plain64:sha256'; }))).not.toThrow();
  });
});

describe('passphrases from secrets (QEMU\'s qcrypto_secret_lookup_as_utf8, then strlen)', () => {
  it('takes valid UTF-8 up to the first NUL and refuses anything else', async () => {
    const { passwordFromSecret } = await import('../../src/crypto/luks1-open.ts');
    expect(passwordFromSecret('s', Buffer.from('p\u00e4ss')).toString()).toBe('p\u00e4ss');
    expect(passwordFromSecret('s', Buffer.from('ab\0cd')).toString()).toBe('ab');
    expect(() => passwordFromSecret('s0', Buffer.from([0x61, 0xff]))).toThrow('Data from secret s0 is not valid UTF-8');
  });
});
