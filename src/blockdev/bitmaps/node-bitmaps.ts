/**
 * The dirty bitmaps of one node, and what a format that persists them (qcow2)
 * offers the block layer: a BitmapStore, a typed capability of the node's
 * operations (DriverOps.bitmapStore). Apart from the registry so that
 * driver.ts and the drivers can name these types without importing it.
 */
import type { DirtyBitmap } from './dirty-bitmap.ts';

/** What a format driver that persists bitmaps offers (see drivers/qcow2/bitmaps-store.ts). */
export interface BitmapStore {
  /** The node's bitmaps as the store keeps them (it marks writes itself, before the data is written). */
  readonly nodeBitmaps: NodeBitmaps;
  /** The node's bitmaps, newest first; the store owns the list. */
  readonly bitmaps: DirtyBitmap[];
  /** Refuses (QEMU's text) a new persistent bitmap it cannot store. */
  checkCanStore(name: string, granularity: number): void;
  /** A persistent bitmap was added (or made persistent). */
  added(bm: DirtyBitmap): Promise<void>;
  /** A persistent bitmap is going away: drop it from the image. */
  removed(bm: DirtyBitmap): Promise<void>;
  /** A persistent bitmap's contents or flags changed outside writes (clear, merge, enable, disable). */
  changed(bm: DirtyBitmap): Promise<void>;
}

/** The bitmaps of one node. */
export class NodeBitmaps {
  readonly bitmaps: DirtyBitmap[];
  constructor(readonly store?: BitmapStore, private readonly lengthOf?: () => number) {
    this.bitmaps = store?.bitmaps ?? [];
  }

  find(name: string): DirtyBitmap | undefined {
    this.syncSize();
    return this.bitmaps.find((b) => b.name === name);
  }

  /** Follows the node's size (block_resize): bitmaps grow with it, or lose what lies past a smaller end, as in QEMU. */
  syncSize(): void {
    if (!this.lengthOf || this.bitmaps.length === 0) return;
    let len: number;
    try { len = this.lengthOf(); } catch { return; }
    for (const b of this.bitmaps) if (b.size !== len) b.resize(len);
  }

  /** Marks a change in every recording bitmap. */
  readonly observe = (offset: number, length: number): void => {
    if (this.bitmaps.length === 0) return;
    this.syncSize();
    for (const b of this.bitmaps) if (b.recording && !b.readOnly) b.mark(offset, length);
  };
}

