/**
 * The command table and the commands behind it, in process: introspection
 * (QEMU's format and numbering), help text, blockdev-reopen's all-or-nothing
 * semantics and permission checks, secrets, and the dispatcher's handling of
 * errors thrown by handlers.
 */
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { createCipheriv, randomBytes } from 'node:crypto';
import { Daemon } from '../../src/daemon/daemon.ts';
import { createLogger } from '../../src/daemon/logger.ts';
import { commandHelp, commandList } from '../../src/qmp/help.ts';
import { makeTable, type SessionState } from '../../src/qmp/command.ts';
import { Dispatcher } from '../../src/qmp/dispatcher.ts';
import { obj, req } from '../../src/qapi/types.ts';
import { BlockError } from '../../src/util/errors.ts';

let daemon: Daemon;
const session = (): SessionState => ({ negotiated: true, oob: false });
const run = (execute: string, args?: Record<string, unknown>) =>
  daemon.qmp.dispatcher.handle(args ? { execute, arguments: args } : { execute }, session());

beforeEach(async () => {
  daemon = new Daemon(createLogger('silent'));
  await daemon.start({
    objects: [], chardevs: [], monitors: [], nbdServers: [], exports: [], commands: [], daemonize: false, logLevel: 'silent',
    blockdevs: [
      { option: 'blockdev', value: 'null-co,node-name=n0,size=1048576' },
      { option: 'blockdev', value: 'driver=raw,node-name=r0,file=n0' },
      { option: 'blockdev', value: 'null-co,node-name=n1,size=1048576' },
    ],
  });
});

afterEach(async () => { await daemon.shutdown(); });

describe('query-qmp-schema', () => {
  it("uses QEMU's introspection format: commands, events, then numbered types in order of first use", async () => {
    const schema = (await run('query-qmp-schema')).return as Record<string, unknown>[];
    const names = new Set(schema.map((e) => e.name));
    const kinds = schema.map((e) => e['meta-type']);
    const firstType = kinds.findIndex((k) => k !== 'command' && k !== 'event');
    expect(kinds.slice(firstType).every((k) => k !== 'command' && k !== 'event')).toBe(true);
    expect(kinds.slice(0, firstType).lastIndexOf('command')).toBeLessThan(kinds.indexOf('event'));
    // Every type reference resolves; user types are numbers, arrays "[x]", built-ins by name.
    const refs: string[] = [];
    for (const e of schema) {
      for (const k of ['arg-type', 'ret-type', 'element-type']) if (typeof e[k] === 'string') refs.push(e[k] as string);
      for (const m of (e.members as { type?: string }[] | undefined) ?? []) if (m.type) refs.push(m.type);
      for (const v of (e.variants as { type: string }[] | undefined) ?? []) refs.push(v.type);
    }
    for (const r of refs) expect(names.has(r), r).toBe(true);
    const numbered = schema.filter((e) => /^\d+$/.test(e.name as string)).map((e) => Number(e.name));
    expect(numbered).toEqual([...numbered].sort((a, b) => a - b));
    expect(numbered[0]).toBe(0);
    for (const e of schema.filter((x) => x['meta-type'] === 'builtin')) {
      expect(['str', 'int', 'bool', 'number', 'any', 'null']).toContain(e.name);
    }
    const byName = new Map(schema.map((e) => [e.name, e]));
    const cmd = (n: string) => byName.get(n)!;
    expect(cmd('x-debug-query-block-graph').features).toEqual(['unstable']);
    expect(cmd('query-block-exports')['ret-type']).toMatch(/^\[\d+\]$/);
    const add = byName.get(cmd('blockdev-add')['arg-type'])!;
    expect(add.tag).toBe('driver');
    expect((add.variants as { case: string }[]).map((v) => v.case)).toEqual(daemon.graph.driverNames());
    expect((add.members as unknown[])[1]).toEqual({ name: 'node-name', default: null, type: 'str' });
    const resize = byName.get(cmd('block_resize')['arg-type'])!;
    expect(resize.members).toEqual([
      { name: 'device', default: null, type: 'str' }, { name: 'node-name', default: null, type: 'str' }, { name: 'size', type: 'int' },
    ]);
    const del = byName.get(byName.get(cmd('block-export-del')['arg-type'])!.members && (byName.get(cmd('block-export-del')['arg-type'])!.members as { type: string }[])[1]!.type)!;
    expect(del).toMatchObject({ 'meta-type': 'enum', values: ['safe', 'hard'], members: [{ name: 'safe' }, { name: 'hard' }] });
    for (const ev of ['BLOCK_EXPORT_DELETED', 'JOB_STATUS_CHANGE']) expect(byName.get(ev)?.['meta-type']).toBe('event');
    // Commands without arguments or results use the empty object type.
    const empty = byName.get(cmd('quit')['arg-type'])!;
    expect(empty).toEqual({ name: cmd('quit')['ret-type'], members: [], 'meta-type': 'object' });
  });

  it('query-commands lists the whole table', async () => {
    const cmds = ((await run('query-commands')).return as { name: string }[]).map((c) => c.name);
    expect(cmds.length).toBe(daemon.qmp.table.commands.length);
    for (const n of ['qmp_capabilities', 'query-version', 'blockdev-add', 'blockdev-reopen', 'block-export-del', 'object-add', 'query-jobs', 'quit']) {
      expect(cmds).toContain(n);
    }
  });
});

