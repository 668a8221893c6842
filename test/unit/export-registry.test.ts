/**
 * The generic export layer (src/export) with fake export types: the table
 * and its schema, add's checks in qsd's order, permissions, del and its
 * modes, shutdown, BLOCK_EXPORT_DELETED, and two types side by side.
 */
import { describe, it, expect, beforeEach } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { BlockError } from '../../src/util/errors.ts';
import { BlockExport, isBlockExport, type ExportClient, type ExportCommon } from '../../src/export/export.ts';
import { ExportDriverTable, type ExportDriver } from '../../src/export/drivers.ts';
import { BlockExports } from '../../src/export/registry.ts';
import type { BlockExportOptionsValue } from '../../src/qapi/block-export.ts';
import { fromJson } from '../../src/qapi/visit.ts';
import { obj, opt, type EnumType } from '../../src/qapi/types.ts';
import { memDriver } from '../helpers/nbd.ts';

class FakeExport extends BlockExport {
  constructor(common: ExportCommon, readonly tag: string | undefined, sharesResize: boolean) {
    super(common, sharesResize);
  }
}

/** A fake export type; `calls` records what the generic layer asked of it. */
function fakeDriver(type: string, sharesResize = true) {
  const calls: string[] = [];
  let hold: Promise<void> | undefined;
  const driver: ExportDriver<FakeExport> & { calls: string[]; holdShutdown(p: Promise<void>): void } = {
    type,
    options: obj(`BlockExportOptions_${type}`, [opt('tag', 'str', 'a member of this type only')]),
    calls,
    holdShutdown: (p) => { hold = p; },
    create(common, options) {
      const tag = (options as { tag?: string }).tag;
      calls.push(`create ${common.id}`);
      if (tag === 'refuse') throw new BlockError('EINVAL', `${type} refuses '${common.id}'`);
      return new FakeExport(common, tag, sharesResize);
    },
    async requestShutdown(exp) {
      calls.push(`shutdown ${exp.id}`);
      await hold;
      await Promise.all(exp.clients().map((c) => c.destroy()));
    },
    deleted(exp) { calls.push(`deleted ${exp.id}`); },
  };
  return driver;
}

/** A connected user that detaches when dropped, as an NBD connection does. */
function connect(exp: BlockExport): ExportClient {
  const c: ExportClient = { destroy: async () => exp.detach(c) };
  expect(exp.attach(c)).toBe(true);
  return c;
}

let graph: BlockGraph;
let fake: ReturnType<typeof fakeDriver>;
let other: ReturnType<typeof fakeDriver>;
let exports: BlockExports;
let deleted: string[];
let errors: unknown[];
const objects = new Map([['io0', 'iothread'], ['s0', 'secret']]);
const opts = (o: Partial<BlockExportOptionsValue> & { tag?: string }): BlockExportOptionsValue => ({ type: 'fake', id: 'e0', 'node-name': 'n0', ...o });

beforeEach(async () => {
  graph = new BlockGraph();
  graph.register(memDriver());
  await graph.add({ driver: 'mem', 'node-name': 'n0', size: 1 << 20 });
  await graph.add({ driver: 'mem', 'node-name': 'ro0', size: 1 << 20, 'read-only': true });
  fake = fakeDriver('fake');
  other = fakeDriver('other', false);
  errors = [];
  exports = new BlockExports(new ExportDriverTable([fake, other]), { objectType: (id) => objects.get(id), onError: (e) => errors.push(e) });
  deleted = [];
  exports.on('deleted', (id) => deleted.push(id));
});

describe('the export-driver table', () => {
  it('builds BlockExportOptions and BlockExportInfo from its entries, in table order', () => {
    const t = exports.drivers;
    expect(t.types()).toEqual(['fake', 'other']);
    const options = t.optionsType();
    expect((options.members[0]!.type as EnumType).values).toEqual(['fake', 'other']);
    expect(Object.keys(options.union!.variants)).toEqual(['fake', 'other']);
    expect((t.infoType().members.find((m) => m.name === 'type')!.type as EnumType).values).toEqual(['fake', 'other']);
    // A member of one type's variant is accepted for it and unexpected for the other.
    expect(fromJson(options, { type: 'fake', id: 'e', 'node-name': 'n', tag: 'x' })).toMatchObject({ tag: 'x' });
    expect(() => fromJson(options, { type: 'nbd', id: 'e', 'node-name': 'n' })).toThrow("Parameter 'type' does not accept value 'nbd'");
  });

  it('refuses a type registered twice', () => {
    expect(() => new ExportDriverTable([fakeDriver('x'), fakeDriver('x')])).toThrow(/registered twice/);
  });
});

