/**
 * The ops of a mirror's 'mirror_top' filter: every request goes to the
 * node the mirror currently serves from (the source, after a pivot the
 * target); in copy-mode=write-blocking a guest write also goes to the
 * target before it completes, for as long as the mirror says so.
 */
import type { DriverOps } from '../driver.ts';
import type { BlockNode } from '../node.ts';

export interface MirrorTopState {
  /** Where requests go now. */
  current(): BlockNode;
  target: BlockNode;
  /** write-blocking: writes also go to the target (false once the filter is being taken out). */
  writeThrough(): boolean;
  /** The source's capabilities the filter advertises. */
  source: BlockNode;
}

export function mirrorTopOps(s: MirrorTopState): DriverOps {
  const alsoTarget = async (fn: (n: BlockNode) => Promise<void>) => {
    await fn(s.current());
    if (s.writeThrough()) {
      try { await fn(s.target); } catch { /* the range is dirty anyway and is copied again */ }
    }
  };
  return {
    length: () => s.current().length(),
    read: (o, buf) => s.current().read(o, buf),
    write: (o, buf, flags) => alsoTarget((n) => n.write(o, buf, flags)),
    writeZeroes: (o, l, flags) => alsoTarget((n) => n.writeZeroes(o, l, flags)),
    discard: (o, l) => s.current().discard(o, l),
    flush: () => s.current().flush(),
    blockStatus: (o, l, flags) => s.current().blockStatus(o, l, flags),
    limits: { canFua: true, canZero: s.source.limits.canZero, canTrim: s.source.limits.canTrim },
  };
}
