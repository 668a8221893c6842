/**
 * Quorum's votes (QEMU's quorum_count_vote / quorum_get_vote_winner), pure:
 * the children's results are grouped into versions of equal value, and
 * the version with most votes wins. The order is QEMU's, since events and
 * rewrites follow it: a new version goes to the head of the list and so
 * does each vote within a version; the winner is the first version, from
 * the head, with a count no later one beats (a tie goes to the version
 * seen last); a version keeps the index of its first vote, whose copy is
 * the one returned.
 */

export interface Version<V> {
  value: V;
  /** The child whose result stands for the version (its first vote). */
  index: number;
  /** Child indexes voting for it, newest first. */
  items: number[];
}

export class Votes<V> {
  /** Newest version first. */
  readonly versions: Version<V>[] = [];

  constructor(private readonly same: (a: V, b: V) => boolean) {}

  count(value: V, index: number): void {
    let v = this.versions.find((x) => this.same(x.value, value));
    if (!v) {
      v = { value, index, items: [] };
      this.versions.unshift(v);
    }
    v.items.unshift(index);
  }

  winner(): Version<V> | undefined {
    let best: Version<V> | undefined;
    for (const v of this.versions) if (!best || v.items.length > best.items.length) best = v;
    return best;
  }

  /** The children voting for other versions than `winner`, in QEMU's order (quorum_report_bad_versions). */
  losers(winner: Version<V>): number[] {
    const out: number[] = [];
    for (const v of this.versions) if (!this.same(v.value, winner.value)) out.push(...v.items);
    return out;
  }
}

/** What a quorum read settles on (QEMU's quorum_vote), given each child's data or undefined for a failed read. */
export type ReadVerdict =
  | { kind: 'agree'; index: number }
  | { kind: 'winner'; index: number; losers: number[] }
  | { kind: 'too-few-reads' }
  | { kind: 'no-quorum' };

export function voteRead(results: readonly (Buffer | undefined)[], threshold: number, compare: (a: Buffer, b: Buffer) => boolean): ReadVerdict {
  const ok = results.flatMap((r, i) => (r ? [i] : []));
  if (ok.length < threshold) return { kind: 'too-few-reads' };
  const first = ok[0]!;
  // Every successful read agrees with the first: no hashing (QEMU compares them directly).
  if (ok.slice(1).every((j) => compare(results[first]!, results[j]!))) return { kind: 'agree', index: first };
  // QEMU votes by SHA-256 of the contents; equal contents are what equal hashes stand for.
  const votes = new Votes<Buffer>((a, b) => a.equals(b));
  for (const i of ok) votes.count(results[i]!, i);
  const winner = votes.winner()!;
  if (winner.items.length < threshold) return { kind: 'no-quorum' };
  return { kind: 'winner', index: winner.index, losers: votes.losers(winner) };
}

/** QEMU's quorum_vote_error: the most common errno among the failed children (undefined: none failed). */
export function voteError<E>(errors: readonly (E | undefined)[], code: (e: E) => string): E | undefined {
  const votes = new Votes<string>((a, b) => a === b);
  errors.forEach((e, i) => { if (e !== undefined) votes.count(code(e), i); });
  const w = votes.winner();
  return w ? errors[w.index] : undefined;
}
