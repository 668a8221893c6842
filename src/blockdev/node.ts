/**
 * BlockNode: the generic layer every request passes through. Drivers only see
 * in-range, aligned, size-limited requests; this layer splits, aligns
 * (read-modify-write), emulates write-zeroes and FUA, counts in-flight
 * requests for drain, tells write observers (dirty bitmaps) and keeps stats.
 */
import { nextNameSeq } from './surgery/node-names.ts';
import { BlockError, toBlockError } from '../util/errors.ts';
import { COMPLETED, ReqFlag, DEFAULT_MAX_TRANSFER, type Extent, type Limits } from './request.ts';
import { RangeLock } from './range-lock.ts';
import { DetectZeroes, detectZeroesMode, isAllZero, type DetectZeroesMode } from './detect-zeroes.ts';
import { checkNewShared, cowShared, cumulative, type ChildEdge, type Parent } from './edge.ts';
import type { CommonOptions, Driver, DriverOps, Perm } from './driver.ts';
import type { BlkdebugEvent } from './debug-events.ts';
import { LatencyHistogram, nowNs } from '../util/stats/latency-histogram.ts';

/**
 * A node's I/O accounting, in QEMU's terms (block/accounting.c) with
 * account_failed and account_invalid on: plain fields the data path bumps
 * (a few increments and one clock read per request, nothing allocated) and
 * query-blockstats and the metrics endpoint read.
 */
export class NodeStats {
  rdBytes = 0; wrBytes = 0; rdOps = 0; wrOps = 0;
  zeroOps = 0; zeroBytes = 0; discardOps = 0; discardBytes = 0; flushOps = 0;
  /** Failures of any kind, and by kind (QEMU's failed_*_operations). */
  failedOps = 0; failedRd = 0; failedWr = 0; failedUnmap = 0; failedFlush = 0;
  /** Requests refused as invalid before they ran (QEMU's invalid_*_operations: an NBD request out of range, say). */
  invalidRd = 0; invalidWr = 0; invalidUnmap = 0; invalidFlush = 0;
  /** End of the highest write, write-zeroes or effective discard (QEMU's wr_highest_offset). */
  wrHighestOffset = 0;
  /** Durations of completed and failed requests (their sums are QEMU's *_total_time_ns); write-zeroes count as writes. */
  readonly rdLatency = new LatencyHistogram();
  readonly wrLatency = new LatencyHistogram();
  readonly flushLatency = new LatencyHistogram();
  readonly unmapLatency = new LatencyHistogram();
  /** nowNs() when the last request ended (QEMU's last_access_time_ns); 0 = never. */
  lastAccessNs = 0;

  /** A request that started at `t0` (nowNs()) ended, successfully or not. */
  ended(h: LatencyHistogram, t0: number): void {
    const t = nowNs();
    h.record(t - t0);
    this.lastAccessNs = t;
  }

  /** A request refused before it ran (an invalid one), by QEMU's accounting type. */
  invalid(type: 'read' | 'write' | 'flush' | 'unmap'): void {
    if (type === 'read') this.invalidRd++;
    else if (type === 'write') this.invalidWr++;
    else if (type === 'flush') this.invalidFlush++;
    else this.invalidUnmap++;
    this.lastAccessNs = nowNs();
  }
}

/** Called after a write, write-zeroes or discard has changed [offset, offset+length). */
export type WriteObserver = (offset: number, length: number) => void;

const ZERO_CHUNK = 1024 * 1024;
let zeroBuffer: Buffer | undefined;
function zeroes(len: number): Buffer {
  zeroBuffer ??= Buffer.alloc(ZERO_CHUNK);
  return zeroBuffer.subarray(0, len);
}

/** The block layer's unit of size (BDRV_SECTOR_SIZE). */
const SECTOR = 512;

const roundDown = (x: number, a: number) => x - (x % a);
const roundUp = (x: number, a: number) => roundDown(x + a - 1, a);

