/**
 * quorum's options (QEMU's BlockdevOptionsQuorum) and quorum_open's checks,
 * in its order and with its texts. In fifo mode QEMU reads neither
 * blkverify nor rewrite-corrupted, so they are not checked (nor used) there.
 */
import { BlockError } from '../../../util/errors.ts';
import { arr, enm, obj, opt, req } from '../../../qapi/types.ts';
import { BlockdevRef } from '../../options.ts';

export const BlockdevOptionsQuorum = obj('BlockdevOptionsQuorum', [
  opt('blkverify', 'bool', 'true if the driver must print content mismatch set to false by default'),
  req('children', arr(BlockdevRef), 'the children block devices to use'),
  req('vote-threshold', 'int', 'the vote limit under which a read will fail'),
  opt('rewrite-corrupted', 'bool', 'rewrite corrupted data when quorum is reached (Since 2.1)'),
  opt('read-pattern', enm('QuorumReadPattern', ['quorum', 'fifo'], 'An enumeration of quorum read patterns.'), 'choose read pattern and set to quorum by default (Since 2.2)'),
]);

export interface QuorumSettings {
  threshold: number;
  fifo: boolean;
  blkverify: boolean;
  rewrite: boolean;
}

/** quorum_open's checks of the options, given how many children there are. */
export function quorumSettings(options: Record<string, unknown>, children: number): QuorumSettings {
  if (children < 1) throw new BlockError('EINVAL', 'Number of provided children must be 1 or more');
  const threshold = options['vote-threshold'] as number;
  if (threshold < 1) throw new BlockError('EINVAL', "Parameter 'vote-threshold' expects a value >= 1");
  if (threshold > children) throw new BlockError('EINVAL', 'threshold may not exceed children count');
  const fifo = options['read-pattern'] === 'fifo';
  if (fifo) return { threshold, fifo, blkverify: false, rewrite: false };
  const blkverify = options.blkverify === true;
  if (blkverify && (children !== 2 || threshold !== 2)) {
    throw new BlockError('EINVAL', 'blkverify=on can only be set if there are exactly two files and vote-threshold is 2');
  }
  const rewrite = options['rewrite-corrupted'] === true;
  if (rewrite && blkverify) throw new BlockError('EINVAL', 'rewrite-corrupted=on cannot be used with blkverify=on');
  return { threshold, fifo, blkverify, rewrite };
}
