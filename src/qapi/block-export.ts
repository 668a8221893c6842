/**
 * The NBD server's and the exports' options, as in qsd 7.2's
 * qapi/block-export.json (member order matters: it decides which error is
 * reported first). Shared by the command line and QMP.
 */
import { alt, arr, enm, obj, opt, req, type AlternateType, type ObjectType } from './types.ts';
import { SocketAddress } from './sockets.ts';


/** --nbd-server. */
export const NbdServerOptions: ObjectType = obj('NbdServerOptions', [
  req('addr', SocketAddress, 'address on which to listen'),
  opt('tls-creds', 'str', 'ID of the TLS credentials object'),
  opt('tls-authz', 'str', 'ID of the QAuthZ authorization object'),
  opt('max-connections', 'uint32', 'maximum number of simultaneous connections, 0 for unlimited (default: 100)'),
  opt('handshake-max-seconds', 'uint32', 'blockd: time limit for a client\'s handshake, 0 for none'),
]);

export const BlockDirtyBitmap: ObjectType = obj('BlockDirtyBitmap', [
  req('node', 'str', 'name of the device or node the bitmap is on'),
  req('name', 'str', 'name of the dirty bitmap'),
]);

/** A bitmap on the exported node (by name) or on another node ({node, name}). */
export const BlockDirtyBitmapOrStr: AlternateType = alt('BlockDirtyBitmapOrStr', ['str', BlockDirtyBitmap]);

export const BlockExportOptionsNbd: ObjectType = obj('BlockExportOptionsNbd', [
  opt('name', 'str', 'export name (default: the node name)'),
  opt('description', 'str', 'free-form description of the export, up to 4096 bytes'),
  opt('bitmaps', arr(BlockDirtyBitmapOrStr), 'dirty bitmaps to export as qemu:dirty-bitmap:NAME'),
  opt('allocation-depth', 'bool', 'also export qemu:allocation-depth'),
]);

/** blockd exports only over NBD (qsd 7.2 also has vhost-user-blk, fuse and vduse-blk). */
export const BlockExportType = enm('BlockExportType', ['nbd']);

/** --export (implied key 'type') and block-export-add. */
export const BlockExportOptions: ObjectType = obj('BlockExportOptions', [
  req('type', BlockExportType, 'block export type'),
  req('id', 'str', 'unique identifier of the export'),
  opt('fixed-iothread', 'bool', 'prevent the node from moving to another thread'),
  opt('iothread', 'str', 'iothread object to run the export in'),
  req('node-name', 'str', 'node to export'),
  opt('writable', 'bool', 'whether clients may write (default: false)'),
  opt('writethrough', 'bool', 'flush after every write before completing it (default: false)'),
], { union: { discriminator: 'type', variants: { nbd: BlockExportOptionsNbd } } });
