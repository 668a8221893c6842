/**
 * Write thresholds (QEMU block/write-threshold.c, block-set-write-threshold):
 * the first write, write-zeroes or effective discard that would end past a
 * node's threshold reports how far past it goes, once, before it runs, and
 * the threshold is then disabled (0), as QEMU does to keep a busy guest from
 * flooding the monitor. Management tools put one on a thin volume's file
 * node to grow it in time. BlockNode does the check on its request paths.
 */
import type { BlockNode } from './node.ts';

export type ThresholdExceeded = (node: BlockNode, amountExceeded: number, threshold: number) => void;

/** Sets (or with 0 clears) the threshold of `node`; `onExceeded` is told once. */
export function setWriteThreshold(node: BlockNode, bytes: number, onExceeded: ThresholdExceeded): void {
  node.writeThreshold = bytes;
  node.onWriteThreshold = bytes > 0 ? (end) => onExceeded(node, end - bytes, bytes) : undefined;
}
