/**
 * I/O on a format's file as QEMU's block layer does it for image formats
 * that write past the end of their file (vdi, vpc): reads past the end
 * are zeroes, writes past the end grow the file first (blockd's block
 * layer refuses requests beyond a node's end).
 */
import type { BlockNode } from './node.ts';

/** Reads [offset, offset+buf.length) of `file`; what lies past its end reads as zeroes. */
export async function readClipped(file: BlockNode, offset: number, buf: Buffer): Promise<void> {
  const n = Math.max(0, Math.min(buf.length, file.length() - offset));
  if (n > 0) await file.read(offset, buf.subarray(0, n));
  buf.fill(0, n);
}

/** Writes to `file`, growing it first when the write ends past its end. */
export async function writeGrowing(file: BlockNode, offset: number, buf: Buffer): Promise<void> {
  if (offset + buf.length > file.length()) await file.truncate(offset + buf.length);
  await file.write(offset, buf);
}
