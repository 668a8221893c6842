/**
 * The protocol's own commands: qmp_capabilities, query-version,
 * query-commands, query-qmp-schema, quit (qapi/control.json, qapi/introspect.json).
 */
import { arr, enm, obj, opt, req } from '../../qapi/types.ts';
import { QmpError } from '../errors.ts';
import { introspect } from '../introspect.ts';
import { versionInfo } from '../version.ts';
import type { CommandDef } from '../command.ts';

const QMPCapability = enm('QMPCapability', ['oob'], 'Enumeration of capabilities to be advertised during initial client connection');

const VersionTriple = obj('VersionTriple', [req('major', 'int'), req('minor', 'int'), req('micro', 'int')]);
const VersionInfo = obj('VersionInfo', [req('qemu', VersionTriple), req('package', 'str')]);
const CommandInfo = obj('CommandInfo', [req('name', 'str', 'The command name')]);

const SchemaMetaType = enm('SchemaMetaType', ['builtin', 'enum', 'array', 'object', 'alternate', 'command', 'event']);
/** Loosely typed: its variants are documented in QEMU's qapi/introspect.json. */
const SchemaInfo = obj('SchemaInfo', [
  req('name', 'str'),
  req('meta-type', SchemaMetaType),
  opt('features', arr('str')),
]);

export const controlCommands: CommandDef[] = [
  {
    name: 'qmp_capabilities',
    args: obj('q_obj_qmp_capabilities-arg', [opt('enable', arr(QMPCapability), 'An optional list of QMPCapability values to enable')]),
    doc: 'Enable QMP capabilities and leave capabilities negotiation mode. Until then only this command is available.',
    allowedBeforeNegotiation: true,
    handler({ enable }: { enable?: string[] }, ctx) {
      if (ctx.session.negotiated) throw new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
      ctx.session.oob = (enable ?? []).includes('oob');
      ctx.session.negotiated = true;
    },
  },
  {
    name: 'query-version',
    returns: VersionInfo,
    doc: "Returns the current version: QEMU's (the qemu-storage-daemon version blockd is compatible with) and blockd's as the package.",
    handler: () => versionInfo(),
  },
  {
    name: 'query-commands',
    returns: arr(CommandInfo),
    doc: 'Return a list of supported QMP commands by this server',
    handler: (_args, ctx) => [...ctx.table.commands].reverse().map((c) => ({ name: c.name })),
  },
  {
    name: 'query-qmp-schema',
    returns: arr(SchemaInfo),
    doc: 'Command query-qmp-schema exposes the QMP wire ABI as an array of SchemaInfo.',
    handler: (_args, ctx) => introspect(ctx.table, ctx.graph),
  },
  {
    name: 'quit',
    doc: 'This command will cause blockd to exit gracefully, as on SIGTERM: exports end, nodes are flushed and closed.',
    async handler(_args, ctx) {
      // As qsd, the reply comes once exports and jobs are gone (after their events), just before the monitors close.
      await ctx.host.requestQuit();
    },
  },
];