describe('add', () => {
  it("checks in qsd's order (blk_exp_add), each refusal before the driver is asked", () => {
    exports.add(graph, opts({ id: 'e0' }));
    fake.calls.length = 0;
    const cases: [BlockExportOptionsValue, string][] = [
      [opts({ id: '1bad', 'node-name': 'nope' }), 'Invalid block export id'],
      [opts({ id: 'e0', 'node-name': 'nope' }), "Block export id 'e0' is already in use"],
      [opts({ id: 'e1', type: 'nosuch', 'node-name': 'nope' }), 'No driver found for the requested export type'],
      [opts({ id: 'e1', 'node-name': 'nope', writable: true }), "Cannot find device='' nor node-name='nope'"],
      [opts({ id: 'e1', 'node-name': 'ro0', writable: true, iothread: 'nope' }), 'Cannot export read-only node as writable'],
      [opts({ id: 'e1', iothread: 'nope' }), 'iothread "nope" not found'],
      [opts({ id: 'e1', iothread: 's0' }), 'iothread "s0" not found'],
    ];
    for (const [o, message] of cases) expect(() => exports.add(graph, o), message).toThrow(message);
    expect(fake.calls).toEqual([]);
    expect(exports.list().map((e) => e.id)).toEqual(['e0']);
  });

  it("passes the checked common members to the type's driver; its refusal leaves nothing behind", () => {
    expect(() => exports.add(graph, opts({ id: 'e1', tag: 'refuse' }))).toThrow("fake refuses 'e1'");
    expect(exports.list()).toEqual([]);
    expect(graph.find('n0').parents).toEqual([]);
    const e = exports.add(graph, opts({ id: 'e1', writable: true, writethrough: true, iothread: 'io0', tag: 't' })) as FakeExport;
    expect(e).toMatchObject({ type: 'fake', id: 'e1', writable: true, writethrough: true, tag: 't', shuttingDown: false });
    expect(e.node).toBe(graph.find('n0'));
    expect(exports.get('e1')).toBe(e);
  });

  it('holds a root edge with what the export uses; its type decides whether others may resize', () => {
    const w = exports.add(graph, opts({ id: 'w', writable: true }));
    const r = exports.add(graph, opts({ id: 'r', type: 'other' }));
    expect(w.edge).toMatchObject({ role: 'root', perm: { read: true, write: true, resize: false }, shared: { read: true, write: true, resize: true } });
    expect(r.edge).toMatchObject({ perm: { read: true, write: false, resize: false }, shared: { read: true, write: true, resize: false } });
    expect(graph.find('n0').parents.map((e) => e.parent)).toEqual([w, r]);
    expect(graph.find('n0').parents.every((e) => isBlockExport(e.parent))).toBe(true);
    expect(isBlockExport(graph.find('n0'))).toBe(false);
    const resizer = { describe: () => 'a resizer' };
    expect(() => graph.link(resizer, graph.find('n0'), 'x', { perm: { read: true, write: false, resize: true }, shared: { read: true, write: true, resize: true } }))
      .toThrow("Permission conflict on node 'n0': permissions 'resize' are both required by a resizer (uses node 'n0' as 'x' child) and unshared by an unnamed block device (uses node 'n0' as 'root' child).");
  });

  it("refuses an export whose permissions conflict with the node's users, before its driver runs", () => {
    const owner = { describe: () => 'an exclusive user' };
    graph.link(owner, graph.find('n0'), 'file', { perm: { read: true, write: true, resize: false }, shared: { read: true, write: false, resize: false } });
    expect(() => exports.add(graph, opts({ id: 'e0', writable: true, tag: 'refuse' })))
      .toThrow("Permission conflict on node 'n0': permissions 'write' are both required by an unnamed block device (uses node 'n0' as 'root' child) and unshared by an exclusive user (uses node 'n0' as 'file' child).");
    expect(fake.calls).toEqual([]);
    expect(exports.list()).toEqual([]);
    expect(exports.add(graph, opts({ id: 'e1' })).writable).toBe(false);
  });
});

