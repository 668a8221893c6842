/**
 * The LUKS header parsers: LUKS1's 592-byte header (src/crypto/luks1-header.ts)
 * and LUKS2's binary headers and JSON metadata (src/crypto/luks2-header.ts).
 *
 * Input: a valid LUKS1 header with bytes and fields overwritten; a valid
 * LUKS2 header pair whose JSON has values replaced anywhere by any JSON value
 * (checksums recomputed, so the JSON is what gets tested), then bytes of the
 * binary headers overwritten (checksums now wrong) and the file truncated.
 *
 * Properties: each parser returns a header or refuses with a BlockError; a
 * valid header parses; what LUKS1 parses re-serialises to the same bytes.
 */
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import {
  KEY_SLOT_DISABLED, KEY_SLOT_ENABLED, LUKS_STRIPES, parseLuks1Header, serializeLuks1Header, splitKeySectors, type Luks1Header,
} from '../../../src/crypto/luks1-header.ts';
import { readLuks2Header } from '../../../src/crypto/luks2-header.ts';
import { outcome, outcomeAsync, type FuzzTarget } from '../harness.ts';

function luks1(active: number): Luks1Header {
  const per = splitKeySectors(64, LUKS_STRIPES);
  return {
    version: 1, cipherName: 'aes', cipherMode: 'xts-plain64', hashSpec: 'sha256', payloadOffsetSector: 8 + 8 * per, masterKeyLen: 64,
    masterKeyDigest: Buffer.alloc(20, 1), masterKeySalt: Buffer.alloc(32, 2), masterKeyIterations: 1000, uuid: '0c8d2e7a-6f0c-4f7e-9f3b-4b1f3d2a1c00',
    keySlots: Array.from({ length: 8 }, (_, i) => ({
      active: active & (1 << i) ? KEY_SLOT_ENABLED : KEY_SLOT_DISABLED, iterations: active & (1 << i) ? 1000 : 0, salt: Buffer.alloc(32, i),
      keyOffsetSector: 8 + i * per, stripes: LUKS_STRIPES,
    })),
  };
}

const LUKS2_JSON = {
  keyslots: { 0: { type: 'luks2', key_size: 64, af: { type: 'luks1', stripes: 4000, hash: 'sha256' },
    area: { type: 'raw', offset: '32768', size: '258048', encryption: 'aes-xts-plain64', key_size: 64 },
    kdf: { type: 'argon2id', time: 4, memory: 1024, cpus: 1, salt: 'AAAA' } } },
  tokens: {},
  segments: { 0: { type: 'crypt', offset: '16777216', size: 'dynamic', iv_tweak: '0', encryption: 'aes-xts-plain64', sector_size: 512 } },
  digests: { 0: { type: 'pbkdf2', keyslots: ['0'], segments: ['0'], hash: 'sha256', iterations: 1000, salt: 'AAAA', digest: 'AAAA' } },
  config: { json_size: '12288', keyslots_size: '16744448' },
};

/** Replaces the value at a path chosen by `pick` (numbers walk down the tree) with `value`. */
function replaceAt(root: unknown, pick: number[], value: unknown): unknown {
  if (pick.length === 0 || !root || typeof root !== 'object') return value;
  const keys = Object.keys(root);
  if (keys.length === 0) return value;
  const k = keys[pick[0]! % keys.length]!;
  const copy: Record<string, unknown> = Array.isArray(root) ? [...root] as unknown as Record<string, unknown> : { ...(root as Record<string, unknown>) };
  copy[k] = pick.length === 1 ? value : replaceAt(copy[k], pick.slice(1), value);
  return copy;
}

