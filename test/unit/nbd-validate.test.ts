/** validateRequest(): the errno of every malformed or out-of-range request, as qsd 7.2 answers (and the spec's, opt-in). */
import { describe, it, expect } from 'vitest';
import { validateRequest, checkRequest, type ValidationContext } from '../../src/nbd/validate.ts';
import { Cmd, CmdFlag, NbdErrno } from '../../src/nbd-protocol/constants.ts';
import type { RequestHeader } from '../../src/nbd-protocol/requests.ts';

const SIZE = 64 << 20;
const MB32 = 32 << 20;
const rw: ValidationContext = { size: SIZE, readOnly: false, structured: true, metaContexts: 1 };
const ro: ValidationContext = { ...rw, readOnly: true };
const simple: ValidationContext = { ...rw, structured: false, metaContexts: 0 };
const noMeta: ValidationContext = { ...rw, metaContexts: 0 };

const req = (type: number, offset: number, length: number, flags = 0): RequestHeader => ({ type, offset, length, flags, cookieHi: 0, cookieLo: 1 });
const { EINVAL, EPERM, ENOSPC } = NbdErrno;

// [name, request, context, errno by default (qsd's, but EPERM for read-only), errno with specErrnos]
const TABLE: [string, RequestHeader, ValidationContext, number, number][] = [
  ['read', req(Cmd.READ, 0, 4096), rw, 0, 0],
  ['read of the last byte', req(Cmd.READ, SIZE - 1, 1), rw, 0, 0],
  ['zero-length read at the end', req(Cmd.READ, SIZE, 0), rw, 0, 0],
  ['zero-length read past the end', req(Cmd.READ, SIZE + 1, 0), rw, EINVAL, EINVAL],
  ['read past the end', req(Cmd.READ, SIZE - 256, 512), rw, EINVAL, EINVAL],
  ['read at 2^64-1', req(Cmd.READ, 2 ** 64 - 1, 1), rw, EINVAL, EINVAL],
  ['read of 32 MiB', req(Cmd.READ, 0, MB32), rw, 0, 0],
  ['read over 32 MiB', req(Cmd.READ, 0, MB32 + 1), rw, EINVAL, EINVAL],
  ['read with FUA (qsd flushes first)', req(Cmd.READ, 0, 1, CmdFlag.FUA), rw, 0, 0],
  ['read with DF, structured', req(Cmd.READ, 0, 1, CmdFlag.DF), rw, 0, 0],
  ['read with DF, simple replies', req(Cmd.READ, 0, 1, CmdFlag.DF), simple, EINVAL, EINVAL],
  ['read with REQ_ONE', req(Cmd.READ, 0, 1, CmdFlag.REQ_ONE), rw, EINVAL, EINVAL],
  ['read with an unknown flag', req(Cmd.READ, 0, 1, 0x8000), rw, EINVAL, EINVAL],
  ['read on a read-only export', req(Cmd.READ, 0, 1), ro, 0, 0],
  ['write', req(Cmd.WRITE, 0, 4096, CmdFlag.FUA), rw, 0, 0],
  ['zero-length write', req(Cmd.WRITE, 0, 0), rw, 0, 0],
  ['write past the end', req(Cmd.WRITE, SIZE - 256, 512), rw, EINVAL, ENOSPC],
  ['write over 32 MiB', req(Cmd.WRITE, 0, MB32 + 1), rw, EINVAL, EINVAL],
  ['write with DF', req(Cmd.WRITE, 0, 1, CmdFlag.DF), rw, EINVAL, EINVAL],
  ['write with NO_HOLE', req(Cmd.WRITE, 0, 1, CmdFlag.NO_HOLE), rw, EINVAL, EINVAL],
  ['write on a read-only export', req(Cmd.WRITE, 0, 512), ro, EPERM, EPERM],
  ['write past the end of a read-only export', req(Cmd.WRITE, SIZE, 512), ro, EPERM, EPERM],
  ['trim', req(Cmd.TRIM, 0, SIZE, CmdFlag.FUA), rw, 0, 0],
  ['zero-length trim', req(Cmd.TRIM, 0, 0), rw, 0, 0],
  ['trim past the end', req(Cmd.TRIM, SIZE - 256, 512), rw, EINVAL, EINVAL],
  ['trim on a read-only export', req(Cmd.TRIM, 0, 512), ro, EPERM, EPERM],
  ['write-zeroes larger than 32 MiB', req(Cmd.WRITE_ZEROES, 0, SIZE), rw, 0, 0],
  ['write-zeroes NO_HOLE|FAST_ZERO|FUA', req(Cmd.WRITE_ZEROES, 0, 1, CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO | CmdFlag.FUA), rw, 0, 0],
  ['write-zeroes with DF', req(Cmd.WRITE_ZEROES, 0, 1, CmdFlag.DF), rw, EINVAL, EINVAL],
  ['write-zeroes past the end', req(Cmd.WRITE_ZEROES, SIZE, 1), rw, EINVAL, ENOSPC],
  ['write-zeroes on a read-only export', req(Cmd.WRITE_ZEROES, 0, 1), ro, EPERM, EPERM],
  ['flush', req(Cmd.FLUSH, 0, 0), rw, 0, 0],
  ['flush with FUA', req(Cmd.FLUSH, 0, 0, CmdFlag.FUA), rw, 0, 0],
  ['flush on a read-only export', req(Cmd.FLUSH, 0, 0), ro, 0, 0],
  ['flush with NO_HOLE', req(Cmd.FLUSH, 0, 0, CmdFlag.NO_HOLE), rw, EINVAL, EINVAL],
  ['cache', req(Cmd.CACHE, 0, 4096), rw, 0, 0],
  ['cache past the end', req(Cmd.CACHE, SIZE, 4096), rw, EINVAL, EINVAL],
  ['cache over 32 MiB', req(Cmd.CACHE, 0, MB32 + 1), rw, EINVAL, EINVAL],
  ['block status', req(Cmd.BLOCK_STATUS, 0, SIZE), rw, 0, 0],
  ['block status REQ_ONE', req(Cmd.BLOCK_STATUS, 0, SIZE, CmdFlag.REQ_ONE), rw, 0, 0],
  ['block status of zero length', req(Cmd.BLOCK_STATUS, 0, 0), rw, EINVAL, EINVAL],
  ['block status past the end', req(Cmd.BLOCK_STATUS, 4096, SIZE), rw, EINVAL, EINVAL],
  ['block status without a context', req(Cmd.BLOCK_STATUS, 0, 4096), noMeta, EINVAL, EINVAL],
  ['block status with DF', req(Cmd.BLOCK_STATUS, 0, 4096, CmdFlag.DF), rw, EINVAL, EINVAL],
  ['block status on a read-only export', req(Cmd.BLOCK_STATUS, 0, 4096), ro, 0, 0],
  ['unknown command', req(99, 0, 0), rw, EINVAL, EINVAL],
  ['NBD_CMD_RESIZE (not offered)', req(Cmd.RESIZE, 0, 0), rw, EINVAL, EINVAL],
  ['disconnect, whatever its fields', req(Cmd.DISC, 2 ** 64 - 1, 0xffffffff, 0xffff), ro, 0, 0],
];

