/**
 * Feeding a parser its input split at every byte boundary (pg-protocol's
 * parser-test style): whatever the chunking, the messages decoded must be
 * the same as from the whole input at once.
 */

/** Every two-piece split of `bytes`, then the whole input one byte at a time. */
export function splits(bytes: Buffer): Buffer[][] {
  const out: Buffer[][] = [];
  for (let i = 0; i <= bytes.length; i++) out.push([bytes.subarray(0, i), bytes.subarray(i)]);
  out.push(Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1)));
  return out;
}

/**
 * Runs `decode` over each chunking: `push` feeds a chunk (copied, so no view
 * can outlive it unnoticed), `drain` takes every message decodable so far.
 */
export function decodeEverySplit<T>(bytes: Buffer, make: () => { push(b: Buffer): void; drain(): T[] }): T[][] {
  return splits(bytes).map((pieces) => {
    const p = make();
    const got: T[] = [];
    for (const piece of pieces) {
      p.push(Buffer.from(piece));
      got.push(...p.drain());
    }
    return got;
  });
}
