/**
 * NBD server and export commands (qapi/block-export.json): nbd-server-start,
 * nbd-server-stop, nbd-server-add, nbd-server-remove, block-export-add,
 * block-export-del, query-block-exports; event BLOCK_EXPORT_DELETED.
 *
 * qsd has one NBD server; blockd may have several listeners (one per
 * --nbd-server). nbd-server-start refuses while any runs, nbd-server-stop
 * stops them all and removes every export first, as qsd does.
 *
 * block-export-del mode=safe refuses while clients are connected (qsd's
 * "export 'x' still in use"); mode=hard disconnects them. BLOCK_EXPORT_DELETED
 * follows once the export is gone: before the reply when nobody was
 * connected, after it otherwise, as in qsd.
 */
import { BlockError } from '../../util/errors.ts';
import { errorText } from '../../platform/native.ts';
import { NbdServer } from '../../nbd/server.ts';
import type { NbdExportOptions } from '../../nbd/exports.ts';
import { BlockExportOptions } from '../../qapi/block-export.ts';
import { InetSocketAddress, UnixSocketAddress, VsockSocketAddress } from '../../qapi/sockets.ts';
import { arr, enm, obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import type { CommandContext, CommandDef, EventDef, QmpHost } from '../command.ts';

const SocketAddressType = enm('SocketAddressType', ['inet', 'unix', 'vsock', 'fd']);
const wrap = (name: string, t: ObjectType) => obj(`q_obj_${name}Wrapper`, [req('data', t)]);

/** nbd-server-start's (legacy) address: {type, data: {...}}. */
export const SocketAddressLegacy: ObjectType = obj('SocketAddressLegacy', [req('type', SocketAddressType)], {
  union: {
    discriminator: 'type',
    variants: {
      inet: wrap('InetSocketAddress', InetSocketAddress),
      unix: wrap('UnixSocketAddress', UnixSocketAddress),
      vsock: wrap('VsockSocketAddress', VsockSocketAddress),
      fd: wrap('String', obj('String', [req('str', 'str')])),
    },
  },
});

const BlockExportRemoveMode = enm('BlockExportRemoveMode', ['safe', 'hard'], 'Mode for removing a block export.');
const BlockExportInfo = obj('BlockExportInfo', [
  req('id', 'str'), req('type', enm('BlockExportType', ['nbd'])), req('node-name', 'str'), req('shutting-down', 'bool'),
], { doc: 'Information about a single block export.' });

export const nbdEvents: EventDef[] = [
  { name: 'BLOCK_EXPORT_DELETED', data: obj('q_obj_BLOCK_EXPORT_DELETED-arg', [req('id', 'str', 'Block export id')]), doc: 'Emitted when a block export is removed and its id can be reused.' },
];

function requireServer(host: QmpHost): void {
  if (host.nbdServers.length === 0) throw genericError('NBD server not running');
}

/** Adds an export with qsd's checks in qsd's order (id, node, server running, then the export's own). */
function addExport(ctx: CommandContext, opts: NbdExportOptions, iothread?: string): void {
  const { host } = ctx;
  if (host.exports.get(opts.id)) throw genericError(`Block export id '${opts.id}' is already in use`);
  if (!ctx.graph.nodes.has(opts.nodeName)) ctx.graph.find(opts.nodeName);
  if (iothread !== undefined && host.objects.type(iothread) !== 'iothread') throw genericError(`iothread "${iothread}" not found`);
  requireServer(host);
  const exp = host.exports.add(ctx.graph, opts);
  host.log.info({ id: exp.id, name: exp.name, node: exp.node.nodeName }, 'export added');
}

async function removeExport(host: QmpHost, id: string, mode: 'safe' | 'hard'): Promise<void> {
  const exp = host.exports.get(id);
  if (!exp) throw genericError(`Export '${id}' is not found`);
  if (mode === 'safe' && exp.connections() > 0) throw genericError(`export '${id}' still in use`);
  const done = host.exports.remove(id, mode);
  if (exp.connections() === 0) return done;
  // Clients are being disconnected: reply now, BLOCK_EXPORT_DELETED follows.
  done.catch((err) => host.log.error({ err, id }, 'removing export failed'));
}

async function startServer(host: QmpHost, a: { addr: { type: string; data: Record<string, string> }; 'tls-creds'?: string; 'tls-authz'?: string; 'max-connections'?: number }): Promise<void> {
  if (host.nbdServers.length > 0) throw genericError('NBD server already running');
  if (a['tls-creds'] !== undefined) throw genericError(`No TLS credentials with id '${a['tls-creds']}'`);
  if (a['tls-authz'] !== undefined) throw genericError(`'tls-authz' requires 'tls-creds'`);
  const server = new NbdServer(host.exports, { maxConnections: a['max-connections'], logger: host.log });
  const d = a.addr.data;
  try {
    if (a.addr.type === 'inet') {
      const port = Number(d.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw genericError(`address resolution failed for ${d.host}:${d.port}: Servname not supported for ai_socktype`);
      await server.listenTcp(d.host!, port);
    } else if (a.addr.type === 'unix') {
      await server.listenUnix(d.path!);
    } else if (a.addr.type === 'fd') {
      const fd = Number(d.str);
      if (!/^\d+$/.test(d.str ?? '')) throw genericError(`File descriptor named '${d.str}' has not been found`);
      await server.listenFd(fd);
    } else {
      throw genericError(`blockd does not support ${a.addr.type} sockets`);
    }
  } catch (e) {
    if (e instanceof BlockError || (e as { qmpClass?: string }).qmpClass) throw e;
    const where = a.addr.type === 'unix' ? ` to ${d.path}` : '';
    throw genericError(`Failed to bind socket${where}: ${errorText(e)}`);
  }
  host.nbdServers.push(server);
  host.log.info({ addr: a.addr }, 'NBD server listening');
}

async function stopServers(host: QmpHost): Promise<void> {
  requireServer(host);
  for (const e of host.exports.list()) await host.exports.remove(e.id, 'hard').catch((err) => host.log.error({ err, id: e.id }, 'removing export failed'));
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
      if (!ctx.graph.nodes.has(a.device)) throw genericError(`Cannot find device='${a.device}' nor node-name='${a.device}'`);
      const name = a.name ?? a.device;
      addExport(ctx, {
        id: name, nodeName: a.device, name, description: a.description, writable: a.writable,
        bitmaps: a.bitmap !== undefined ? [a.bitmap] : undefined,
      });
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
    handler: (a: { name: string; mode?: 'safe' | 'hard' }, ctx) => removeExport(ctx.host, a.name, a.mode ?? 'safe'),
  },
  {
    name: 'block-export-add',
    args: BlockExportOptions,
    doc: 'Creates a new block export (blockd: NBD only).',
    handler(o: Record<string, unknown>, ctx) {
      // 7.2's bitmaps list takes a name or {node, name}; blockd looks bitmaps up on the exported node.
      const bitmaps = (o.bitmaps as (string | { name: string })[] | undefined)?.map((b) => (typeof b === 'string' ? b : b.name));
      addExport(ctx, {
        id: o.id as string,
        nodeName: o['node-name'] as string,
        name: o.name as string | undefined,
        description: o.description as string | undefined,
        writable: o.writable as boolean | undefined,
        writethrough: o.writethrough as boolean | undefined,
        bitmaps,
        allocationDepth: o['allocation-depth'] as boolean | undefined,
      }, o.iothread as string | undefined);
    },
  },
  {
    name: 'block-export-del',
    args: obj('q_obj_block-export-del-arg', [
      req('id', 'str', 'Block export id.'),
      opt('mode', BlockExportRemoveMode, 'Mode of command operation (default: safe)'),
    ]),
    doc: 'Request to remove a block export. safe: refused while clients are connected; hard: disconnects them. BLOCK_EXPORT_DELETED is emitted once the export is gone.',
    handler: (a: { id: string; mode?: 'safe' | 'hard' }, ctx) => removeExport(ctx.host, a.id, a.mode ?? 'safe'),
  },
  {
    name: 'query-block-exports',
    returns: arr(BlockExportInfo),
    doc: 'Lists the exports, newest first.',
    handler: (_a, ctx) => ctx.host.exports.list().reverse().map((e) => ({
      id: e.id, type: 'nbd', 'node-name': e.node.nodeName, 'shutting-down': e.shuttingDown,
    })),
  },
];