export class BlockNode implements Parent {
  readonly children: ChildEdge[] = [];
  readonly parents: ChildEdge[] = [];
  readonly writeObservers = new Set<WriteObserver>();
  /** block-set-write-threshold's offset, 0 when none (write-threshold.ts). */
  writeThreshold = 0;
  /** Told once when a write-type request ends past writeThreshold, before the request runs (QEMU's prepare step). */
  onWriteThreshold?: (end: number) => void;
  readonly stats = new NodeStats();
  ops: DriverOps = {};
  limits: Limits = { alignment: 1, maxTransfer: DEFAULT_MAX_TRANSFER, canFua: false, canZero: false, canTrim: false };
  private inflight = 0;
  private quiesceDepth = 0;
  /** Drained sections holding this node's driver hooks (drainBegin called, drainEnd not yet). */
  private drainHookDepth = 0;
  private idleWaiters: (() => void)[] = [];
  private resumeWaiters: (() => void)[] = [];
  private readonly rmwLock = new RangeLock();
  private closed = false;
  /** detect-zeroes, parsed once (and again after a reopen): the write fast path tests only this. */
  private detectZeroes: DetectZeroesMode;
  /**
   * What the node's backing link is judged against when its filename is
   * shown (QEMU's auto_backing_file): the name its image header gives, or the
   * node that was opened from that name. A backing link that differs from it
   * makes the node's filename a json: description with the backing inside.
   */
  autoBacking?: { name: string } | { node: BlockNode };
  /**
   * Its read-only flag follows its parent's (an inline child or a backing
   * node opened from a header, without a read-only option of its own): a
   * reopen of the parent changes it too, as QEMU's reopen queue does. A
   * node added by itself has its own (blockdev-add defaults it to off).
   */
  readOnlyInherited = false;
  /** Its driver was found by probing (DriverContext.probed). */
  probed = false;
  private name: string;
  private nameSeqValue: number;

  constructor(
    nodeName: string,
    readonly driver: Driver,
    /** Every option it was opened with (common and driver-specific), for queries and reopen. */
    readonly options: CommonOptions & Record<string, unknown>,
    public readOnly: boolean,
    /** Created inline by a parent's options rather than by blockdev-add. */
    readonly implicit: boolean,
  ) {
    // Before the driver opens anything, as QEMU's bdrv_open_common refuses detect-zeroes=unmap without discard=unmap.
    this.detectZeroes = detectZeroesMode(options);
    this.name = nodeName;
    this.nameSeqValue = nextNameSeq();
  }

  /** Takes up options changed in place by blockdev-reopen (checked there with detectZeroesMode()). */
  optionsChanged(): void {
    this.detectZeroes = detectZeroesMode(this.options);
  }

  get nodeName(): string { return this.name; }

  /** When the node got its name, relative to the others (query-named-block-nodes lists the newest first). */
  get nameSeq(): number { return this.nameSeqValue; }

  /**
   * Names the node while it opens (BlockGraph.add does, at the point QEMU's
   * bdrv_open_common does: after the file child is open, before any other).
   */
  assignName(name: string): void {
    this.name = name;
    this.options['node-name'] = name;
    this.nameSeqValue = nextNameSeq();
  }

  describe(): string { return this.nodeName; }

  permissionUser(): string { return `node '${this.nodeName}'`; }

  /** The file name QEMU would record for this node (bs->filename): the driver's, else the node name. */
  fileName(): string {
    return this.ops.filename?.() ?? (this.options.filename as string | undefined) ?? this.nodeName;
  }

  /** Finishes opening: called by the graph once the driver returned its ops. */
  setOps(ops: DriverOps): void {
    this.ops = ops;
    // Ops opened inside a drained section (graph surgery reopens a node on new children) start drained.
    if (this.drainHookDepth > 0) ops.drainBegin?.();
    const child = this.primaryChild;
    const own = ops.limits ?? {};
    const passes = this.driver.kind === 'filter';
    this.limits = {
      // Not inherited (QEMU's bdrv_merge_limits leaves request_alignment alone): a node
      // whose driver needs aligned requests does the read-modify-write itself, so
      // the nodes above it (raw, qcow2, filters) and their exports take any byte range.
      alignment: own.alignment ?? 1,
      maxTransfer: Math.min(own.maxTransfer ?? child?.limits.maxTransfer ?? DEFAULT_MAX_TRANSFER, DEFAULT_MAX_TRANSFER),
      canFua: own.canFua ?? (passes && !ops.write ? !!child?.limits.canFua : false),
      canZero: own.canZero ?? (!!ops.writeZeroes || (passes && !ops.writeZeroes && !!child?.limits.canZero)),
      canTrim: own.canTrim ?? (!!ops.discard || (passes && !ops.discard && !!child?.limits.canTrim)),
    };
  }

  child(role: string): BlockNode | undefined {
    return this.children.find((e) => e.role === role)?.child;
  }