describe('help text', () => {
  it('describes commands from the same table', () => {
    expect(commandList(daemon.qmp.table)).toMatch(/^blockdev-del\s+Deletes a block device/m);
    expect(commandHelp(daemon.qmp.table, daemon.graph, 'block-export-del')).toBe([
      'block-export-del',
      '  Request to remove a block export. safe: refused while clients are connected; hard: disconnects them. BLOCK_EXPORT_DELETED is emitted once the export is gone.',
      '  arguments:',
      '    id: str - Block export id.',
      '    mode?: safe|hard - Mode of command operation (default: safe)',
    ].join('\n'));
    expect(commandHelp(daemon.qmp.table, daemon.graph, 'blockdev-add')).toContain('when driver = raw:\n      file: BlockdevRef (str or BlockdevOptions)');
    expect(commandHelp(daemon.qmp.table, daemon.graph, 'nope')).toBeUndefined();
  });
});

describe('blockdev-reopen', () => {
  it('changes read-only and common options, and omitted options return to their defaults', async () => {
    expect(await run('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': 'r0', file: 'n0', 'read-only': true, 'detect-zeroes': 'on', cache: { 'no-flush': true } }] })).toEqual({ return: {} });
    const r0 = daemon.graph.find('r0');
    expect(r0.readOnly).toBe(true);
    expect(r0.options['detect-zeroes']).toBe('on');
    expect(r0.children[0]!.perm.write).toBe(false);
    await expect(r0.write(0, Buffer.alloc(512))).rejects.toThrow(/read-only/);
    expect(await run('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': 'r0', file: 'n0' }] })).toEqual({ return: {} });
    expect(r0.readOnly).toBe(false);
    expect(r0.options['detect-zeroes']).toBeUndefined();
    expect(r0.children[0]!.perm.write).toBe(true);
    await r0.write(0, Buffer.alloc(512));
  });

  it('applies a list of nodes all together or not at all', async () => {
    const r = await run('blockdev-reopen', { options: [
      { driver: 'raw', 'node-name': 'r0', file: 'n0', 'read-only': true },
      { driver: 'null-co', 'node-name': 'n1', size: 5 },
    ] });
    expect(r).toEqual({ error: { class: 'GenericError', desc: "Cannot change the option 'size'" } });
    expect(daemon.graph.find('r0').readOnly).toBe(false);
    // A node below a writer cannot become read-only alone, but can with its parent.
    expect(await run('blockdev-reopen', { options: [{ driver: 'null-co', 'node-name': 'n0', size: 1048576, 'read-only': true }] }))
      .toEqual({ error: { class: 'GenericError', desc: "Read-only block node 'n0' cannot support read-write users" } });
    expect(daemon.graph.find('r0').children[0]!.perm.write).toBe(true);
    expect(await run('blockdev-reopen', { options: [
      { driver: 'null-co', 'node-name': 'n0', size: 1048576, 'read-only': true },
      { driver: 'raw', 'node-name': 'r0', file: 'n0', 'read-only': true },
    ] })).toEqual({ return: {} });
    expect(daemon.graph.find('n0').readOnly).toBe(true);
  });

  it('refuses changes blockd cannot make', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ driver: 'raw', 'node-name': 'r0', file: 'n1' }, "Cannot change the option 'file'"],
      [{ driver: 'raw', 'node-name': 'r0', file: { driver: 'null-co' } }, "Cannot change the option 'file'"],
      [{ driver: 'null-co', 'node-name': 'r0' }, "Cannot change the option 'driver'"],
      [{ driver: 'null-co', 'node-name': 'n1' }, "Option 'size' cannot be reset to its default value"],
      [{ driver: 'raw', file: 'n0' }, 'node-name not specified'],
      [{ driver: 'raw', 'node-name': 'zz', file: 'n0' }, "Failed to find node with node-name='zz'"],
      [{ driver: 'null-co', 'node-name': 'n1', size: 1048576, 'force-share': true, 'read-only': true }, "Cannot change the option 'force-share'"],
    ];
    for (const [o, desc] of cases) expect(await run('blockdev-reopen', { options: [o] }), desc).toEqual({ error: { class: 'GenericError', desc } });
    expect(await run('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': 'r0' }] }))
      .toEqual({ error: { class: 'GenericError', desc: "Parameter 'options[0].file' is missing" } });
  });
});

