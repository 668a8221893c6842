/**
 * copy-on-read: a filter whose reads of data that the 'file' child inherits
 * from its backing chain (above the optional 'bottom' node) also write that
 * data into the child, so the child comes to hold it itself. block-stream
 * copies through it; it can be used alone (--blockdev
 * driver=copy-on-read,file=...).
 *
 * A copy is read and written under a range lock that writes through the
 * filter also take, so a user's write is never overwritten by older data
 * being copied up.
 */
import { BlockError } from '../../util/errors.ts';
import { RangeLock } from '../range-lock.ts';
import { obj, opt, req } from '../../qapi/types.ts';
import { BlockdevRef } from '../options.ts';
import type { Driver, DriverOps } from '../driver.ts';
import { followEdge } from './follow-edge.ts';
import type { BlockNode } from '../node.ts';
import type { Extent } from '../request.ts';
import { clusterSizeOf, isZero } from '../zeroes.ts';

/** Depth (1 = the node itself) of `bottom` in the backing chain of `top`; Infinity without a bottom. */
function chainDepth(top: BlockNode, bottom: BlockNode | undefined): number {
  if (!bottom) return Infinity;
  let d = 1;
  for (let n: BlockNode | undefined = top; n; n = n.child('backing') ?? (n.isFilter ? n.primaryChild : undefined), d++) {
    if (n === bottom) return d;
  }
  throw new BlockError('EINVAL', `Node '${bottom.nodeName}' is not in the backing chain of '${top.nodeName}'`);
}

/** Whether an extent of the child's status is data to copy up: inherited, and from no deeper than `limit`. */
export function needsCopy(e: Extent, limit: number): boolean {
  return !e.allocated && e.depth > 1 && e.depth <= limit;
}

export interface CopyRun { offset: number; length: number; copy: boolean }

/**
 * The pieces QEMU copies up as one (each written as write-zeroes when its
 * bounce buffer is all zeroes, as bdrv_co_do_copy_on_readv does), from the
 * child's block status. Without a bottom (`limit` undefined) every run the
 * child does not hold itself is copied, whatever lies below; with one, a run
 * is one layer's allocation of one kind (QEMU's bdrv_is_allocated_above
 * pieces), copied when that layer is no deeper than `limit`.
 */
export function copyRuns(ext: readonly Extent[], limit: number | undefined): CopyRun[] {
  const key = (e: Extent): string => {
    if (e.allocated) return 'held';
    if (limit === undefined) return 'copy';
    return needsCopy(e, limit) ? `copy:${e.depth}:${e.zero}` : 'skip';
  };
  const out: (CopyRun & { key: string })[] = [];
  for (const e of ext) {
    const k = key(e);
    const last = out[out.length - 1];
    if (last && last.key === k && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length, copy: k.startsWith('copy'), key: k });
  }
  return out.map(({ offset, length, copy }) => ({ offset, length, copy }));
}

/** QEMU's MAX_BOUNCE_BUFFER: the largest piece copied (and checked for zeroes) at once. */
const MAX_BOUNCE = 16 * 1024 * 1024;

/** Writes `part` (the data at `offset`) into `node`: zeroes as write-zeroes (no unmap), as QEMU's copy-on-read. */
async function writeCopy(node: BlockNode, offset: number, part: Buffer): Promise<void> {
  for (let o = 0; o < part.length; o += MAX_BOUNCE) {
    const piece = part.subarray(o, Math.min(part.length, o + MAX_BOUNCE));
    // cor_write: QEMU's block layer raises it on the node it copies into (blkdebug listens).
    node.debugEvent('cor_write');
    if (isZero(piece)) await node.writeZeroes(offset + o, piece.length, 0);
    else await node.write(offset + o, piece);
  }
}


export const copyOnReadDriver: Driver = {
  name: 'copy-on-read',
  kind: 'filter',
  options: obj('BlockdevOptionsCor', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
    opt('bottom', 'str', 'The name of a non-filter node (allocation-bearing layer) that limits the COR operations in the backing chain (inclusive), so that no data below this node will be copied by this filter.'),
  ]),
  async open(options, ctx): Promise<DriverOps> {
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>, {
      perm: { read: true, write: true, resize: false },
      shared: { read: true, write: true, resize: true },
    });
    const bottomName = options.bottom as string | undefined;
    let bottom: BlockNode | undefined;
    if (bottomName !== undefined) {
      for (let n: BlockNode | undefined = file; n; n = n.child('backing')) if (n.nodeName === bottomName) bottom = n;
      if (!bottom) throw new BlockError('EINVAL', `Cannot find device='' nor node-name='${bottomName}'`);
    }
    const lock = new RangeLock();
    // Requests go to whatever the edge points at now (a snapshot under the filter moves it).
    const child = followEdge(ctx, file, 'file');
    return {
      async read(offset, buf) {
        const f = child();
        const limit = bottom ? chainDepth(f, bottom) : undefined;
        const ext = await f.blockStatus(offset, buf.length);
        if (f.readOnly || !copyRuns(ext, limit).some((r) => r.copy)) return f.read(offset, buf);
        // Whole clusters are read and copied, so the child needs no partial-cluster COW.
        const cs = clusterSizeOf(f);
        const start = Math.floor(offset / cs) * cs;
        const end = Math.min(f.length(), Math.ceil((offset + buf.length) / cs) * cs);
        const release = await lock.acquire(start, end);
        try {
          const bounce = start === offset && end === offset + buf.length ? buf : Buffer.alloc(end - start);
          await f.read(start, bounce);
          if (bounce !== buf) bounce.copy(buf, 0, offset - start, offset - start + buf.length);
          // Status again under the lock: a write may have landed meanwhile.
          for (const r of copyRuns(await f.blockStatus(start, end - start), limit)) {
            if (r.copy) await writeCopy(f, r.offset, bounce.subarray(r.offset - start, r.offset - start + r.length));
          }
        } finally {
          release();
        }
      },
      async write(offset, buf, flags) {
        const release = await lock.acquire(offset, offset + buf.length);
        try { await child().write(offset, buf, flags); } finally { release(); }
      },
      async writeZeroes(offset, length, flags) {
        const release = await lock.acquire(offset, offset + length);
        try { await child().writeZeroes(offset, length, flags); } finally { release(); }
      },
      async discard(offset, length) {
        const release = await lock.acquire(offset, offset + length);
        try { await child().discard(offset, length); } finally { release(); }
      },
      limits: { canFua: file.limits.canFua },
      filename: () => child().fileName(),
    };
  },
};
