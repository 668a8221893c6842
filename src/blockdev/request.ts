/**
 * Request flags of the block layer itself. They are not NBD's bits: each wire
 * protocol translates to and from these at its edge.
 */
export const ReqFlag = {
  /** Force unit access: the data is stable when the request completes. */
  FUA: 1,
  /** Write-zeroes may punch a hole instead of writing zeroes. */
  MAY_UNMAP: 2,
  /** Write-zeroes must fail with ENOTSUP rather than fall back to writing zero buffers. */
  NO_FALLBACK: 4,
  /** Block-status: one extent is enough. */
  REQ_ONE: 8,
} as const;

/**
 * What a read or write returns when it finished before returning (a page-cache
 * hit, a null-co request). The data path compares identity with it and
 * carries on in the same call, which at queue depth 1 saves the promise steps
 * that are otherwise most of a request's CPU time; anyone else just awaits it.
 */
export const COMPLETED: Promise<void> = Promise.resolve();

/** One run of a node's address space with uniform status. */
export interface Extent {
  offset: number;
  length: number;
  /** Reads return data stored here (not a hole). */
  data: boolean;
  /** Reads return zeroes. */
  zero: boolean;
  /** Allocated in this node (as opposed to inherited from a backing node or unallocated). */
  allocated: boolean;
  /** Depth in the backing chain where the data lives: 1 = this layer, 0 = nowhere (unallocated). */
  depth: number;
}

/** What a node can do, computed once at open. */
export interface Limits {
  /** Every request offset and length reaching the driver is a multiple of this. */
  alignment: number;
  /** Largest request the driver accepts (bytes); larger ones are split. */
  maxTransfer: number;
  /** The driver honours FUA itself; otherwise the node emulates it with a flush. */
  canFua: boolean;
  /** The driver implements write-zeroes efficiently. */
  canZero: boolean;
  /** The driver implements discard. */
  canTrim: boolean;
}

export const DEFAULT_MAX_TRANSFER = 32 * 1024 * 1024;
