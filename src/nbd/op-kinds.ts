/** NBD commands as the export layer's request kinds, and as QEMU's accounting types of the exported node. */
import { Cmd } from '../nbd-protocol/constants.ts';
import { ExportOp, type ExportOpIndex } from '../export/io-stats.ts';

/** ExportOp of each NBD command, by command number (undefined: not a request, e.g. DISC). */
export const EXPORT_OP: readonly (ExportOpIndex | undefined)[] = (() => {
  const t: (ExportOpIndex | undefined)[] = [];
  t[Cmd.READ] = ExportOp.READ;
  t[Cmd.WRITE] = ExportOp.WRITE;
  t[Cmd.FLUSH] = ExportOp.FLUSH;
  t[Cmd.TRIM] = ExportOp.TRIM;
  t[Cmd.CACHE] = ExportOp.CACHE;
  t[Cmd.WRITE_ZEROES] = ExportOp.WRITE_ZEROES;
  t[Cmd.BLOCK_STATUS] = ExportOp.BLOCK_STATUS;
  return t;
})();

/** QEMU's accounting type (BlockAcctType) of each ExportOp; block status and cache are not accounted. */
export const NODE_KIND: readonly ('read' | 'write' | 'flush' | 'unmap' | undefined)[] = ['read', 'write', 'write', 'unmap', 'flush', undefined, undefined];