  /** The child a filter forwards to and whose limits are inherited: 'file', else 'backing'. */
  get primaryChild(): BlockNode | undefined {
    return this.child('file') ?? this.child('image') ?? (this.driver.kind === 'filter' ? this.child('backing') : undefined);
  }

  get isFilter(): boolean { return this.driver.kind === 'filter'; }

  /** QEMU's bdrv_is_inserted: the driver's answer (host_cdrom), else whether every child's medium is there. */
  inserted(): boolean {
    if (this.ops.inserted) return this.ops.inserted();
    return this.children.every((e) => e.child.inserted());
  }

  /** A blkdebug event happened to this node (DriverOps.debugEvent); nothing unless its driver listens. */
  debugEvent(event: BlkdebugEvent): void {
    this.ops.debugEvent?.(event);
  }

  /**
   * The node's size, rounded up to whole 512-byte sectors as QEMU's block
   * layer counts it (bs->total_sectors): a 1000000-byte raw file is a
   * 1000448-byte disk whose tail reads as zeroes (the file driver zero-fills
   * reads past its end and a write there extends the file).
   */
  length(): number {
    if (this.ops.length) {
      const len = this.ops.length();
      return len % SECTOR === 0 ? len : len + SECTOR - (len % SECTOR);
    }
    const c = this.primaryChild;
    if (!c) throw new BlockError('ENOTSUP', `Node '${this.nodeName}' has no length`);
    return c.length();
  }

  // ---- requests ----

  read(offset: number, buf: Buffer, flags = 0): Promise<void> {
    // The common case (in range, aligned, one piece, not quiesced) costs one
    // promise step: a 4 KiB read from memory is otherwise mostly async frames.
    const read = this.ops.read;
    if (read && this.plainRequest(offset, buf.length)) {
      const t0 = nowNs();
      return this.direct(attempt(() => read(offset, buf)), false, offset, buf.length, t0);
    }
    return this.readAny(offset, buf, flags);
  }

  private async readAny(offset: number, buf: Buffer, flags: number): Promise<void> {
    this.checkRange(offset, buf.length);
    // A zero-length request succeeds without reaching the driver (QEMU's block layer too).
    if (buf.length === 0) return;
    const t0 = nowNs();
    const waiting = this.enter();
    if (waiting) await waiting;
    try {
      await this.unalignedRead(offset, buf, flags);
      this.stats.ended(this.stats.rdLatency, t0);
      this.stats.rdOps++;
      this.stats.rdBytes += buf.length;
    } catch (e) {
      throw this.fail(e, 'read', t0);
    } finally {
      this.leave();
    }
  }

  write(offset: number, buf: Buffer, flags = 0): Promise<void> {
    if (this.writeThreshold > 0) this.checkThreshold(offset + buf.length);
    // As for reads, but only on nodes without an alignment: elsewhere even an
    // aligned write must take the read-modify-write lock.
    const write = this.ops.write;
    if (write && !this.ops.debugEvent && this.detectZeroes === DetectZeroes.OFF && this.limits.alignment === 1 && !this.readOnly && (!(flags & ReqFlag.FUA) || this.limits.canFua) &&
        this.plainRequest(offset, buf.length)) {
      const t0 = nowNs();
      return this.direct(attempt(() => write(offset, buf, flags & ReqFlag.FUA)), true, offset, buf.length, t0);
    }
    return this.writeAny(offset, buf, flags);
  }

  /** Whether a request may go straight to the driver: not quiesced, in range, aligned, one piece. */
  private plainRequest(offset: number, len: number): boolean {
    const { alignment, maxTransfer } = this.limits;
    return this.quiesceDepth === 0 && !this.closed && len !== 0 && len <= maxTransfer && offset % alignment === 0 && len % alignment === 0 &&
      Number.isSafeInteger(offset) && offset >= 0 && offset + len <= this.length();
  }

  /**
   * The fast paths' bookkeeping around a driver call already started: in-flight
   * count, stats, write observers, errors. A call that already finished
   * (COMPLETED) is accounted for at once and stays COMPLETED for the caller.
   */
  private direct(pending: Promise<void>, write: boolean, offset: number, len: number, t0: number): Promise<void> {
    this.inflight++;
    if (pending === COMPLETED) {
      this.succeeded(write, offset, len, t0);
      return COMPLETED;
    }
    return pending.then(
      () => this.succeeded(write, offset, len, t0),
      (e: unknown) => {
        this.leave();
        throw this.fail(e, write ? 'write' : 'read', t0);
      },
    );
  }

