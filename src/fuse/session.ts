/**
 * One FUSE connection (the kernel end of one mount): requests from the
 * device are decoded, INIT is negotiated, each file operation is handed to
 * the file system (the export) and its answer sent back as it completes.
 * Many requests are in flight at once (the kernel sends READs
 * asynchronously with ASYNC_READ, and every process blocked in a call has
 * one); reading pauses while the in-flight count or bytes are over a limit.
 *
 * The session knows no block layer: `FuseFile` is the one-file file system
 * it serves (src/fuse/file-ops.ts implements it on a block node).
 */
import type { Logger } from 'pino';
import { decodeRequest, isNoReply, type FuseRequest, type InHeader } from './protocol/requests.ts';
import { attrOut, errorReply, initOut, lseekOut, okReply, openOut, statfsOut, writeOut, type FuseAttr } from './protocol/replies.ts';
import { FATTR_ACTIONS, FUSE_KERNEL_VERSION, FUSE_ROOT_ID, InitFlag } from './protocol/constants.ts';
import { FuseErrno, fuseErr, fuseErrno } from './errors.ts';

/** The file system of one regular file, as the session calls it. Refusals throw a FuseErrno. */
export interface FuseFile {
  getattr(): Promise<FuseAttr> | FuseAttr;
  /** `valid` is fuse_setattr_in.valid masked to the actions (FATTR_ACTIONS); answers the new attributes. */
  setattr(valid: number, attr: { size: number; mode: number; uid: number; gid: number }): Promise<FuseAttr>;
  read(offset: number, size: number): Promise<Buffer>;
  /** Bytes written. */
  write(offset: number, data: Buffer): Promise<number>;
  fsync(): Promise<void>;
  flush(): Promise<void>;
  fallocate(offset: number, length: number, mode: number): Promise<void>;
  lseek(offset: number, whence: number): Promise<number>;
}

/** What the session sends replies through. */
export interface FuseReplySink {
  /** One whole reply; 0 or an errno (ENOENT: the kernel no longer waits, e.g. the request was interrupted). */
  reply(parts: Buffer[]): number;
  /** Stop (false) or resume (true) reading requests. */
  setReading(active: boolean): void;
}

export interface FuseSessionLimits {
  /** Largest WRITE the kernel may send (the device buffer holds one whole). */
  maxWrite: number;
  /** max_pages: the kernel's per-request page limit (7.28). */
  maxPages: number;
  /** Seconds the kernel may cache attributes (qsd: 1). */
  attrValid: number;
  /** Pause reading above these. */
  maxInFlight: number;
  maxInFlightBytes: number;
}

export const DEFAULT_LIMITS: FuseSessionLimits = {
  maxWrite: 1 << 20,
  maxPages: 256,
  attrValid: 1,
  maxInFlight: 512,
  maxInFlightBytes: 128 << 20,
};

/** The INIT flags blockd asks for (libfuse 3's defaults for a file system with qsd's operations). */
const WANTED_FLAGS = InitFlag.ASYNC_READ | InitFlag.ATOMIC_O_TRUNC | InitFlag.BIG_WRITES | InitFlag.HAS_IOCTL_DIR |
  InitFlag.AUTO_INVAL_DATA | InitFlag.ASYNC_DIO | InitFlag.PARALLEL_DIROPS | InitFlag.HANDLE_KILLPRIV | InitFlag.MAX_PAGES;

export class FuseSession {
  private initialised = false;
  private destroyed = false;
  private inFlight = 0;
  private inFlightBytes = 0;
  private paused = false;
  private idleWaiters: (() => void)[] = [];
  /** The kernel's protocol minor version (after INIT). */
  kernelMinor = 0;

  constructor(
    private readonly file: FuseFile,
    private readonly sink: FuseReplySink,
    private readonly log?: Logger,
    private readonly limits: FuseSessionLimits = DEFAULT_LIMITS,
  ) {}

  /** Requests being answered. */
  get pending(): number { return this.inFlight; }

  /** Whether the kernel sent DESTROY (the file system is going away). */
  get isDestroyed(): boolean { return this.destroyed; }

