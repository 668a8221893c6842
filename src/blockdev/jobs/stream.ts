/**
 * block-stream: copies into `top` whatever its backing chain holds above
 * `base` (down to `bottom`), then makes `base` its backing node (none
 * without a base) and records that in the image header.
 *
 * The copy goes through a copy-on-read filter inserted above `top`: every
 * user of `top` is moved onto the filter for the job's life, so a user's
 * write never races with older data being copied up. Reading a range
 * through the filter is what copies it; a range `top` already holds is
 * skipped. The pieces are qsd's (see run()), so what reads as zeroes
 * becomes zero clusters exactly where qsd's copy-on-read makes them. Copying is idempotent, so a cancelled stream can simply be
 * started again. Progress counts the whole length (as qsd does).
 */
import { BlockJob, type BlockJobOptions, type BlockdevOnError } from './block-job.ts';
import { READ_PERM } from '../edge.ts';
import { replaceNode, setBacking } from '../surgery/replace.ts';
import { removeFilter } from '../surgery/filter.ts';
import { copyRuns } from '../filters/copy-on-read.ts';
import { copyBuffers } from '../copy-buffers.ts';
import { backingDepth } from '../surgery/walk.ts';
import type { BlockNode } from '../node.ts';

const CHUNK = 512 * 1024;
const NO_PERM = { read: false, write: false, resize: false };

/** The next layer down (QEMU's bdrv_filter_or_cow_bs). */
const below = (n: BlockNode): BlockNode | undefined => n.child('backing') ?? (n.isFilter ? n.primaryChild : undefined);

export interface StreamJobOptions extends BlockJobOptions {
  top: BlockNode;
  /** The new backing node (undefined: none). */
  base?: BlockNode;
  /** The lowest node whose data is copied (undefined: the whole chain). */
  bottom?: BlockNode;
  /** Backing file name to record in the header (default: the base's file name). */
  backingFile?: string;
  onError: BlockdevOnError;
  filterNodeName?: string;
  /** Called once the job is over, whatever its outcome (the command reopens a top it made writable back read-only, as QEMU's stream_clean). */
  onFinished?: () => Promise<void>;
}

export class StreamJob extends BlockJob {
  readonly type = 'stream' as const;
  private filter?: BlockNode;

  constructor(private readonly o: StreamJobOptions) {
    super(o);
  }

  /**
   * Set-up that may still fail, before start: QEMU's edges of a stream job.
   * `top` is its 'active node' (others may do anything but resize it); each
   * layer streamed is an 'intermediate node' that others may only read, so a
   * writable export of one refuses the job with qsd's permission conflict.
   * The edges also mark the nodes as the job's (other jobs are refused on them).
   */
  setUp(): void {
    const { top, base } = this.o;
    this.useNode(top, 'active node', NO_PERM, { read: true, write: true, resize: false });
    for (let n = below(top); n && n !== base; n = below(n)) this.useNode(n, 'intermediate node', NO_PERM, READ_PERM);
  }

  /** Undoes setUp after a failure before start. */
  async tearDown(): Promise<void> {
    await this.releaseNodes();
  }

  protected async run(): Promise<void> {
    const { top, bottom } = this.o;
    // The base is top's own backing: nothing to copy, and no length is announced (qsd: len 0).
    if (bottom === top) return;
    const len = top.length();
    this.progressSetRemaining(len);
    this.filter = await this.graph.add({
      driver: 'copy-on-read', file: top.nodeName,
      ...(this.o.filterNodeName ? { 'node-name': this.o.filterNodeName } : {}),
      ...(bottom ? { bottom: bottom.nodeName } : {}),
    }, true);
    const filter = this.filter;
    await replaceNode(this.graph, top, filter);
    const limit = backingDepth(top, bottom);
    // QEMU's stream_run: from each offset, one run of at most CHUNK that `top` holds, or that one
    // layer holds alike (copied up when that layer lies above the base), or that nothing above the
    // base holds. Reading a piece through the copy-on-read filter is what copies it (the filter has
    // written the data, or write-zeroes for an all-zero piece, when the read returns).
    await this.copyPieces(len, this.o.onError, async (off) => {
      const [run] = copyRuns(await top.blockStatus(off, Math.min(CHUNK, len - off)), limit);
      return { length: run!.length, copy: run!.copy };
    }, async (o, l) => {
      const buf = copyBuffers.get(l);
      try { await filter.read(o, buf); } finally { copyBuffers.put(buf); }
    });
  }

  protected override async prepare(): Promise<void> {
    const { top, base } = this.o;
    const header = base
      ? { backingFile: this.o.backingFile ?? base.fileName(), backingFormat: base.driver.name }
      : {};
    await this.removeFilter();
    await setBacking(this.graph, top, base, header);
  }

  protected override async clean(): Promise<void> {
    await this.removeFilter();
    await this.o.onFinished?.();
    await super.clean();
  }

  /** Gives the users back to `top` and drops the filter. */
  private async removeFilter(): Promise<void> {
    const f = this.filter;
    if (!f) return;
    this.filter = undefined;
    await removeFilter(this.graph, f, this.o.top, 'gate');
    // Opened by its driver (blockdev-add'ed): closed by it too.
    await f.close();
  }
}
