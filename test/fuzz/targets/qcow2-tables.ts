/**
 * The qcow2 table decoders: L1/L2 entries (src/blockdev/drivers/qcow2/l2.ts),
 * refcount entries of every width and reftable entries (refcount.ts), the
 * snapshot table (snapshots.ts) and the persistent bitmap directory
 * (bitmaps.ts, bitmaps-store.ts).
 *
 * Input: raw 64-bit entries, refcount values of every width, snapshot tables
 * and bitmap directories built valid and then overwritten/truncated.
 *
 * Properties: entry decoders never throw and stay within their fields
 * (offsets are cluster-aligned below 2^56, compressed extents lie within
 * 2^62, refcounts read back what was written, neighbours untouched); table
 * parsers return entries or refuse with a BlockError; a valid directory entry
 * parses back to itself.
 */
import fc from 'fast-check';
import { clusterType, compressedDescriptor, entryOffset, subclusterType } from '../../../src/blockdev/drivers/qcow2/l2.ts';
import { getRefcountEntry, refcountMax, reftableEntry, setRefcountEntry } from '../../../src/blockdev/drivers/qcow2/refcount.ts';
import { parseSnapshotTable } from '../../../src/blockdev/drivers/qcow2/snapshots.ts';
import { parseBitmapDirectory } from '../../../src/blockdev/drivers/qcow2/bitmaps.ts';
import { parseDirectory, serializeEntry } from '../../../src/blockdev/drivers/qcow2/bitmaps-store.ts';
import { outcome, type FuzzTarget } from '../harness.ts';

const u32Arb = fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.constantFrom(0, 0x80000000, 0x40000000, 0x3fffffff, 0xffffffff, 1, 0x200));

const snapEntryArb = fc.record({
  l1Offset: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), l1Size: u32Arb, id: fc.string({ maxLength: 6 }), name: fc.string({ maxLength: 10 }),
  extra: fc.uint8Array({ maxLength: 32 }), vmState: u32Arb,
});
const dirEntryArb = fc.record({
  tableOffset: fc.integer({ min: 0, max: 2 ** 40 }).map((n) => n * 512), tableSize: u32Arb, flags: u32Arb, type: fc.integer({ min: 0, max: 255 }),
  granularityBits: fc.integer({ min: 0, max: 255 }), name: fc.string({ maxLength: 16 }), extra: fc.uint8Array({ maxLength: 16 }),
});
const patchArb = fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) });

export interface Qcow2TablesInput {
  entries: [number, number][];
  clusterBits: number;
  refBits: number;
  refValues: { index: number; value: number }[];
  snapshots: { l1Offset: bigint; l1Size: number; id: string; name: string; extra: Uint8Array; vmState: number }[];
  dir: { tableOffset: number; tableSize: number; flags: number; type: number; granularityBits: number; name: string; extra: Uint8Array }[];
  patches: { at: number; value: number }[];
  truncate: number;
}

function snapshotTable(entries: Qcow2TablesInput['snapshots']): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const id = Buffer.from(e.id); const name = Buffer.from(e.name);
    const h = Buffer.alloc(40);
    h.writeBigUInt64BE(e.l1Offset, 0); h.writeUInt32BE(e.l1Size, 8); h.writeUInt16BE(id.length, 12); h.writeUInt16BE(name.length, 14);
    h.writeUInt32BE(e.vmState, 32); h.writeUInt32BE(e.extra.length, 36);
    const body = Buffer.concat([h, Buffer.from(e.extra), id, name]);
    parts.push(body, Buffer.alloc((8 - (body.length % 8)) % 8));
  }
  return Buffer.concat(parts);
}

function mutate(b: Buffer, x: Qcow2TablesInput): Buffer {
  const out = Buffer.from(b);
  if (out.length) for (const p of x.patches) out[p.at % out.length] = p.value;
  return x.truncate ? out.subarray(0, out.length - (x.truncate % (out.length + 1))) : out;
}

