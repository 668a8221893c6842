/**
 * The point-in-time view of a copy-before-write filter (QEMU's
 * cbw_co_preadv_snapshot, cbw_co_snapshot_block_status,
 * cbw_co_pdiscard_snapshot): a cluster already copied is read from the
 * target, one not yet copied from the source, which still holds it. The
 * range lock copy-before-write takes to copy is held across each such read,
 * so a write cannot overwrite source data a snapshot read is reading.
 */
import { BlockError } from '../../util/errors.ts';
import type { SnapshotAccess } from '../driver.ts';
import type { CowState } from './copy-before-write.ts';

/** A piece of [offset, offset+length) from `offset` whose clusters are all copied (read from the target) or none is. */
function pieceAt(state: CowState, offset: number, length: number): { copied: boolean; length: number } {
  const c = state.cluster;
  const end = offset + length;
  const copied = !state.map.get(offset);
  let at = Math.min(end, (Math.floor(offset / c) + 1) * c);
  while (at < end && !state.map.get(at) === copied) at = Math.min(end, at + c);
  return { copied, length: at - offset };
}

/** Runs `fn` with [offset, offset+length) covered by the snapshot and locked against copies (and so writes). */
async function locked<T>(state: CowState, offset: number, length: number, fn: () => Promise<T>): Promise<T> {
  const c = state.cluster;
  const a = offset - (offset % c);
  const b = Math.ceil((offset + length) / c) * c;
  const access = state.access;
  // Every granule of the range must be covered (bdrv_dirty_bitmap_next_zero == -1).
  if (!access) throw new BlockError('EINVAL', 'Permission denied: no snapshot taken');
  for (let pos = a; pos < b; pos += c) if (!access.get(pos)) throw new BlockError('EINVAL', 'Permission denied: the range is not in the snapshot');
  const release = await state.lock.acquire(a, b);
  try {
    return await fn();
  } finally {
    release();
  }
}

export function cowSnapshotAccess(state: CowState): SnapshotAccess {
  return {
    async read(offset, buf) {
      await locked(state, offset, buf.length, async () => {
        for (let done = 0; done < buf.length;) {
          const p = pieceAt(state, offset + done, buf.length - done);
          await (p.copied ? state.target : state.source).read(offset + done, buf.subarray(done, done + p.length));
          done += p.length;
        }
      });
    },
    async blockStatus(offset, length) {
      return locked(state, offset, length, async () => {
        const p = pieceAt(state, offset, length);
        return (p.copied ? state.target : state.source).blockStatus(offset, p.length);
      });
    },
    async discard(offset, length) {
      state.access?.clear(offset, length, false);
      state.map.clear(offset, length, false);
      await state.target.discard(offset, length);
    },
  };
}
