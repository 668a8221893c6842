/**
 * driver=rbd: a protocol node backed by a Ceph RBD image (QEMU's
 * block/rbd.c), through librbd in the native addon (native/src/rbd.c, built
 * where librbd's headers are). Connecting, opening, resizing and block
 * status run in the thread pool; reads, writes, flushes, discards and
 * write-zeroes are librbd aio requests whose completions come back to the
 * event loop. With encrypt, the addon loads librbd's LUKS1/LUKS2 encryption
 * (rbd_encryption_load) right after rbd_open, as QEMU does; the size is then
 * the one seen through it. Files: options.ts (BlockdevOptionsRbd, mon_host,
 * key, the encryption options, texts).
 */
import { BlockError } from '../../../util/errors.ts';
import { native } from '../../../platform/native.ts';
import type { RbdAddon, RbdHandle } from '../../../platform/native.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import { BlockdevOptionsRbd, RBD_STRONG_OPTIONS, connectOptions, rbdErrorText } from './options.ts';

const enum Aio { READ = 0, WRITE = 1, FLUSH = 2, DISCARD = 3, WRITE_ZEROES = 4 }

/** block/rbd.c's rbd_luks_header_verification and rbd_luks2_header_verification. */
const LUKS_MAGIC: Record<string, string> = { '4c554b53babe0001': 'luks', '4c554b53babe0002': 'luks2' };
const VERIFY_LEN = 8;
const enum Op { CLOSE = 1, RESIZE = 2, STATUS = 4 }

/** The addon's librbd functions, or why there are none. */
export function rbdAddon(): RbdAddon {
  const a = native() as Partial<RbdAddon>;
  if (typeof a.rbdOpen !== 'function') {
    throw new BlockError('ENOTSUP', "blockd was built without librbd: install Debian's librbd-dev (apt-get install librbd-dev) and run `npm run install` to rebuild the native addon");
  }
  return a as RbdAddon;
}

const asEio = (e: unknown): BlockError => {
  const err = e as { errno?: number; message?: string };
  const code = err.errno === 28 ? 'ENOSPC' : err.errno === 22 ? 'EINVAL' : err.errno === 1 || err.errno === 13 || err.errno === 30 ? 'EPERM' : 'EIO';
  return new BlockError(code, err.message ?? String(e));
};

export const rbdDriver: Driver = {
  name: 'rbd',
  kind: 'protocol',
  options: BlockdevOptionsRbd,
  strongOptions: RBD_STRONG_OPTIONS,
  async open(o, ctx): Promise<DriverOps> {
    const rbd = rbdAddon();
    const c = connectOptions(o, ctx.objects, !ctx.options.cache?.direct);
    let opened: { handle: RbdHandle; size: number; objectSize: number };
    try {
      opened = await rbd.rbdOpen({ ...c });
    } catch (e) {
      throw new BlockError('EIO', rbdErrorText(e as Error & { stage?: string; reason?: string }, c));
    }
    const h = opened.handle;
    let size = opened.size;
    let writable = !ctx.readOnly;
    if (c.snapshot !== undefined && writable) {
      // QEMU's bdrv_apply_auto_read_only(bs, "rbd snapshots are read-only").
      if (!ctx.options['auto-read-only']) {
        await rbd.rbdHandleOp(h, Op.CLOSE);
        throw new BlockError('EPERM', 'rbd snapshots are read-only');
      }
      writable = false;
    }
    const aio = (op: Aio, offset: number, arg?: Buffer | number) => rbd.rbdAio(h, op, offset, arg).then(() => undefined, (e) => { throw asEio(e); });
    const resize = async (n: number) => { size = await rbd.rbdHandleOp(h, Op.RESIZE, n) as number; if (size < VERIFY_LEN) encryptionFormat = undefined; };
    // QEMU's get_specific_info reads the image's first 8 bytes for the LUKS
    // magic at each query; queries here are synchronous, so they are read at
    // open and again after each request of this node that touches them.
    let encryptionFormat: string | undefined;
    const readHead = async () => {
      const head = Buffer.alloc(VERIFY_LEN);
      if (size >= VERIFY_LEN) await rbd.rbdAio(h, Aio.READ, 0, head).catch(() => undefined);
      encryptionFormat = LUKS_MAGIC[head.toString('hex')];
    };
    const touchesHead = async (offset: number) => { if (offset < VERIFY_LEN) await readHead(); };
    await readHead();
    return {
      length: () => size,
      openedReadOnly: !ctx.readOnly && !writable,
      limits: { canFua: false, canZero: true, canTrim: true },
      read: (offset, buf) => aio(Aio.READ, offset, buf).then(() => undefined),
      async write(offset, buf) {
        // As QEMU: a write past the end grows the image first.
        if (offset + buf.length > size) await resize(offset + buf.length);
        await aio(Aio.WRITE, offset, buf);
        await touchesHead(offset);
      },
      async writeZeroes(offset, length) {
        if (offset + length > size) await resize(offset + length);
        await aio(Aio.WRITE_ZEROES, offset, length);
        await touchesHead(offset);
      },
      async discard(offset, length) {
        await aio(Aio.DISCARD, offset, length);
        await touchesHead(offset);
      },
      flush: () => aio(Aio.FLUSH, 0),
      async blockStatus(offset, length) {
        const [zero, n] = await rbd.rbdHandleOp(h, Op.STATUS, offset, length) as [number, number];
        const len = Math.max(1, Math.min(n, length));
        return [{ offset, length: len, data: zero === 0, zero: zero === 1, allocated: true, depth: 1 }];
      },
      truncate: (n) => resize(n).catch((e) => { throw new BlockError('EIO', `Failed to resize file: ${(e as { reason?: string }).reason ?? (e as Error).message}`); }),
      info: () => ({ 'cluster-size': opened.objectSize,
        'format-specific': { type: 'rbd', data: encryptionFormat === undefined ? {} : { 'encryption-format': encryptionFormat } } }),
      async close() { await rbd.rbdHandleOp(h, Op.CLOSE); },
    };
  },
};