export const qcow2Tables: FuzzTarget<Qcow2TablesInput> = {
  name: 'qcow2-tables',
  about: 'qcow2 L1/L2/refcount/reftable entries, snapshot table, bitmap directory: valid, overwritten, truncated',
  runs: 400,
  arbitrary: () => fc.record({
    entries: fc.array(fc.tuple(u32Arb, u32Arb), { maxLength: 8 }),
    clusterBits: fc.integer({ min: 9, max: 21 }),
    refBits: fc.constantFrom(1, 2, 4, 8, 16, 32, 64),
    refValues: fc.array(fc.record({ index: fc.nat({ max: 63 }), value: fc.oneof(fc.nat(), fc.constant(Number.MAX_SAFE_INTEGER)) }), { maxLength: 8 }),
    snapshots: fc.array(snapEntryArb, { maxLength: 4 }),
    dir: fc.array(dirEntryArb, { maxLength: 4 }),
    patches: fc.array(patchArb, { maxLength: 4 }),
    truncate: fc.nat({ max: 64 }),
  }),
  check(x) {
    const clusterSize = 2 ** x.clusterBits;
    for (const [hi, lo] of x.entries) {
      const off = entryOffset(hi, lo);
      if (off % 512 !== 0 || off >= 2 ** 56 || off < 0) throw new Error(`entry offset ${off} of ${hi}:${lo}`);
      const rt = reftableEntry(hi, lo);
      if (rt !== Infinity && rt !== off) throw new Error(`reftable entry ${rt} vs ${off}`);
      for (const v3 of [false, true]) for (const ext of [false, true]) for (const df of [false, true]) {
        const t = clusterType(hi, lo, v3, ext, df);
        for (let sc = 0; sc < 32; sc += 7) subclusterType(t, hi, lo, sc);
      }
      const c = compressedDescriptor(hi, lo, x.clusterBits);
      if (!(c.offset >= 0 && c.length > 0 && c.offset + c.length <= 2 ** 62 + 2 ** 21 * 4)) throw new Error(`compressed extent ${JSON.stringify(c)}`);
    }
    // Refcounts: what is written reads back, neighbours untouched.
    const block = Buffer.alloc(64 * 8, 0);
    const model = new Map<number, number>();
    const max = refcountMax(x.refBits);
    for (const { index, value } of x.refValues) {
      const v = Math.min(value, max);
      setRefcountEntry(block, index, x.refBits, v);
      model.set(index, v);
      for (let i = 0; i < 64; i++) {
        const got = getRefcountEntry(block, i, x.refBits);
        if (got !== (model.get(i) ?? 0)) throw new Error(`refcount[${i}] (${x.refBits} bits) reads ${got}, wrote ${model.get(i) ?? 0}`);
      }
    }
    // Snapshot table: valid, then mutated.
    const table = snapshotTable(x.snapshots);
    for (const b of [table, mutate(table, x)]) {
      const r = outcome(() => parseSnapshotTable(b, x.snapshots.length, clusterSize), 'parseSnapshotTable');
      if ('ok' in r && r.ok.size > Math.ceil(b.length / 8) * 8) throw new Error(`snapshot table size ${r.ok.size} beyond ${b.length} bytes`);
    }
    // Bitmap directory: entries parse back; mutated ones parse or are refused.
    const dir = Buffer.concat(x.dir.map((e) => serializeEntry({ ...e, extra: Buffer.from(e.extra) })));
    const parsed = parseDirectory(dir, x.dir.length);
    parsed.forEach((p, i) => {
      const e = x.dir[i]!;
      if (p.tableOffset !== e.tableOffset || p.tableSize !== e.tableSize || p.flags !== e.flags >>> 0 || p.name !== Buffer.from(e.name).toString()
        || p.granularityBits !== e.granularityBits || !p.extra.equals(Buffer.from(e.extra))) {
        throw new Error(`directory entry ${i} did not parse back: ${JSON.stringify(p)}`);
      }
    });
    const bad = mutate(dir, x);
    outcome(() => parseDirectory(bad, x.dir.length + (x.truncate & 1)), 'parseDirectory');
    outcome(() => parseBitmapDirectory(bad, x.dir.length + (x.truncate & 1)), 'parseBitmapDirectory');
  },
};
