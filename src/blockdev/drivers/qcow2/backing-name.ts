/**
 * qcow2's Driver.setBackingFile (QEMU's qcow2_change_backing_file): a new
 * backing file name and format in the image header, written through the
 * node's file child while the node's image is closed (graph surgery opens
 * it again on its new children afterwards, reading the new header).
 */
import type { BlockNode } from '../../node.ts';
import { parseHeader, serializeHeader } from './header.ts';

export async function setBackingFileName(node: BlockNode, backingFile: string | undefined, backingFormat: string | undefined): Promise<void> {
  const file = node.child('file');
  if (!file) return;
  const first = Buffer.alloc(Math.min(file.length(), 2 * 1024 * 1024));
  await file.read(0, first);
  const h = parseHeader(first);
  h.backingFile = backingFile;
  h.backingFormat = backingFile === undefined ? undefined : backingFormat;
  if (backingFile === undefined) { h.backingFileOffset = 0; h.backingFileSize = 0; }
  const out = serializeHeader(h);
  await file.write(0, out);
  await file.flush();
}