function luks2Image(json: unknown, seqids: [number, number]): Buffer {
  const hdr = 16384;
  const img = Buffer.alloc(2 * hdr);
  for (const [i, at] of [[0, 0], [1, hdr]] as const) {
    const bin = img.subarray(at, at + 4096);
    Buffer.from(i === 0 ? [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe] : [0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe]).copy(bin, 0);
    bin.writeUInt16BE(2, 6);
    bin.writeBigUInt64BE(BigInt(hdr), 8);
    bin.writeBigUInt64BE(BigInt(seqids[i]), 16);
    bin.write('sha256', 72, 'latin1');
    bin.write('0c8d2e7a-6f0c-4f7e-9f3b-4b1f3d2a1c00', 168, 'latin1');
    bin.writeBigUInt64BE(BigInt(at), 256);
    const area = img.subarray(at + 4096, at + hdr);
    area.write(JSON.stringify(json), 0, 'utf8');
    const sum = createHash('sha256').update(bin).update(area).digest();
    sum.copy(bin, 448);
  }
  return img;
}

const patchArb = fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) });

export interface LuksInput {
  active: number;
  luks1Patches: { at: number; value: number }[];
  field: { at: number; value: number } | null;
  edits: { pick: number[]; value: unknown }[];
  seqids: [number, number];
  luks2Patches: { at: number; value: number }[];
  truncate: number;
}

const FIELD_AT = [104, 108, 164, ...Array.from({ length: 8 }, (_, i) => [208 + i * 48, 212 + i * 48, 248 + i * 48, 252 + i * 48]).flat()];

export const luksHeader: FuzzTarget<LuksInput> = {
  name: 'luks-header',
  about: 'LUKS1 header fields and key slots; LUKS2 binary headers, checksums, JSON metadata values anywhere',
  runs: 250,
  arbitrary: () => fc.record({
    active: fc.integer({ min: 0, max: 255 }),
    luks1Patches: fc.array(patchArb, { maxLength: 3 }),
    field: fc.option(fc.record({ at: fc.nat({ max: FIELD_AT.length - 1 }), value: fc.constantFrom(0, 1, 7, 8, 4000, 0xdead, 0xac71f3, 0xffffffff, 2 ** 31) }), { nil: null }),
    edits: fc.array(fc.record({ pick: fc.array(fc.nat(), { maxLength: 5 }), value: fc.jsonValue({ maxDepth: 2 }) }), { maxLength: 3 }),
    seqids: fc.tuple(fc.nat({ max: 3 }), fc.nat({ max: 3 })),
    luks2Patches: fc.array(patchArb, { maxLength: 2 }),
    truncate: fc.nat(),
  }),
  async check(x) {
    const h1 = luks1(x.active);
    const valid1 = serializeLuks1Header(h1);
    parseLuks1Header(valid1);
    const buf1 = Buffer.from(valid1);
    for (const p of x.luks1Patches) buf1[p.at % buf1.length] = p.value;
    if (x.field) buf1.writeUInt32BE(x.field.value >>> 0, FIELD_AT[x.field.at]!);
    const r1 = outcome(() => parseLuks1Header(buf1), 'parseLuks1Header');
    if ('ok' in r1 && r1.ok.uuid.length < 40 && !/[\x80-\xff]/.test(r1.ok.cipherName + r1.ok.cipherMode + r1.ok.hashSpec)) {
      // The fields it decoded, written back, are the bytes it read (string padding aside).
      const again = parseLuks1Header(serializeLuks1Header(r1.ok));
      if (JSON.stringify(again) !== JSON.stringify(r1.ok)) throw new Error('LUKS1 header does not survive a re-serialisation');
    }

    let json: unknown = LUKS2_JSON;
    for (const e of x.edits) json = replaceAt(json, e.pick, e.value);
    const valid2 = luks2Image(LUKS2_JSON, [1, 1]);
    const readerOf = (img: Buffer) => async (offset: number, length: number) => {
      const b = Buffer.alloc(length);
      if (offset < img.length) img.copy(b, 0, offset, Math.min(img.length, offset + length));
      return b;
    };
    await readLuks2Header(readerOf(valid2));
    const img = luks2Image(json, x.seqids);
    await outcomeAsync(() => readLuks2Header(readerOf(img)), 'readLuks2Header (edited JSON)');
    for (const p of x.luks2Patches) img[p.at % 4200] = p.value; // the first binary header and the start of its JSON
    const cut = img.subarray(0, img.length - (x.truncate % (img.length + 1)));
    await outcomeAsync(() => readLuks2Header(readerOf(cut)), 'readLuks2Header (patched, truncated)');
  },
};
