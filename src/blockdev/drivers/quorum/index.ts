/**
 * quorum (QEMU's block/quorum.c): a node over N children holding the same
 * data. Writes go to every child and succeed when at least vote-threshold
 * of them do; reads (read-pattern=quorum) go to every child, and the
 * contents most children agree on win if at least vote-threshold agree,
 * the others being reported (QUORUM_REPORT_BAD) and, with
 * rewrite-corrupted, overwritten with the winner; too few agreeing or
 * succeeding children fail the request (QUORUM_FAILURE). read-pattern=fifo
 * reads the first child, then the next while they fail. blkverify (two
 * children, threshold 2) compares the two reads and stops the daemon at
 * the first difference, as QEMU does. x-blockdev-change adds children
 * (named children.N, N counting up) and removes them while more than
 * vote-threshold remain.
 */
import { BlockError } from '../../../util/errors.ts';
import { ReqFlag, type Extent } from '../../request.ts';
import type { BlockNode } from '../../node.ts';
import type { ChildEdge } from '../../edge.ts';
import type { ChildRef, ChildRole, Driver, DriverContext, DriverOps } from '../../driver.ts';
import { BlockdevOptionsQuorum, quorumSettings, type QuorumSettings } from './options.ts';
import { errorCode, reportBad, reportFailure } from './events.ts';
import { voteError, voteRead } from './vote.ts';

/** A child by its edge, whose child node follows graph surgery (a mirror's replaces swaps it in place). */
class Child {
  constructor(readonly role: string, private readonly edge: ChildEdge) {}
  get node(): BlockNode { return this.edge.child; }
}

const ROLE = /^children\.(\d+)$/;

/** QEMU's quorum_getlength: every child must have the same size. */
function commonLength(children: readonly Child[]): number {
  const len = children[0]!.node.length();
  for (const c of children.slice(1)) if (c.node.length() !== len) throw new BlockError('EIO', 'Input/output error');
  return len;
}

/** blkverify's comparison (qemu_iovec_compare): a difference ends the process with QEMU's message. */
function blkverifyCompare(offset: number, bytes: number): (a: Buffer, b: Buffer) => boolean {
  return (a, b) => {
    for (let i = 0; i < a.length; i++) {
      if (a[i] !== b[i]) {
        process.stderr.write(`quorum: offset=${offset} bytes=${bytes} contents mismatch at offset ${offset + i}\n`);
        process.exit(1);
      }
    }
    return true;
  };
}

const sameContents = (a: Buffer, b: Buffer) => a.equals(b);

export const quorumDriver: Driver = {
  name: 'quorum',
  kind: 'format',
  options: BlockdevOptionsQuorum,
  strongOptions: ['vote-threshold', 'blkverify', 'rewrite-corrupted', 'read-pattern'],
  childList: 'children',
  // quorum_child_perm: its children may not be written or resized by anyone else (they would differ).
  childPerm: (_role, readOnly) => ({
    perm: { read: true, write: !readOnly, resize: false },
    shared: { read: true, write: false, resize: false },
  }),
  async open(options, ctx): Promise<DriverOps> {
    const refs = options.children as ChildRef[];
    const reopened = ctx.currentChildren.filter((r) => ROLE.test(r));
    const roles = reopened.length > 0 ? reopened : refs.map((_, i) => `children.${i}`);
    const settings = quorumSettings(options, roles.length);
    const children: Child[] = [];
    for (const [i, role] of roles.entries()) {
      // rewrite-corrupted writes its children even when the node is read-only (quorum_child_perm);
      // otherwise a read-only child is refused only once a user above wants to write (setPermissions).
      const write = !ctx.readOnly || settings.rewrite;
      const node = await ctx.openChild(role as ChildRole, reopened.length > 0 ? role : refs[i]!, { perm: { write } });
      if (settings.rewrite && node.readOnly) throw new BlockError('EPERM', 'Block node is read-only');
      children.push(new Child(role, ctx.childEdge(role)!));
    }
    try {
      commonLength(children);
    } catch {
      throw new BlockError('EIO', 'Could not refresh total sector count: Input/output error');
    }
    const next = Math.max(...roles.map((r) => Number(ROLE.exec(r)![1]))) + 1;
    return quorumOps(ctx, settings, children, next);
  },
};

