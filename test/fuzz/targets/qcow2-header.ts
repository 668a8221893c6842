/**
 * The qcow2 header parser (src/blockdev/drivers/qcow2/header.ts): header
 * fields, header extensions (backing format, feature table, bitmaps, crypto,
 * data file, unknown ones), backing file name.
 *
 * Input: a valid header (v2 or v3, any cluster size, backing file, extensions)
 * serialised, then overwritten at random places: single bytes, whole fields
 * set to boundary values, the buffer truncated.
 *
 * Properties: parseHeader returns a header or refuses with a BlockError
 * (never a TypeError or an out-of-range read); the valid header parses back
 * to itself; whatever parses re-serialises (when it fits) to bytes that parse
 * to the same header.
 */
import fc from 'fast-check';
import { DEFAULT_FEATURE_NAMES, ExtType, featureTable, parseHeader, serializeHeader, type Qcow2Header } from '../../../src/blockdev/drivers/qcow2/header.ts';
import { BlockError } from '../../../src/util/errors.ts';
import { outcome, type FuzzTarget } from '../harness.ts';

/** Field offsets and widths of the fixed header, for field-wise mutations. */
const FIELDS: [number, 4 | 8][] = [[0, 4], [4, 4], [8, 8], [16, 4], [20, 4], [24, 8], [32, 4], [36, 4], [40, 8], [48, 8], [56, 4], [60, 4], [64, 8],
  [72, 8], [80, 8], [88, 8], [96, 4], [100, 4]];
const BOUNDARY = [0n, 1n, 2n, 7n, 8n, 9n, 16n, 21n, 22n, 63n, 64n, 104n, 112n, 512n, 65536n, 2n ** 31n, 2n ** 32n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];

const baseArb = fc.record({
  version: fc.constantFrom(2 as const, 3 as const),
  clusterBits: fc.integer({ min: 9, max: 21 }),
  sizeClusters: fc.integer({ min: 0, max: 1 << 20 }),
  backingFile: fc.option(fc.string({ maxLength: 40 }), { nil: undefined }),
  backingFormat: fc.option(fc.constantFrom('raw', 'qcow2'), { nil: undefined }),
  features: fc.boolean(),
  bitmaps: fc.boolean(),
  unknownExt: fc.option(fc.uint8Array({ maxLength: 20 }), { nil: undefined }),
  lazy: fc.boolean(),
  extL2: fc.boolean(),
});

