/**
 * QEMU's dictionaries are hash tables (512 buckets, the tdb hash), iterated in
 * bucket order, the most recently inserted key first within a bucket. QMP
 * output is written in that order (src/qmp/json-writer.ts), and QEMU applies
 * an object's properties from a dictionary in that order too (so where two
 * properties set the same thing, which one wins depends on it).
 */
const BUCKETS = 512;
const hashCache = new Map<string, number>();

/** QEMU's bucket for a dictionary key. */
export function qdictBucket(key: string): number {
  let h = hashCache.get(key);
  if (h !== undefined) return h;
  const b = Buffer.from(key, 'utf8');
  let v = Math.imul(0x238f13af, b.length) >>> 0;
  for (let i = 0; i < b.length; i++) v = (v + ((b[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  h = ((Math.imul(1103515243, v) + 12345) >>> 0) % BUCKETS;
  if (hashCache.size < 10_000) hashCache.set(key, h);
  return h;
}

/** The keys of `obj` in the order QEMU iterates a QDict built by inserting them in this order. */
export function qdictOrder(keys: string[]): string[] {
  return keys
    .map((k, i) => ({ k, i, b: qdictBucket(k) }))
    .sort((x, y) => x.b - y.b || y.i - x.i)
    .map((e) => e.k);
}