describe('objects', () => {
  it('decrypts a secret with another (keyid, iv) and protects used objects', async () => {
    const key = randomBytes(32);
    const iv = randomBytes(16);
    const c = createCipheriv('aes-256-cbc', key, iv);
    const data = Buffer.concat([c.update('s3cret passphrase'), c.final()]).toString('base64');
    expect(await run('object-add', { 'qom-type': 'secret', id: 'master', data: key.toString('base64'), format: 'base64' })).toEqual({ return: {} });
    expect(await run('object-add', { 'qom-type': 'secret', id: 'pw', data, format: 'base64', keyid: 'master', iv: iv.toString('base64') })).toEqual({ return: {} });
    expect(daemon.objects.secret('pw').toString()).toBe('s3cret passphrase');
    expect(await run('object-add', { 'qom-type': 'secret', id: 'pw2', data, format: 'base64', keyid: 'master' }))
      .toEqual({ error: { class: 'GenericError', desc: 'IV is required to decrypt secret' } });
    expect(await run('object-add', { 'qom-type': 'secret', id: 'pw3', data, keyid: 'nope', iv: iv.toString('base64') }))
      .toEqual({ error: { class: 'GenericError', desc: "No secret with id 'nope'" } });
    const release = daemon.objects.use('pw');
    expect(await run('object-del', { id: 'pw' })).toEqual({ error: { class: 'GenericError', desc: "object 'pw' is in use, can not be deleted" } });
    release();
    expect(await run('object-del', { id: 'pw' })).toEqual({ return: {} });
    expect(() => daemon.objects.secret('pw')).toThrow("No secret with id 'pw'");
  });

  it('refuses object types blockd does not have', async () => {
    expect(await run('object-add', { 'qom-type': 'authz-pam', id: 't0', service: 'x' }))
      .toEqual({ error: { class: 'GenericError', desc: "Parameter 'qom-type' does not accept value 'authz-pam'" } });
  });
});

describe('dispatcher', () => {
  it('maps what handlers throw to QMP errors, and keeps going', async () => {
    const cls = class extends BlockError { qmpClass = 'DeviceNotActive'; };
    const table = makeTable([
      { name: 'boom', doc: 'throws a plain error', handler: () => { throw new Error('internal'); } },
      { name: 'block', doc: 'throws a BlockError', handler: () => { throw new BlockError('EIO', 'I/O failed'); } },
      { name: 'classy', doc: 'throws with a class', handler: () => { throw new cls('ENOENT', 'No job'); } },
      { name: 'echo', doc: 'echoes', args: obj('echo-arg', [req('v', 'any')]), handler: (a: { v: unknown }) => a.v },
    ], []);
    const d = new Dispatcher(daemon, table);
    expect(await d.handle({ execute: 'boom', id: 1 }, session())).toEqual({ error: { class: 'GenericError', desc: 'internal' }, id: 1 });
    expect(await d.handle({ execute: 'block' }, session())).toEqual({ error: { class: 'GenericError', desc: 'I/O failed' } });
    expect(await d.handle({ execute: 'classy' }, session())).toEqual({ error: { class: 'DeviceNotActive', desc: 'No job' } });
    expect(await d.handle({ execute: 'echo', arguments: { v: [1, 'x'] } }, session())).toEqual({ return: [1, 'x'] });
    expect(await d.handle({ execute: 'echo' }, session())).toEqual({ error: { class: 'GenericError', desc: "Parameter 'v' is missing" } });
  });

  it('runs the commands of all clients one at a time', async () => {
    const order: string[] = [];
    const table = makeTable([
      { name: 'slow', doc: 'slow', handler: async () => { order.push('slow start'); await new Promise((r) => setTimeout(r, 50)); order.push('slow end'); } },
      { name: 'fast', doc: 'fast', handler: () => { order.push('fast'); } },
    ], []);
    const d = new Dispatcher(daemon, table);
    await Promise.all([d.handle({ execute: 'slow' }, session()), d.handle({ execute: 'fast' }, session())]);
    expect(order).toEqual(['slow start', 'slow end', 'fast']);
  });
});
