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
import type { BlockNode } from '../node.ts';
import type { Extent } from '../request.ts';

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
    const child = () => file;
    return {
      async read(offset, buf) {
        const f = child();
        const limit = chainDepth(f, bottom);
        const ext = await f.blockStatus(offset, buf.length);
        if (!ext.some((e) => needsCopy(e, limit)) || f.readOnly) return f.read(offset, buf);
        const release = await lock.acquire(offset, offset + buf.length);
        try {
          await f.read(offset, buf);
          // Status again under the lock: a write may have landed meanwhile.
          for (const e of await f.blockStatus(offset, buf.length)) {
            if (needsCopy(e, limit)) await f.write(e.offset, buf.subarray(e.offset - offset, e.offset - offset + e.length));
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
      filename: () => file.ops.filename?.() ?? file.nodeName,
    };
  },
};