describe('validateRequest', () => {
  for (const [name, r, ctx, qsd, spec] of TABLE) {
    it(`${name}: ${qsd === 0 ? 'accepted' : `errno ${qsd}`}${spec !== qsd ? ` (spec: ${spec})` : ''}`, () => {
      expect(validateRequest(r, ctx)).toBe(qsd);
      expect(validateRequest(r, { ...ctx, specErrnos: true })).toBe(spec);
    });
  }

  it('explains each rejection with qsd-style text', () => {
    expect(checkRequest(req(Cmd.READ, SIZE - 256, 512), rw)?.reason).toBe(`operation past EOF; From: ${SIZE - 256}, Len: 512, Size: ${SIZE}`);
    expect(checkRequest(req(Cmd.READ, 0, MB32 + 1), rw)?.reason).toBe(`len (${MB32 + 1}) is larger than max len (${MB32})`);
    expect(checkRequest(req(Cmd.READ, 0, 1, 0x80), rw)?.reason).toBe('unsupported flags for command read (got 0x80)');
    expect(checkRequest(req(Cmd.WRITE, 0, 1), ro)?.reason).toBe('Export is read-only');
    expect(checkRequest(req(Cmd.BLOCK_STATUS, 0, 0), rw)?.reason).toBe('need non-zero length');
    expect(checkRequest(req(Cmd.BLOCK_STATUS, 0, 1), noMeta)?.reason).toBe('CMD_BLOCK_STATUS not negotiated');
    expect(checkRequest(req(42, 0, 0), rw)?.reason).toBe('invalid request type (42) received');
  });

  it('is pure: the same input gives the same answer, the context is not touched', () => {
    const ctx = Object.freeze({ ...rw });
    const r = Object.freeze(req(Cmd.WRITE, SIZE, 1));
    expect(validateRequest(r, ctx)).toBe(validateRequest(r, ctx));
  });
});
