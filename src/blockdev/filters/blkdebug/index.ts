/**
 * blkdebug: a filter for fault tests (QEMU's block/blkdebug.c). Requests
 * pass to its 'image' child unless an active inject-error rule covers them;
 * rules become active when the node hears their event (events.ts says who
 * raises what), set-state rules move the node between states. It also
 * imposes limits: `align` and `max-transfer` through BlockNode (which then
 * does read-modify-write and splits), and write-zeroes and discard are cut
 * here at `opt-*` boundaries and `max-*` sizes as QEMU's block layer cuts
 * them; a write-zeroes piece shorter than the zero alignment is refused by
 * QEMU's blkdebug and falls back to writing zeroes, which this driver does
 * itself (through its own write path, so write rules apply to it as in QEMU).
 */
import { BlockError } from '../../../util/errors.ts';
import { ReqFlag } from '../../request.ts';
import { followEdge } from '../follow-edge.ts';
import type { Driver, DriverOps, Perm } from '../../driver.ts';
import type { BlkdebugIoType } from '../../debug-events.ts';
import { BlockdevOptionsBlkdebug } from './options.ts';
import { ERRNO_CODES, loadRules } from './load-rules.ts';
import { checkLimits } from './limits.ts';
import { cutRequest } from './split.ts';

const STRERROR: Record<string, string> = {
  EPERM: 'Operation not permitted', ENOENT: 'No such file or directory', EIO: 'Input/output error', ENOMEM: 'Cannot allocate memory',
  EBUSY: 'Device or resource busy', EINVAL: 'Invalid argument', ENOSPC: 'No space left on device',
  EOVERFLOW: 'Value too large for defined data type', ENOTSUP: 'Operation not supported', ESHUTDOWN: 'Cannot send after transport endpoint shutdown',
};

/** take-child-perms / unshare-child-perms as blockd's Perm bits; write-unchanged has no blockd counterpart. */
function perms(list: unknown, what: string): Partial<Perm> {
  const out: Partial<Perm> = {};
  for (const p of (list as string[] | undefined) ?? []) {
    if (p === 'consistent-read') out.read = true;
    else if (p === 'write') out.write = true;
    else if (p === 'resize') out.resize = true;
    else throw new BlockError('ENOTSUP', `blkdebug: blockd has no '${p}' permission to put in ${what} (it knows consistent-read, write, resize)`);
  }
  return out;
}

export const blkdebugDriver: Driver = {
  name: 'blkdebug',
  kind: 'filter',
  options: BlockdevOptionsBlkdebug,
  // bdrv_get_info asks the image (dirty-flag); as a protocol driver without an allocated size, none is shown.
  getInfo: 'file',
  noAllocatedSize: true,
  // "blkdebug:CONFIG:FILE" while no option but config is set (blkdebug_refresh_filename).
  exactFilename: (options, below) =>
    blkdebugDriver.strongOptions!.some((k) => k !== 'config' && options[k] !== undefined) ? undefined : `blkdebug:${(options.config as string | undefined) ?? ''}:${below}`,
  strongOptions: ['config', 'inject-error', 'set-state', 'align', 'max-transfer', 'opt-write-zero', 'max-write-zero', 'opt-discard', 'max-discard'],
  async open(options, ctx): Promise<DriverOps> {
    const rules = loadRules(options);
    const take = perms(options['take-child-perms'], 'take-child-perms');
    const unshare = perms(options['unshare-child-perms'], 'unshare-child-perms');
    const writes = !ctx.readOnly;
    const image = await ctx.openChild('image', options.image as string | Record<string, unknown>, {
      perm: { read: true, write: writes || !!take.write, resize: !!take.resize },
      shared: { read: !unshare.read, write: !unshare.write, resize: !unshare.resize },
    });
    const lim = checkLimits(options, image.limits.alignment);
    // Requests go to whatever the edge points at now (graph surgery may move it).
    const child = followEdge(ctx, image, 'image');

    /** QEMU's rule_check: the injected error as a rejected promise, after one turn of the loop unless `immediately`. */
    const check = (offset: number, bytes: number, io: BlkdebugIoType): Promise<void> | undefined => {
      const hit = rules.check(offset, bytes, io);
      if (!hit) return undefined;
      const code = ERRNO_CODES[hit.errno];
      const err = new BlockError(code, STRERROR[code]);
      return hit.immediately ? Promise.reject(err) : new Promise((_, reject) => setImmediate(() => reject(err)));
    };
    // QEMU's write_gen and flushed_gen: a flush reaches blkdebug (and its flush rules) only
    // if the node was written (successfully or not) since the last successful flush.
    let writeGen = 0;
    let flushedGen = 0;
    const written = <T>(p: Promise<T>): Promise<T> => p.finally(() => { writeGen++; });
    const write = (o: number, buf: Buffer, flags: number) => written(check(o, buf.length, 'write') ?? child().write(o, buf, flags));
    const zeroAlign = Math.max(lim.align, lim.optWriteZero);

    const ops: DriverOps = {
      read: (o, buf) => check(o, buf.length, 'read') ?? child().read(o, buf),
      write,
      async writeZeroes(offset, length, flags) {
        for (const [o, l] of cutRequest(offset, length, zeroAlign, lim.maxWriteZero)) {
          if (l < zeroAlign) {
            // QEMU's blkdebug refuses it (ENOTSUP) and the block layer writes zeroes instead.
            if (flags & ReqFlag.NO_FALLBACK) throw new BlockError('ENOTSUP', 'Operation not supported');
            await write(o, Buffer.alloc(l), flags & ReqFlag.FUA);
          } else {
            await written(check(o, l, 'write-zeroes') ?? child().writeZeroes(o, l, flags));
          }
        }
      },
      async discard(offset, length) {
        for (const [o, l] of cutRequest(offset, length, Math.max(lim.align, lim.optDiscard), lim.maxDiscard)) {
          await written(check(o, l, 'discard') ?? child().discard(o, l));
        }
      },
      // BlockNode flushes the image afterwards (it flushes a node's written children).
      async flush() {
        const gen = writeGen;
        if (gen === flushedGen) return;
        await check(0, 0, 'flush');
        flushedGen = gen;
      },
      async blockStatus(offset, length, flags) {
        await check(offset, length, 'block-status');
        return child().blockStatus(offset, length, flags);
      },
      debugEvent: (event) => rules.event(event),
      limits: {
        canFua: image.limits.canFua, canZero: image.limits.canZero, canTrim: image.limits.canTrim,
        ...(lim.align ? { alignment: lim.align } : {}),
        ...(lim.maxTransfer ? { maxTransfer: lim.maxTransfer } : {}),
      },
    };
    rules.event('none');
    return ops;
  },
};