const mutationArb = fc.oneof(
  fc.record({ kind: fc.constant('byte' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('field' as const), at: fc.nat({ max: FIELDS.length - 1 }), value: fc.constantFrom(...BOUNDARY).map((v) => v.toString()) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(), value: fc.constant(0) }),
);

export interface Qcow2HeaderInput {
  base: { version: 2 | 3; clusterBits: number; sizeClusters: number; backingFile?: string; backingFormat?: string; features: boolean; bitmaps: boolean; unknownExt?: Uint8Array; lazy: boolean; extL2: boolean };
  mutations: ({ kind: 'byte'; at: number; value: number } | { kind: 'field'; at: number; value: string } | { kind: 'truncate'; at: number; value: number })[];
}

function validHeader(b: Qcow2HeaderInput['base']): Qcow2Header {
  const clusterSize = 2 ** b.clusterBits;
  const extL2 = b.version === 3 && b.extL2 && b.clusterBits >= 14;
  const size = b.sizeClusters * 512;
  const l2Entries = clusterSize / (extL2 ? 16 : 8);
  const l1Size = Math.ceil(size / (clusterSize * l2Entries));
  const extensions = [];
  if (b.version === 3 && b.features && b.clusterBits >= 10) extensions.push({ type: ExtType.FEATURE_TABLE, data: featureTable(DEFAULT_FEATURE_NAMES) });
  if (b.unknownExt) extensions.push({ type: 0x12345678, data: Buffer.from(b.unknownExt) });
  if (b.version === 3 && b.bitmaps) {
    const d = Buffer.alloc(24);
    d.writeUInt32BE(1, 0);
    d.writeBigUInt64BE(64n, 8);
    d.writeBigUInt64BE(BigInt(clusterSize * 4), 16);
    extensions.push({ type: ExtType.BITMAPS, data: d });
  }
  return {
    version: b.version, backingFileOffset: 0, backingFileSize: 0, clusterBits: b.clusterBits, size, cryptMethod: 0,
    l1Size, l1TableOffset: clusterSize * 3, refcountTableOffset: clusterSize, refcountTableClusters: 1, nbSnapshots: 0, snapshotsOffset: 0,
    incompatible: extL2 ? 16n : 0n, compatible: b.version === 3 && b.lazy ? 1n : 0n, autoclear: b.version === 3 && b.bitmaps ? 1n : 0n,
    refcountOrder: 4, headerLength: b.version === 3 ? 112 : 72, compressionType: 0,
    extraFields: b.version === 3 ? Buffer.alloc(7) : Buffer.alloc(0), extensions, featureNames: [],
    backingFile: b.backingFile, backingFormat: b.backingFile !== undefined ? b.backingFormat : undefined,
  };
}

/** The header minus what serialisation normalises, for comparisons. */
function shape(h: Qcow2Header): string {
  return JSON.stringify(h, (_k, v) => (typeof v === 'bigint' ? v.toString() : v && v.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v));
}

export const qcow2Header: FuzzTarget<Qcow2HeaderInput> = {
  name: 'qcow2-header',
  about: 'qcow2 header and extensions: valid v2/v3 headers, then bytes, fields and length mutated',
  runs: 400,
  arbitrary: () => fc.record({ base: baseArb, mutations: fc.array(mutationArb, { maxLength: 4 }) }),
  check(x) {
    const valid = validHeader(x.base);
    let buf = serializeHeader(valid);
    const first = parseHeader(buf);
    if (first.backingFile !== valid.backingFile || first.size !== valid.size || first.l1Size !== valid.l1Size) {
      throw new Error(`valid header did not parse back: ${shape(first)}`);
    }
    for (const m of x.mutations) {
      if (m.kind === 'byte') buf[m.at % buf.length] = m.value;
      else if (m.kind === 'truncate') buf = buf.subarray(0, m.at % (buf.length + 1));
      else {
        const [at, width] = FIELDS[m.at]!;
        if (at + width > buf.length) continue;
        const v = BigInt(m.value);
        if (width === 8) buf.writeBigUInt64BE(v & (2n ** 64n - 1n), at); else buf.writeUInt32BE(Number(v & 0xffffffffn), at);
      }
    }
    const r = outcome(() => parseHeader(buf), 'parseHeader');
    if ('refused' in r) return;
    let again: Buffer;
    try {
      again = serializeHeader(r.ok);
    } catch (e) {
      if (e instanceof BlockError) return; // does not fit in a cluster: the driver refuses to rewrite it
      throw e;
    }
    const back = parseHeader(again);
    // Serialisation regenerates the backing file offset and size (a size without an offset means nothing); everything else must survive.
    // The backing format and data file extensions are rewritten from the strings parsed out of them (as QEMU does).
    const regenerated = new Set<number>([ExtType.BACKING_FORMAT, ExtType.DATA_FILE]);
    const norm = (h: Qcow2Header) => shape({ ...h, extensions: h.extensions.filter((e) => !regenerated.has(e.type)), backingFileOffset: 0, backingFileSize: h.backingFile === undefined ? 0 : Buffer.byteLength(h.backingFile), headerLength: Math.max(h.headerLength, h.version === 3 ? 104 : 72) });
    // ... their bytes (up to a NUL: C strings to QEMU) must survive, whatever they are.
    const cstr = (h: Qcow2Header, t: number) => h.extensions.filter((e) => e.type === t).map((e) => e.data.subarray(0, e.data.indexOf(0) < 0 ? e.data.length : e.data.indexOf(0)).toString('hex'));
    if (JSON.stringify(cstr(back, ExtType.BACKING_FORMAT)) !== JSON.stringify(cstr(r.ok, ExtType.BACKING_FORMAT))) {
      throw new Error(`backing format bytes changed by a rewrite: ${cstr(r.ok, ExtType.BACKING_FORMAT)} -> ${cstr(back, ExtType.BACKING_FORMAT)}`);
    }
    if (norm(back) !== norm(r.ok)) throw new Error(`re-serialised header differs:\n ${norm(r.ok)}\n ${norm(back)}`);
  },
};
