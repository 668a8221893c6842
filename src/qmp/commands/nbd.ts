/**
 * The NBD server commands (qapi/block-export.json): nbd-server-start,
 * nbd-server-stop, and the legacy nbd-server-add and nbd-server-remove,
 * which go through the same export path as block-export-add/del
 * (./exports.ts, src/export).
 *
 * qsd has one NBD server; blockd may have several listeners (one per
 * --nbd-server). nbd-server-start refuses while any runs, nbd-server-stop
 * stops them all and removes every NBD export first, as qsd does.
 */
import { startNbdServer, type NbdServerStart } from '../../nbd/start.ts';
import { NBD_EXPORT_TYPE } from '../../nbd/exports.ts';
import { BlockExportRemoveMode, type BlockExportOptionsNbdValue, type BlockExportOptionsValue } from '../../qapi/block-export.ts';
import { SocketAddressLegacy } from '../../qapi/sockets.ts';
import { obj, opt, req } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import type { CommandDef, QmpHost } from '../command.ts';
import { addExport } from './exports.ts';

function requireServer(host: QmpHost): void {
  if (host.nbdServers.length === 0) throw genericError('NBD server not running');
}

async function startServer(host: QmpHost, a: Omit<NbdServerStart, 'addr'> & { addr: { type: string; data: Record<string, string> } }): Promise<void> {
  if (host.nbdServers.length > 0) throw genericError('NBD server already running');
  // SocketAddressLegacy's {type, data} is SocketAddress flattened.
  host.nbdServers.push(await startNbdServer(host.nbdExports, { ...a, addr: { type: a.addr.type, ...a.addr.data } }, host.log, host.objects));
}

async function stopServers(host: QmpHost): Promise<void> {
  requireServer(host);
  await host.exports.closeAll(NBD_EXPORT_TYPE);
  const servers = host.nbdServers.splice(0);
  await Promise.all(servers.map((s) => s.destroy()));
  host.log.info('NBD server stopped');
}

export const nbdCommands: CommandDef[] = [
  {
    name: 'nbd-server-start',
    args: obj('q_obj_nbd-server-start-arg', [
      req('addr', SocketAddressLegacy, 'Address on which to listen.'),
      opt('tls-creds', 'str', 'ID of the TLS credentials object (blockd: TLS is not supported)'),
      opt('tls-authz', 'str', 'ID of the QAuthZ authorization object'),
      opt('max-connections', 'uint32', 'The maximum number of connections to allow at the same time, 0 for unlimited.'),
    ]),
    doc: 'Start an NBD server listening on the given host and port. Block devices can then be exported using block-export-add.',
    handler: (a, ctx) => startServer(ctx.host, a),
  },
  {
    name: 'nbd-server-stop',
    doc: 'Stop the NBD server(s): every export is removed (clients are disconnected) and the listeners close.',
    handler: (_a, ctx) => stopServers(ctx.host),
  },
  {
    name: 'nbd-server-add',
    args: obj('q_obj_nbd-server-add-arg', [
      opt('name', 'str', 'Export name (default: device); also the export id'),
      opt('description', 'str', 'Free-form description of the export, up to 4096 bytes.'),
      req('device', 'str', 'The device name or node name of the node to be exported'),
      opt('writable', 'bool', 'Whether clients should be able to write to the device via the NBD connection (default false).'),
      opt('bitmap', 'str', 'Also export a single dirty bitmap reachable from device'),
    ]),
    features: ['deprecated'],
    doc: 'Export a block node to QEMU\'s embedded NBD server (legacy form of block-export-add).',
    handler(a: { name?: string; description?: string; device: string; writable?: boolean; bitmap?: string }, ctx) {
      const node = ctx.graph.nodes.get(a.device);
      if (!node) throw genericError(`Cannot find device='${a.device}' nor node-name='${a.device}'`);
      const name = a.name ?? a.device;
      const options: BlockExportOptionsValue & BlockExportOptionsNbdValue = {
        type: NBD_EXPORT_TYPE, id: name, 'node-name': a.device,
        // As qsd: a read-only node is exported read-only rather than refused.
        writable: node.readOnly ? false : a.writable,
        name, description: a.description, bitmaps: a.bitmap !== undefined ? [a.bitmap] : undefined,
      };
      addExport(ctx, options);
    },
  },
  {
    name: 'nbd-server-remove',
    args: obj('q_obj_nbd-server-remove-arg', [
      req('name', 'str', 'Block export id.'),
      opt('mode', BlockExportRemoveMode, 'Mode of command operation (default: safe)'),
    ]),
    features: ['deprecated'],
    doc: 'Remove NBD export by name (legacy form of block-export-del).',
    handler(a: { name: string; mode?: 'safe' | 'hard' }, ctx) {
      const exp = ctx.host.exports.get(a.name);
      if (exp && exp.type !== NBD_EXPORT_TYPE) throw genericError(`Block export '${a.name}' is not an NBD export`);
      return ctx.host.exports.del(a.name, a.mode);
    },
  },
];
