/**
 * preallocate (QEMU's block/preallocate.c): a filter that, when its file has
 * to grow, grows it by `prealloc-size` more (rounded up to `prealloc-align`)
 * and allocates that space at once (write-zeroes without fallback:
 * fallocate), so a growing image's file is extended in few, large,
 * allocated steps; the excess is cut off again when the filter closes or
 * loses its write and resize permissions. Its size is the end of the data
 * (QEMU's data_end), not the file's.
 *
 * It works only while its users hold both write and resize on it (a
 * writable format above it), and then shares neither on its file; otherwise
 * it passes everything through and keeps no state (QEMU's
 * has_prealloc_perms). QEMU's formats grow their file by writing past its
 * end, which the filter turns into preallocation; blockd's formats grow it
 * by truncating it first (the block layer refuses requests past the end),
 * so here a truncate that grows the node past its data end is what
 * preallocates, and a smaller one passes down (dropping nothing).
 */
import { BlockError } from '../../util/errors.ts';
import { obj, opt, req } from '../../qapi/types.ts';
import { BlockdevRef } from '../options.ts';
import { ReqFlag } from '../request.ts';
import type { BlockNode } from '../node.ts';
import type { Driver, DriverOps } from '../driver.ts';

const MiB = 1024 * 1024;
const SECTOR = 512;

interface PreallocOpts { align: number; size: number }

/** QEMU's preallocate_absorb_opts: defaults 1 MiB and 128 MiB; the alignment in sectors and the file's request alignment. */
function preallocOpts(options: Record<string, unknown>, file?: BlockNode): PreallocOpts {
  const align = (options['prealloc-align'] as number | undefined) ?? MiB;
  const size = (options['prealloc-size'] as number | undefined) ?? 128 * MiB;
  if (align % SECTOR !== 0) throw new BlockError('EINVAL', `prealloc-align parameter of preallocate filter is not aligned to ${SECTOR}`);
  if (file && align % file.limits.alignment !== 0) {
    throw new BlockError('EINVAL', `prealloc-align parameter of preallocate filter is not aligned to underlying node request alignment (${file.limits.alignment})`);
  }
  return { align, size };
}

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

export const preallocateDriver: Driver = {
  name: 'preallocate',
  kind: 'filter',
  options: obj('BlockdevOptionsPreallocate', [
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
    opt('prealloc-align', 'int', 'on preallocation, align file length to this number, default 1M'),
    opt('prealloc-size', 'int', 'how much to preallocate, default 128M'),
  ]),
  // It resizes its file; what it shares follows its users (nothing but reads under a format).
  childPerm: (_role, readOnly) => ({
    perm: { read: true, write: !readOnly, resize: !readOnly },
    shared: { read: true, write: true, resize: true },
    passThrough: true,
  }),
  // QEMU's filters without a refresh_filename hook have no filename of their own: json:{...}.
  exactFilename: () => undefined,
  async open(options, ctx): Promise<DriverOps> {
    // QEMU checks the options before the permissions of the new child edge.
    preallocOpts(options);
    const file = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    let opts = preallocOpts(options, file);
    // QEMU's data_end and file_end; -1 while the filter does not own the file (no state).
    let dataEnd = -1;
    let fileEnd = -1;
    // The cut of the excess when the permissions went away, awaited by close.
    let dropping: Promise<void> = Promise.resolve();
    const drop = async () => {
      if (dataEnd < 0) return;
      const end = dataEnd;
      dataEnd = fileEnd = -1;
      if (file.length() > end) await file.truncate(end);
    };
    const grow = async (size: number) => {
      if (size <= fileEnd) { dataEnd = size; return; }
      const start = alignUp(fileEnd, file.limits.alignment);
      const end = alignUp(size + opts.size, Math.max(opts.align, file.limits.alignment));
      await file.truncate(end);
      try {
        // Allocates the new space (fallocate); without a way to do it fast the file is just longer.
        await file.writeZeroes(start, end - start, ReqFlag.NO_FALLBACK);
      } catch {
        // As QEMU after a failed preallocation: go on without it.
      }
      fileEnd = end;
      dataEnd = size;
    };
    return {
      length: () => (dataEnd >= 0 ? dataEnd : file.length()),
      async truncate(size) {
        if (dataEnd >= 0 && size > dataEnd) return grow(size);
        await file.truncate(size);
        if (dataEnd >= 0) dataEnd = fileEnd = size;
      },
      setPermissions(users) {
        const owns = users !== undefined && users.perm.write && users.perm.resize;
        if (owns && dataEnd < 0) dataEnd = fileEnd = file.length();
        else if (!owns && dataEnd >= 0) dropping = dropping.then(drop).catch((e) => ctx.log.warn({ err: e }, 'Failed to drop preallocation'));
      },
      async prepareReopen(next) {
        const n = preallocOpts(next, file);
        return { commit() { opts = n; }, abort() {} };
      },
      async close() {
        await dropping;
        await drop().catch(() => undefined);
      },
      limits: { canFua: file.limits.canFua, canZero: file.limits.canZero, canTrim: file.limits.canTrim },
    };
  },
};