function quorumOps(ctx: DriverContext, s: QuorumSettings, children: Child[], nextIndex: number): DriverOps {
  const events = ctx.events;
  // Whether a user above writes: QEMU's quorum then needs write on every child, which a read-only one refuses.
  let usersWrite = false;
  const readOnlyRefusal = () => new BlockError('EPERM', 'Block node is read-only');

  /** Every child's part of a write-type request; a failed child is reported, too few successes fail it. */
  async function writeAll(offset: number, bytes: number, op: (c: BlockNode) => Promise<void>): Promise<void> {
    const errors = await Promise.all(children.map(async (c) => {
      try {
        await op(c.node);
        return undefined;
      } catch (e) {
        reportBad(events, 'write', offset, bytes, c.node.nodeName, e);
        return e;
      }
    }));
    if (errors.filter((e) => e === undefined).length >= s.threshold) return;
    const e = voteError(errors, errorCode);
    reportFailure(events, ctx.nodeName, offset, bytes);
    throw e;
  }

  async function readQuorum(offset: number, buf: Buffer): Promise<void> {
    const results = await Promise.all(children.map(async (c) => {
      const b = Buffer.allocUnsafe(buf.length);
      try {
        await c.node.read(offset, b);
        return { data: b as Buffer | undefined, error: undefined as unknown };
      } catch (e) {
        reportBad(events, 'read', offset, buf.length, c.node.nodeName, e);
        return { data: undefined, error: e };
      }
    }));
    const verdict = voteRead(results.map((r) => r.data), s.threshold, s.blkverify ? blkverifyCompare(offset, buf.length) : sameContents);
    if (verdict.kind === 'too-few-reads') {
      const e = voteError(results.map((r) => r.error), errorCode);
      reportFailure(events, ctx.nodeName, offset, buf.length);
      throw e;
    }
    if (verdict.kind === 'no-quorum') {
      reportFailure(events, ctx.nodeName, offset, buf.length);
      throw new BlockError('EIO', `Quorum '${ctx.nodeName}': no version of [${offset}, +${buf.length}) reaches vote-threshold ${s.threshold}`);
    }
    results[verdict.index]!.data!.copy(buf);
    if (verdict.kind === 'agree') return;
    const losers = verdict.losers.map((i) => children[i]!.node);
    for (const n of losers) reportBad(events, 'read', offset, buf.length, n.nodeName);
    // A correction attempt: its errors are ignored, as QEMU's (quorum_rewrite_entry).
    if (s.rewrite) await Promise.all(losers.map((n) => n.write(offset, buf).catch(() => undefined)));
  }

  async function readFifo(offset: number, buf: Buffer): Promise<void> {
    for (let i = 0; ; i++) {
      const c = children[i]!;
      try {
        await c.node.read(offset, buf);
        return;
      } catch (e) {
        reportBad(events, 'read', offset, buf.length, c.node.nodeName, e);
        if (i + 1 >= children.length) throw e;
      }
    }
  }

  return {
    length: () => commonLength(children),
    read: (offset, buf) => (s.fifo ? readFifo(offset, buf) : readQuorum(offset, buf)),
    write: (offset, buf, flags) => writeAll(offset, buf.length, (c) => c.write(offset, buf, flags)),
    writeZeroes(offset, length, flags) {
      // QEMU passes only the zero flags every child supports (quorum_refresh_flags).
      const f = children.every((c) => c.node.limits.canZero) ? flags : flags & ~ReqFlag.NO_FALLBACK;
      return writeAll(offset, length, (c) => c.writeZeroes(offset, length, f));
    },
    async flush() {
      // One child after the other (quorum_co_flush); enough successes make it a success.
      const errors: unknown[] = [];
      for (const c of children) {
        try {
          await c.node.flush();
          errors.push(undefined);
        } catch (e) {
          reportBad(events, 'flush', 0, 0, c.node.nodeName, e);
          errors.push(e);
        }
      }
      if (errors.filter((e) => e === undefined).length >= s.threshold) return;
      throw voteError(errors, errorCode);
    },
    async blockStatus(offset, length): Promise<Extent[]> {
      // Zero only where every child says so (the shortest such run); data otherwise (the longest).
      let zeroLen = length;
      let dataLen = 0;
      for (const c of children) {
        let e: Extent;
        try {
          e = (await c.node.blockStatus(offset, length, ReqFlag.REQ_ONE))[0]!;
        } catch (err) {
          reportBad(events, 'read', offset, length, c.node.nodeName, err);
          dataLen = length;
          break;
        }
        if (e.zero) zeroLen = Math.min(zeroLen, e.length);
        else dataLen = Math.max(dataLen, e.length);
      }
      if (dataLen > 0) return [{ offset, length: dataLen, data: true, zero: false, allocated: true, depth: 1 }];
      return [{ offset, length: zeroLen, data: false, zero: true, allocated: true, depth: 1 }];
    },
    setPermissions(users) {
      const write = users?.perm.write === true;
      if (write && children.some((c) => c.node.readOnly)) throw readOnlyRefusal();
      usersWrite = write;
    },
    addChild(child, attach) {
      if (s.blkverify) throw new BlockError('EINVAL', 'Cannot add a child to a quorum in blkverify mode');
      if (child.readOnly && (usersWrite || s.rewrite)) throw readOnlyRefusal();
      const role = `children.${nextIndex}` as const;
      const edge = attach(role);
      nextIndex++;
      children.push(new Child(role, edge));
    },
    async delChild(role, detach) {
      const i = children.findIndex((c) => c.role === role);
      if (children.length <= s.threshold) {
        throw new BlockError('EINVAL', `The number of children cannot be lower than the vote threshold ${s.threshold}`);
      }
      // The last one added gives its number back (quorum_del_child).
      if (role === `children.${nextIndex - 1}`) nextIndex--;
      children.splice(i, 1);
      await detach();
    },
  };
}