describe('del and shutdown', () => {
  it("refuses an unknown id, and mode=safe while users are connected (qsd's texts)", async () => {
    await expect(exports.del('nope')).rejects.toThrow("Export 'nope' is not found");
    const e = exports.add(graph, opts({}));
    connect(e);
    await expect(exports.del('e0')).rejects.toThrow("export 'e0' still in use");
    await expect(exports.del('e0', 'safe')).rejects.toThrow("export 'e0' still in use");
    expect(e.shuttingDown).toBe(false);
    expect(fake.calls).toEqual(['create e0']);
  });

  it('mode=safe with only clients that said goodbye (DISC sent, socket still closing): deleted, as an idle export', async () => {
    const e = exports.add(graph, opts({}));
    const c: ExportClient = { destroy: async () => e.detach(c), leaving: true };
    expect(e.attach(c)).toBe(true);
    await exports.del('e0');
    expect(deleted).toEqual(['e0']);
    expect(e.connections()).toBe(0);
  });

  it('an idle export: del resolves once it is gone, after the driver shut it down; deleted is emitted; the id is free again', async () => {
    exports.add(graph, opts({ writable: true }));
    await exports.del('e0');
    expect(deleted).toEqual(['e0']);
    expect(fake.calls).toEqual(['create e0', 'shutdown e0', 'deleted e0']);
    expect(exports.get('e0')).toBeUndefined();
    expect(graph.find('n0').parents).toEqual([]);
    exports.add(graph, opts({}));
    expect(exports.query()).toEqual([{ id: 'e0', type: 'fake', 'node-name': 'n0', 'shutting-down': false }]);
  });

  it('mode=hard with users: resolves at once, shutting down until the users are gone, then deleted', async () => {
    const e = exports.add(graph, opts({}));
    connect(e);
    connect(e);
    let release!: () => void;
    fake.holdShutdown(new Promise<void>((r) => (release = r)));
    await exports.del('e0', 'hard');
    expect(deleted).toEqual([]);
    expect(e.shuttingDown).toBe(true);
    expect(exports.query()).toEqual([{ id: 'e0', type: 'fake', 'node-name': 'n0', 'shutting-down': true }]);
    // No new users; a second del is refused as qsd does; the id is still taken.
    expect(e.attach({ destroy: async () => undefined })).toBe(false);
    await expect(exports.del('e0', 'hard')).rejects.toThrow("Export 'e0' is already shutting down");
    expect(() => exports.add(graph, opts({}))).toThrow("Block export id 'e0' is already in use");
    release();
    await new Promise((r) => setTimeout(r, 10));
    expect(deleted).toEqual(['e0']);
    expect(e.connections()).toBe(0);
    expect(fake.calls).toEqual(['create e0', 'shutdown e0', 'deleted e0']);
    expect(graph.find('n0').parents).toEqual([]);
    expect(errors).toEqual([]);
  });

  it('a failed shutdown nobody waits for is reported, not lost', async () => {
    const e = exports.add(graph, opts({}));
    connect(e);
    fake.holdShutdown(Promise.reject(new Error('stuck')));
    await exports.del('e0', 'hard');
    await new Promise((r) => setTimeout(r, 10));
    expect(errors.map((x) => (x as Error).message)).toEqual(['stuck']);
    expect(deleted).toEqual([]);
  });

  it('closeAll ends the exports of one type, or all of them, users dropped', async () => {
    connect(exports.add(graph, opts({ id: 'a' })));
    exports.add(graph, opts({ id: 'b', type: 'other' }));
    exports.add(graph, opts({ id: 'c' }));
    await exports.closeAll('fake');
    expect(deleted.sort()).toEqual(['a', 'c']);
    expect(exports.list().map((e) => e.id)).toEqual(['b']);
    await exports.closeAll();
    expect(deleted.sort()).toEqual(['a', 'b', 'c']);
    expect(other.calls).toEqual(['create b', 'shutdown b', 'deleted b']);
    expect(graph.find('n0').parents).toEqual([]);
  });
});

describe('two export types in one table', () => {
  it('each export is created by its own type; query lists all, newest first', () => {
    exports.add(graph, opts({ id: 'a' }));
    exports.add(graph, opts({ id: 'b', type: 'other', 'node-name': 'ro0' }));
    exports.add(graph, opts({ id: 'c' }));
    expect(fake.calls).toEqual(['create a', 'create c']);
    expect(other.calls).toEqual(['create b']);
    expect(exports.query()).toEqual([
      { id: 'c', type: 'fake', 'node-name': 'n0', 'shutting-down': false },
      { id: 'b', type: 'other', 'node-name': 'ro0', 'shutting-down': false },
      { id: 'a', type: 'fake', 'node-name': 'n0', 'shutting-down': false },
    ]);
    // Ids are unique across types.
    expect(() => exports.add(graph, opts({ id: 'b' }))).toThrow("Block export id 'b' is already in use");
  });
});