  /** One request as read from the device. */
  handle(buf: Buffer): void {
    const d = decodeRequest(buf);
    if (!d) {
      this.log?.warn({ bytes: buf.length }, 'FUSE request shorter than its header ignored');
      return;
    }
    const { header } = d;
    if ('errno' in d) {
      this.send(header, errorReply(header.unique, fuseErr('EINVAL').errno));
      return;
    }
    const { req } = d;
    if (isNoReply(header.opcode)) {
      // FORGET: nothing to forget (one inode that lives as long as the mount).
      // INTERRUPT: answered by ignoring it, which the protocol allows: the
      // request it names completes normally (a block request cannot be taken back).
      return;
    }
    if (req.op === 'init') {
      this.send(header, this.init(header, req));
      return;
    }
    // libfuse answers anything before INIT with EIO.
    if (!this.initialised) {
      this.send(header, errorReply(header.unique, fuseErr('EIO').errno));
      return;
    }
    const size = req.op === 'write' ? req.data.length : req.op === 'read' ? req.size : 0;
    this.begin(size);
    let pending: Promise<Buffer[]>;
    try {
      pending = this.dispatch(header, req);
    } catch (e) {
      pending = Promise.reject(e);
    }
    pending.then(
      (reply) => this.send(header, reply),
      (e: unknown) => this.send(header, errorReply(header.unique, fuseErrno(e, this.log, { op: req.op, unique: String(header.unique) }))),
    ).finally(() => this.end(size));
  }

  /** Resolves once no request is in flight. */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private init(header: InHeader, req: Extract<FuseRequest, { op: 'init' }>): Buffer[] {
    if (req.major !== FUSE_KERNEL_VERSION) {
      // A newer major: answer with ours and wait for the kernel to retry (fuse.rst); an older one is unsupported.
      if (req.major > FUSE_KERNEL_VERSION) return okReply(header.unique, initOut({ minor: 0, maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0 }));
      this.log?.error({ major: req.major, minor: req.minor }, 'unsupported FUSE protocol version');
      return errorReply(header.unique, fuseErr('EPROTO').errno);
    }
    this.kernelMinor = req.minor;
    this.initialised = true;
    const flags = req.flags & WANTED_FLAGS;
    return okReply(header.unique, initOut({
      minor: req.minor,
      maxReadahead: req.maxReadahead,
      flags,
      maxBackground: 0,
      congestionThreshold: 0,
      maxWrite: this.limits.maxWrite,
      timeGran: 1,
      maxPages: flags & InitFlag.MAX_PAGES ? this.limits.maxPages : 0,
    }));
  }

  private async dispatch(header: InHeader, req: FuseRequest): Promise<Buffer[]> {
    const u = header.unique;
    const attr = (a: FuseAttr) => okReply(u, attrOut(a, this.limits.attrValid));
    switch (req.op) {
      case 'lookup':
        // The mount is one file; it has no names below it.
        throw fuseErr('ENOENT');
      case 'getattr':
        return attr(await this.file.getattr());
      case 'setattr':
        return attr(await this.file.setattr(req.valid & FATTR_ACTIONS, req));
      case 'open':
        return okReply(u, openOut(0n, 0));
      case 'release':
        return okReply(u);
      case 'read':
        return okReply(u, await this.file.read(req.offset, req.size));
      case 'write':
        return okReply(u, writeOut(await this.file.write(req.offset, req.data)));
      case 'statfs':
        // libfuse's answer for a file system without statfs: 512-byte blocks, 255-byte names, nothing counted.
        return okReply(u, statfsOut({ blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, bsize: 512, namelen: 255, frsize: 0 }));
      case 'fsync':
        await this.file.fsync();
        return okReply(u);
      case 'flush':
        await this.file.flush();
        return okReply(u);
      case 'fallocate':
        await this.file.fallocate(req.offset, req.length, req.mode);
        return okReply(u);
      case 'lseek':
        return okReply(u, lseekOut(await this.file.lseek(req.offset, req.whence)));
      case 'destroy':
        this.destroyed = true;
        return okReply(u);
      default:
        if (header.nodeid !== BigInt(FUSE_ROOT_ID)) throw fuseErr('ENOENT');
        throw fuseErr('ENOSYS');
    }
  }

  private send(header: InHeader, parts: Buffer[]): void {
    const err = this.sink.reply(parts);
    // ENOENT: interrupted or aborted; nothing waits for this answer any more.
    if (err !== 0 && err !== fuseErr('ENOENT').errno) this.log?.warn({ opcode: header.opcode, errno: err }, 'FUSE reply not accepted');
  }

  private begin(bytes: number): void {
    this.inFlight++;
    this.inFlightBytes += bytes;
    if (!this.paused && (this.inFlight >= this.limits.maxInFlight || this.inFlightBytes >= this.limits.maxInFlightBytes)) {
      this.paused = true;
      this.sink.setReading(false);
    }
  }

  private end(bytes: number): void {
    this.inFlight--;
    this.inFlightBytes -= bytes;
    if (this.paused && this.inFlight < this.limits.maxInFlight / 2 && this.inFlightBytes < this.limits.maxInFlightBytes / 2) {
      this.paused = false;
      this.sink.setReading(true);
    }
    if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
  }
}

export { FuseErrno };
