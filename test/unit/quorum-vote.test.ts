/**
 * quorum's votes (src/blockdev/drivers/quorum/vote.ts) in QEMU's order: a
 * tie goes to the version seen last, the winner's copy is its first
 * child's, losers are listed newest version first and, within one, highest
 * child first; errors vote the same way.
 */
import { describe, it, expect } from 'vitest';
import { voteError, voteRead, Votes } from '../../src/blockdev/drivers/quorum/vote.ts';

const b = (...bytes: number[]) => Buffer.from(bytes);
const same = (x: Buffer, y: Buffer) => x.equals(y);

describe('quorum votes', () => {
  it('agreeing reads need no vote; the first successful one is returned', () => {
    expect(voteRead([undefined, b(1), b(1)], 2, same)).toEqual({ kind: 'agree', index: 1 });
  });

  it('too few successful reads fail before any comparison', () => {
    expect(voteRead([undefined, undefined, b(1)], 2, same)).toEqual({ kind: 'too-few-reads' });
  });

  it('the majority wins and the others are losers, newest version first, highest child first', () => {
    expect(voteRead([b(1), b(2), b(1), b(3), b(3)], 2, same)).toEqual({ kind: 'winner', index: 3, losers: [1, 2, 0] });
    expect(voteRead([b(1), b(2), b(1), b(1), b(3)], 2, same)).toEqual({ kind: 'winner', index: 0, losers: [4, 1] });
  });

  it('a winner below the threshold is no quorum', () => {
    expect(voteRead([b(1), b(2), b(3)], 2, same)).toEqual({ kind: 'no-quorum' });
    expect(voteRead([b(1), b(2), b(3)], 1, same)).toEqual({ kind: 'winner', index: 2, losers: [1, 0] });
  });

  it('errors vote: the most common errno, a tie to the one seen last', () => {
    const e = (code: string) => ({ code });
    const errs = [e('EIO'), undefined, e('ENOSPC'), e('EIO')];
    expect(voteError(errs, (x) => x.code)).toBe(errs[0]);
    const tie = [e('EIO'), e('ENOSPC')];
    expect(voteError(tie, (x) => x.code)).toBe(tie[1]);
    expect(voteError([undefined], (x: { code: string }) => x.code)).toBeUndefined();
  });

  it('versions keep their first vote as representative', () => {
    const v = new Votes<number>((x, y) => x === y);
    v.count(7, 0); v.count(8, 1); v.count(7, 2);
    expect(v.versions.map((x) => [x.value, x.index, x.items])).toEqual([[8, 1, [1]], [7, 0, [2, 0]]]);
    expect(v.winner()!.value).toBe(7);
  });
});
