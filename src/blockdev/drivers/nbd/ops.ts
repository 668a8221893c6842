/**
 * The block layer's operations as NBD commands, with what the server
 * advertised (transmission flags, block sizes, the meta context) deciding
 * the node's limits, as QEMU's nbd_refresh_limits and
 * nbd_handle_updated_info do.
 */
import { BlockError } from '../../../util/errors.ts';
import { ReqFlag, type Extent } from '../../request.ts';
import type { DriverOps } from '../../driver.ts';
import { Cmd, CmdFlag, MAX_PAYLOAD, TxFlag } from './protocol.ts';
import type { NbdTransport } from './pool.ts';

const roundDown = (n: number, a: number) => n - (n % a);

export function nbdOps(client: NbdTransport, writable: boolean): DriverOps {
  const info = client.info;
  const f = info.flags;
  // No advertised minimum: byte granularity when the size or block status needs it, else sectors (QEMU's rule).
  const alignment = info.minBlock || (info.size % 512 !== 0 || info.contextId !== undefined ? 1 : 512);
  const maxTransfer = roundDown(Math.min(MAX_PAYLOAD, info.maxBlock || MAX_PAYLOAD), alignment);
  // Extended headers carry 64-bit effect lengths: TRIM, WRITE_ZEROES and BLOCK_STATUS go out whole (QEMU 8.2+).
  const wide = roundDown(Number.MAX_SAFE_INTEGER, alignment);
  const maxStatus = info.extended ? wide : roundDown(0x7fffffff, alignment);
  const maxZeroes = info.extended ? wide : maxTransfer;
  const canFua = (f & TxFlag.SEND_FUA) !== 0;
  const canZero = writable && (f & TxFlag.SEND_WRITE_ZEROES) !== 0;
  const canTrim = writable && (f & TxFlag.SEND_TRIM) !== 0;
  const fua = (flags: number) => (flags & ReqFlag.FUA && canFua ? CmdFlag.FUA : 0);
  const readOnly = () => new BlockError('EPERM', 'Operation not permitted');

  /** One command per at most `max` bytes, all in flight together. */
  const split = async (offset: number, length: number, max: number, one: (o: number, l: number) => Promise<void>) => {
    const parts: Promise<void>[] = [];
    for (let done = 0; done < length; done += max) parts.push(one(offset + done, Math.min(max, length - done)));
    await Promise.all(parts);
  };

  const ops: DriverOps = {
    length: () => info.size,
    limits: { alignment, maxTransfer, canFua, canZero, canTrim },
    read: (offset, buf) => client.submit({ type: Cmd.READ, flags: 0, offset, length: buf.length, buf }),
    write: (offset, buf, flags) => {
      if (!writable) return Promise.reject(readOnly());
      return client.submit({ type: Cmd.WRITE, flags: fua(flags), offset, length: buf.length, data: buf });
    },
    // Without SEND_FLUSH the server has nothing to flush (QEMU's nbd_co_flush succeeds at once).
    flush: () => (f & TxFlag.SEND_FLUSH ? client.submit({ type: Cmd.FLUSH, flags: 0, offset: 0, length: 0 }) : Promise.resolve()),
    async truncate(size) {
      if (size !== info.size) throw new BlockError('ENOTSUP', size < info.size ? 'Cannot resize NBD nodes' : 'Cannot grow NBD nodes');
    },
  };
  if (canZero) {
    ops.writeZeroes = (offset, length, flags) => {
      let cmdFlags = fua(flags) | (flags & ReqFlag.MAY_UNMAP ? 0 : CmdFlag.NO_HOLE);
      if (flags & ReqFlag.NO_FALLBACK) {
        if (!(f & TxFlag.SEND_FAST_ZERO)) return Promise.reject(new BlockError('ENOTSUP', 'Operation not supported'));
        cmdFlags |= CmdFlag.FAST_ZERO;
      }
      return split(offset, length, maxZeroes, (o, l) => client.submit({ type: Cmd.WRITE_ZEROES, flags: cmdFlags, offset: o, length: l }));
    };
  }
  if (canTrim) {
    ops.discard = (offset, length) => split(offset, length, maxStatus, (o, l) => client.submit({ type: Cmd.TRIM, flags: 0, offset: o, length: l }));
  }
  if (info.contextId !== undefined) {
    const contextId = info.contextId;
    ops.blockStatus = async (offset, length, flags): Promise<Extent[]> => {
      const len = Math.min(length, maxStatus);
      const extents = await client.status({ type: Cmd.BLOCK_STATUS, flags: flags & ReqFlag.REQ_ONE ? CmdFlag.REQ_ONE : 0, offset, length: len, contextId });
      if (!extents || extents.length === 0) throw new BlockError('EIO', 'server did not return block status for the negotiated context');
      return extents;
    };
  }
  ops.close = () => client.close();
  return ops;
}