  private succeeded(write: boolean, offset: number, len: number, t0: number): void {
    if (write) {
      this.wrote(offset, len, t0);
    } else {
      this.stats.ended(this.stats.rdLatency, t0);
      this.stats.rdOps++;
      this.stats.rdBytes += len;
    }
    this.leave();
  }

  /** A write (of any kind that counts as one) has succeeded: statistics, then the write observers (bitmaps, jobs). */
  private wrote(offset: number, len: number, t0: number): void {
    this.stats.ended(this.stats.wrLatency, t0);
    this.stats.wrOps++;
    this.stats.wrBytes += len;
    this.notify(offset, len);
  }

  private async writeAny(offset: number, buf: Buffer, flags: number): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, buf.length);
    if (buf.length === 0) return;
    // detect-zeroes, where the node can zero (QEMU: the driver has bdrv_co_pwrite_zeroes); MAY_UNMAP with 'unmap'.
    if (this.detectZeroes !== DetectZeroes.OFF && this.limits.canZero && isAllZero(buf)) {
      return this.writeZeroes(offset, buf.length, (flags & ReqFlag.FUA) | (this.detectZeroes === DetectZeroes.UNMAP ? ReqFlag.MAY_UNMAP : 0));
    }
    const t0 = nowNs();
    const waiting = this.enter();
    if (waiting) await waiting;
    try {
      await this.withAlignedSpan(offset, buf.length, async (head, tail) => {
        if (head === 0 && tail === 0) await this.eventWrite(() => this.splitWrite(offset, buf, flags));
        else await this.readModifyWrite(offset, buf, flags);
      });
      if (flags & ReqFlag.FUA && !this.limits.canFua) await this.flushInner();
      this.wrote(offset, buf.length, t0);
    } catch (e) {
      throw this.fail(e, 'write', t0);
    } finally {
      this.leave();
    }
  }

  async writeZeroes(offset: number, length: number, flags = 0): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    const a = this.limits.alignment;
    // As bdrv_co_pwritev_part: a misaligned request cannot be made fast (whatever its length), and
    // an empty one is done.
    if (flags & ReqFlag.NO_FALLBACK && (offset % a !== 0 || length % a !== 0)) {
      throw new BlockError('ENOTSUP', `Cannot zero a misaligned range of node '${this.nodeName}' fast`);
    }
    if (length === 0) return;
    if (this.writeThreshold > 0) this.checkThreshold(offset + length);
    const t0 = nowNs();
    await this.enter();
    try {
      const start = roundUp(offset, a);
      const end = Math.max(start, roundDown(offset + length, a));
      // Unaligned head and tail become ordinary (read-modify-write) zero writes.
      if (start > offset) await this.zeroWrite(offset, Math.min(start, offset + length) - offset, flags);
      if (end > start) {
        this.debugEvent('pwritev_zero');
        try { await this.zeroAligned(start, end - start, flags); } finally { this.debugEvent('pwritev_done'); }
      }
      if (offset + length > end && end >= start) await this.zeroWrite(end, offset + length - end, flags);
      if (flags & ReqFlag.FUA && !this.limits.canFua) await this.flushInner();
      this.stats.ended(this.stats.wrLatency, t0);
      this.stats.zeroOps++;
      this.stats.zeroBytes += length;
      this.notify(offset, length);
    } catch (e) {
      throw this.fail(e, 'write-zeroes', t0);
    } finally {
      this.leave();
    }
  }

  /** Whether the node takes compressed writes (QEMU's bdrv_supports_compressed_writes). */
  get canCompress(): boolean { return !!this.ops.writeCompressed; }

  /** Why compressed writes would fail here though the driver has them (DriverOps.compressRefusal). */
  compressRefusal(): string | undefined { return this.ops.compressRefusal?.(); }

  /**
   * A compressed write (DriverOps.writeCompressed): counted, observed and
   * reported as a write. ENOTSUP where the driver has none.
   */
  async writeCompressed(offset: number, buf: Buffer): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, buf.length);
    const op = this.ops.writeCompressed;
    if (!op) throw new BlockError('ENOTSUP', `Compression is not supported for this drive ${this.nodeName}`);
    if (buf.length === 0) return;
    const t0 = nowNs();
    await this.enter();
    try {
      await op(offset, buf);
      this.wrote(offset, buf.length, t0);
    } catch (e) {
      throw this.fail(e, 'write', t0);
    } finally {
      this.leave();
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    if (length === 0) return;
    // A discard the node ignores (QEMU: no BDRV_O_UNMAP) never reaches the threshold check.
    if (this.writeThreshold > 0 && this.options.discard === 'unmap') this.checkThreshold(offset + length);
    const t0 = nowNs();
    await this.enter();
    try {
      const a = this.limits.alignment;
      const start = roundUp(offset, a);
      const end = roundDown(offset + length, a);
      // Discard is advisory: the unaligned edges are simply left alone.
      if (end > start) {
        if (this.ops.discard) await this.splitRange(start, end - start, (o, l) => this.ops.discard!(o, l));
        else if (this.isFilter && this.primaryChild) await this.primaryChild.discard(start, end - start);
      }
      this.stats.ended(this.stats.unmapLatency, t0);
      this.stats.discardOps++;
      this.stats.discardBytes += length;
      // A discard the node ignores (QEMU: no BDRV_O_UNMAP) is no write: it moves no highest offset.
      this.notify(offset, length, this.options.discard === 'unmap');
    } catch (e) {
      throw this.fail(e, 'discard', t0);
    } finally {
      this.leave();
    }
  }

  async flush(): Promise<void> {
    const t0 = nowNs();
    await this.enter();
    try {
      await this.flushInner();
      this.stats.ended(this.stats.flushLatency, t0);
      this.stats.flushOps++;
    } catch (e) {
      throw this.fail(e, 'flush', t0);
    } finally {
      this.leave();
    }
  }

  /**
   * Extents describing [offset, offset+length): at least one, never past the
   * range; with REQ_ONE exactly one. Adjacent extents with equal status are merged.
   */
  async blockStatus(offset: number, length: number, flags = 0): Promise<Extent[]> {
    this.checkRange(offset, length);
    if (length === 0) return [];
    await this.enter();
    try {
      let raw: Extent[];
      if (this.ops.blockStatus) raw = await this.ops.blockStatus(offset, length, flags);
      else if (this.isFilter && this.primaryChild) raw = await this.primaryChild.blockStatus(offset, length, flags);
      else raw = [{ offset, length, data: true, zero: false, allocated: true, depth: 1 }];
      return normaliseExtents(raw, offset, length, (flags & ReqFlag.REQ_ONE) !== 0);
    } catch (e) {
      throw this.fail(e, 'block-status');
    } finally {
      this.leave();
    }
  }

  async truncate(size: number): Promise<void> {
    this.checkWritable();
    if (!Number.isSafeInteger(size) || size < 0) throw new BlockError('EINVAL', 'Invalid size');
    await this.enter();
    try {
      if (this.ops.truncate) await this.ops.truncate(size);
      else if (this.isFilter && this.primaryChild) await this.primaryChild.truncate(size);
      else throw new BlockError('ENOTSUP', `Cannot resize node '${this.nodeName}': driver '${this.driver.name}' does not support resizing`);
    } catch (e) {
      throw this.fail(e, 'truncate');
    } finally {
      this.leave();
    }
  }

  /**
   * Passes what this node's users (and `arriving`, users about to move here)
   * need and share to the driver, whose image locks follow. Throws, changing
   * nothing, when another process's locks conflict.
   */
  refreshPermissions(arriving: readonly ChildEdge[] = []): void {
    const users = arriving.length ? [...this.parents, ...arriving] : this.parents;
    const together = cumulative(users);
    // QEMU's bdrv_node_refresh_perm: requests are aligned up to the node's alignment, and without
    // resize nothing may be written past the end, so writers of a node (e.g. a direct-I/O file)
    // whose size in sectors is no multiple of its alignment are refused. The writers counted are
    // the graph's users (exports, jobs): a node's own edges take their permissions when opened,
    // where QEMU's follow what the users above need.
    if (this.limits.alignment > 512 && !this.isClosed) {
      const outer = cumulative([...users.filter((e) => !(e.parent instanceof BlockNode)), ...this.usersThrough()]);
      if (outer.perm.write && !outer.perm.resize && (Math.ceil(this.length() / 512) * 512) % this.limits.alignment !== 0) {
        throw new BlockError('EPERM', "Cannot get 'write' permission without 'resize': Image size is not a multiple of request alignment");
      }
    }
    this.ops.setPermissions?.(users.length ? together : undefined);
    for (const e of this.children) {
      if (e.passThrough) {
        e.shared = { ...together.shared };
        e.child.refreshPermissions();
      } else if (e.cow) {
        const shared = cowShared(together.shared);
        if (shared.write === e.shared.write && shared.resize === e.shared.resize) continue;
        // Sharing less may conflict with what the backing node's other users hold (refused, as in QEMU).
        checkNewShared(e, shared);
        e.shared = shared;
        e.child.refreshPermissions();
      }
    }
  }

  /** The graph's users (exports, jobs) of the nodes above that pass this node's requests through unchanged (raw's file). */
  private usersThrough(): ChildEdge[] {
    const out: ChildEdge[] = [];
    for (const e of this.parents) {
      if (!e.passThrough || !(e.parent instanceof BlockNode)) continue;
      const p = e.parent;
      out.push(...p.parents.filter((u) => !(u.parent instanceof BlockNode)), ...p.usersThrough());
    }
    return out;
  }

  /** What this node's users let others do: everything when it has none. */
  usersShare(): Perm {
    return cumulative(this.parents).shared;
  }

  // ---- drain ----

  get inFlight(): number { return this.inflight; }

  /**
   * Runs `fn` while no request is in flight on this node or on any node or
   * user above it; new requests wait (in order) until it returns. Graph
   * changes happen only inside such a section. Every node's driver hears
   * drainBegin() as the section starts, all of them (top-down) before the
   * first wait for in-flight requests (a throttle lets its queue through,
   * also a request of a node above held in it), and drainEnd() when the
   * last section holding it ends, top-down (QEMU's bdrv_drain_begin/end).
   */
  async drained<T>(fn: () => Promise<T> | T): Promise<T> {
    // Top-down, one node at a time: a request already running in a node
    // above must still reach the nodes below it to finish, so a node is
    // quiesced only once everything above it is idle (as QEMU lets
    // in-flight requests through a drained child).
    // Every driver hears drainBegin before any wait: a request in flight in a node above
    // may be held in a throttle below, which must let it go before the node above is idle.
    const nodes = this.withAncestors();
    for (const n of nodes) if (n.drainHookDepth++ === 0) n.ops.drainBegin?.();
    const quiesced: BlockNode[] = [];
    try {
      for (const n of nodes) {
        n.quiesceDepth++;
        quiesced.push(n);
        await n.waitIdle();
      }
      return await fn();
    } finally {
      for (const n of quiesced) n.resume();
      for (const n of nodes) if (--n.drainHookDepth === 0) n.ops.drainEnd?.();
    }
  }

  /** This node and every node above it, topmost first. */
  private withAncestors(): BlockNode[] {
    const order: BlockNode[] = [];
    const seen = new Set<BlockNode>();
    const visit = (n: BlockNode) => {
      if (seen.has(n)) return;
      seen.add(n);
      for (const e of n.parents) if (e.parent instanceof BlockNode) visit(e.parent);
      order.push(n);
    };
    visit(this);
    return order;
  }

  private waitIdle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private resume(): void {
    if (--this.quiesceDepth > 0) return;
    const waiters = this.resumeWaiters;
    this.resumeWaiters = [];
    for (const w of waiters) w();
  }

  /**
   * Counts a request in. Synchronous unless the node is quiesced (then the
   * returned promise resolves once it may go on): the common case costs no
   * promise on the data path.
   */
  private enter(): Promise<void> | undefined {
    if (this.closed) throw new BlockError('ESHUTDOWN', `Node '${this.nodeName}' is closed`);
    if (this.quiesceDepth > 0) return this.enterLater();
    this.inflight++;
    return undefined;
  }

  private async enterLater(): Promise<void> {
    while (this.quiesceDepth > 0) await new Promise<void>((r) => this.resumeWaiters.push(r));
    if (this.closed) throw new BlockError('ESHUTDOWN', `Node '${this.nodeName}' is closed`);
    this.inflight++;
  }

  private leave(): void {
    if (--this.inflight > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Waits for in-flight requests, then closes the driver. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    // Requests a driver holds back (a throttle's queue) go now: closing never waits on them.
    if (this.drainHookDepth === 0) this.ops.drainBegin?.();
    await this.waitIdle();
    this.closed = true;
    await this.ops.close?.();
  }

  get isClosed(): boolean { return this.closed; }

  // ---- internals ----

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
        offset + length > this.length()) {
      throw new BlockError('EINVAL', `Request [${offset}, +${length}) is outside node '${this.nodeName}'`);
    }
  }

  private checkWritable(): void {
    if (this.readOnly) throw new BlockError('EPERM', `Node '${this.nodeName}' is read-only`);
  }

  /** Counts a failure; `t0` (when the request started) for the kinds QEMU times, whose failures count in their latency too (account_failed). */
  private fail(e: unknown, what: string, t0?: number): BlockError {
    const s = this.stats;
    s.failedOps++;
    if (what === 'read') { s.failedRd++; if (t0 !== undefined) s.ended(s.rdLatency, t0); }
    else if (what === 'write' || what === 'write-zeroes') { s.failedWr++; if (t0 !== undefined) s.ended(s.wrLatency, t0); }
    else if (what === 'discard') { s.failedUnmap++; if (t0 !== undefined) s.ended(s.unmapLatency, t0); }
    else if (what === 'flush') { s.failedFlush++; if (t0 !== undefined) s.ended(s.flushLatency, t0); }
    return toBlockError(e, `${this.nodeName}: ${what}`);
  }

  private checkThreshold(end: number): void {
    const t = this.writeThreshold;
    if (end <= t) return;
    // One shot, as QEMU: the threshold is disabled before anyone is told.
    this.writeThreshold = 0;
    this.onWriteThreshold?.(end);
  }

  private notify(offset: number, length: number, write = true): void {
    if (write && offset + length > this.stats.wrHighestOffset) this.stats.wrHighestOffset = offset + length;
    for (const o of this.writeObservers) o(offset, length);
  }

  private async flushInner(): Promise<void> {
    // QEMU's bdrv_co_flush raises these on the node's primary child before the driver flushes.
    this.primaryChild?.debugEvent('flush_to_os');
    if (this.options.cache?.['no-flush']) return;
    this.primaryChild?.debugEvent('flush_to_disk');
    if (this.ops.flush) await this.ops.flush();
    // Data reaches the disk only when every child that holds our writes is flushed too.
    for (const e of this.children) {
      if (e.perm.write && (e.role === 'file' || e.role === 'image' || e.role === 'data-file' || (this.isFilter && e.role === 'backing'))) {
        await e.child.flush();
      }
    }
  }

  private async unalignedRead(offset: number, buf: Buffer, flags: number): Promise<void> {
    const a = this.limits.alignment;
    const start = roundDown(offset, a);
    const end = roundUp(offset + buf.length, a);
    if (start === offset && end === offset + buf.length) return this.splitRead(offset, buf, flags);
    const bounce = Buffer.alloc(end - start);
    await this.splitRead(start, bounce, flags);
    bounce.copy(buf, 0, offset - start, offset - start + buf.length);
  }

  private async splitRead(offset: number, buf: Buffer, flags: number): Promise<void> {
    if (!this.ops.read) {
      if (this.isFilter && this.primaryChild) return this.primaryChild.read(offset, buf, flags);
      throw new BlockError('ENOTSUP', `Driver '${this.driver.name}' cannot read`);
    }
    const max = this.chunk();
    for (let done = 0; done < buf.length; done += max) {
      await this.ops.read(offset + done, buf.subarray(done, Math.min(buf.length, done + max)));
    }
  }

  private async splitWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    if (!this.ops.write) {
      if (this.isFilter && this.primaryChild) return this.primaryChild.write(offset, buf, flags);
      throw new BlockError('ENOTSUP', `Driver '${this.driver.name}' cannot write`);
    }
    const driverFlags = this.limits.canFua ? flags & ReqFlag.FUA : 0;
    const max = this.chunk();
    for (let done = 0; done < buf.length; done += max) {
      await this.ops.write(offset + done, buf.subarray(done, Math.min(buf.length, done + max)), driverFlags);
    }
  }

  /** Holds the aligned span of an unaligned-capable write so read-modify-write cycles never interleave. */
  private async withAlignedSpan(offset: number, length: number, fn: (head: number, tail: number) => Promise<void>): Promise<void> {
    const a = this.limits.alignment;
    const head = offset % a;
    const tail = (a - ((offset + length) % a)) % a;
    if (a === 1) return fn(0, 0);
    const release = await this.rmwLock.acquire(offset - head, offset + length + tail);
    try {
      await fn(head, tail);
    } finally {
      release();
    }
  }

  private async readModifyWrite(offset: number, buf: Buffer, flags: number): Promise<void> {
    const a = this.limits.alignment;
    const start = roundDown(offset, a);
    const end = roundUp(offset + buf.length, a);
    const bounce = Buffer.alloc(end - start);
    const head = offset !== start;
    const tail = offset + buf.length !== end;
    const oneBlock = end - start === a;
    // Only the first and last aligned blocks need their old contents (QEMU's pwritev_rmw_* events around each read).
    if (head) this.debugEvent('pwritev_rmw_head');
    if (oneBlock && tail) this.debugEvent('pwritev_rmw_tail');
    await this.splitRead(start, bounce.subarray(0, a), 0);
    if (head) this.debugEvent('pwritev_rmw_after_head');
    if (oneBlock && tail) this.debugEvent('pwritev_rmw_after_tail');
    if (end - a > start) {
      if (tail) this.debugEvent('pwritev_rmw_tail');
      await this.splitRead(end - a, bounce.subarray(end - a - start), 0);
      if (tail) this.debugEvent('pwritev_rmw_after_tail');
    }
    buf.copy(bounce, offset - start);
    await this.eventWrite(() => this.splitWrite(start, bounce, flags));
  }

  /** A write reaching the driver, between QEMU's pwritev and pwritev_done events. */
  private async eventWrite(write: () => Promise<void>): Promise<void> {
    this.debugEvent('pwritev');
    try { await write(); } finally { this.debugEvent('pwritev_done'); }
  }

  private async zeroWrite(offset: number, length: number, flags: number): Promise<void> {
    await this.withAlignedSpan(offset, length, async (head, tail) => {
      if (head === 0 && tail === 0) await this.splitWrite(offset, zeroes(length), flags);
      else await this.readModifyWrite(offset, zeroes(length), flags);
    });
  }

  private async zeroAligned(offset: number, length: number, flags: number): Promise<void> {
    if (this.ops.writeZeroes) {
      const driverFlags = flags & (ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK | (this.limits.canFua ? ReqFlag.FUA : 0));
      try {
        return await this.splitRange(offset, length, (o, l) => this.ops.writeZeroes!(o, l, driverFlags));
      } catch (e) {
        // A driver may find out only per request that it cannot zero fast (e.g. a filesystem without ZERO_RANGE).
        if ((e as { code?: string }).code !== 'ENOTSUP' || flags & ReqFlag.NO_FALLBACK) throw e;
      }
    }
    else if (this.isFilter && this.primaryChild && !this.ops.write) return this.primaryChild.writeZeroes(offset, length, flags);
    if (flags & ReqFlag.NO_FALLBACK) throw new BlockError('ENOTSUP', `Driver '${this.driver.name}' cannot write zeroes fast`);
    for (let done = 0; done < length; done += ZERO_CHUNK) {
      const n = Math.min(ZERO_CHUNK, length - done);
      await this.zeroWrite(offset + done, n, flags & ~ReqFlag.FUA);
    }
  }

  private async splitRange(offset: number, length: number, fn: (o: number, l: number) => Promise<void>): Promise<void> {
    // Zeroing and discard carry no payload, so they are split at a much larger size than data.
    const max = Math.max(this.chunk(), roundDown(2 ** 30, this.limits.alignment));
    for (let done = 0; done < length; done += max) await fn(offset + done, Math.min(max, length - done));
  }

  private chunk(): number {
    return Math.max(this.limits.alignment, roundDown(this.limits.maxTransfer, this.limits.alignment));
  }
}

/** Clips, merges and (for REQ_ONE) truncates a driver's extent list. */
export function normaliseExtents(raw: Extent[], offset: number, length: number, one: boolean): Extent[] {
  const end = offset + length;
  const out: Extent[] = [];
  let pos = offset;
  for (const e of raw) {
    const s = Math.max(e.offset, pos);
    const t = Math.min(e.offset + e.length, end);
    if (t <= s || s !== pos) { if (s > pos) break; else continue; }
    const last = out[out.length - 1];
    if (last && last.data === e.data && last.zero === e.zero && last.allocated === e.allocated && last.depth === e.depth) {
      last.length += t - s;
    } else {
      out.push({ offset: s, length: t - s, data: e.data, zero: e.zero, allocated: e.allocated, depth: e.depth });
    }
    pos = t;
    if (pos >= end) break;
  }
  if (out.length === 0) throw new BlockError('EIO', 'Driver returned no block status');
  return one ? out.slice(0, 1) : out;
}

/** A driver call's promise, with a synchronous throw turned into a rejection. */
export function attempt(call: () => Promise<void>): Promise<void> {
  try {
    return call();
  } catch (e) {
    return Promise.reject(e);
  }
}
