/**
 * The NBD server's and the exports' options, as in qsd 7.2's
 * qapi/block-export.json (member order matters: it decides which error is
 * reported first). Shared by the command line and QMP.
 *
 * BlockExportOptions is a flat union over the export types; its variants
 * come from the export-driver table (src/export/drivers.ts), so the type
 * enum lists exactly the types the daemon serves.
 */
import { alt, arr, enm, obj, opt, req, type AlternateType, type EnumType, type ObjectType } from './types.ts';
import { SocketAddress, type SocketAddressValue } from './sockets.ts';

/** --nbd-server. */
export const NbdServerOptions: ObjectType = obj('NbdServerOptions', [
  req('addr', SocketAddress, 'address on which to listen'),
  opt('tls-creds', 'str', 'ID of the TLS credentials object'),
  opt('tls-authz', 'str', 'ID of the QAuthZ authorization object'),
  opt('max-connections', 'uint32', 'maximum number of simultaneous connections, 0 for unlimited (default: 100)'),
  opt('handshake-max-seconds', 'uint32', 'blockd: time limit for a client\'s handshake, 0 for none'),
]);

/** A validated NbdServerOptions (nbd-server-start's arguments, its address flattened, are one too). */
export interface NbdServerOptionsValue {
  addr: SocketAddressValue;
  'tls-creds'?: string;
  'tls-authz'?: string;
  'max-connections'?: number;
  'handshake-max-seconds'?: number;
}

export const BlockDirtyBitmap: ObjectType = obj('BlockDirtyBitmap', [
  req('node', 'str', 'name of the device or node the bitmap is on'),
  req('name', 'str', 'name of the dirty bitmap'),
]);

/** A bitmap on the exported node (by name) or on another node ({node, name}). */
export const BlockDirtyBitmapOrStr: AlternateType = alt('BlockDirtyBitmapOrStr', ['str', BlockDirtyBitmap]);

/** The NBD variant of BlockExportOptions. */
export const BlockExportOptionsNbd: ObjectType = obj('BlockExportOptionsNbd', [
  opt('name', 'str', 'export name (default: the node name)'),
  opt('description', 'str', 'free-form description of the export, up to 4096 bytes'),
  opt('bitmaps', arr(BlockDirtyBitmapOrStr), 'dirty bitmaps to export as qemu:dirty-bitmap:NAME'),
  opt('allocation-depth', 'bool', 'also export qemu:allocation-depth'),
]);

/** The members of BlockExportOptionsNbd, validated. */
export interface BlockExportOptionsNbdValue {
  name?: string;
  description?: string;
  bitmaps?: (string | { node: string; name: string })[];
  'allocation-depth'?: boolean;
}

export const FuseExportAllowOther: EnumType = enm('FuseExportAllowOther', ['off', 'on', 'auto'], 'Possible allow_other modes for FUSE exports.');

/** The FUSE variant of BlockExportOptions. */
export const BlockExportOptionsFuse: ObjectType = obj('BlockExportOptionsFuse', [
  req('mountpoint', 'str', 'path on which to export the block device via FUSE; must be an existing regular file'),
  opt('growable', 'bool', 'whether writes beyond the EOF should grow the block node (default: false)'),
  opt('allow-other', FuseExportAllowOther, 'whether other users may access the export (mount option allow_other; default: auto)'),
]);

/** The members of BlockExportOptionsFuse, validated. */
export interface BlockExportOptionsFuseValue {
  mountpoint: string;
  growable?: boolean;
  'allow-other'?: 'off' | 'on' | 'auto';
}

/** The export types the daemon serves (qsd 7.2 has nbd, vhost-user-blk, fuse and vduse-blk). */
export const blockExportType = (types: readonly string[]): EnumType => enm('BlockExportType', [...types]);

/** --export (implied key 'type') and block-export-add: the common members, then the type's variant. */
export function blockExportOptionsType(variants: Readonly<Record<string, ObjectType>>): ObjectType {
  return obj('BlockExportOptions', [
    req('type', blockExportType(Object.keys(variants)), 'block export type'),
    req('id', 'str', 'unique identifier of the export'),
    opt('fixed-iothread', 'bool', 'prevent the node from moving to another thread'),
    opt('iothread', 'str', 'iothread object to run the export in'),
    req('node-name', 'str', 'node to export'),
    opt('writable', 'bool', 'whether clients may write (default: false)'),
    opt('writethrough', 'bool', 'flush after every write before completing it (default: false)'),
  ], { union: { discriminator: 'type', variants: { ...variants } } });
}

/** A validated BlockExportOptions: the common members; the type's own members are read by its driver. */
export interface BlockExportOptionsValue {
  type: string;
  id: string;
  'fixed-iothread'?: boolean;
  iothread?: string;
  'node-name': string;
  writable?: boolean;
  writethrough?: boolean;
}

export const BlockExportRemoveMode: EnumType = enm('BlockExportRemoveMode', ['safe', 'hard'], 'Mode for removing a block export.');

/** One entry of query-block-exports. */
export const blockExportInfoType = (types: readonly string[]): ObjectType => obj('BlockExportInfo', [
  req('id', 'str'), req('type', blockExportType(types)), req('node-name', 'str'), req('shutting-down', 'bool'),
], { doc: 'Information about a single block export.' });

export interface BlockExportInfoValue { id: string; type: string; 'node-name': string; 'shutting-down': boolean }
