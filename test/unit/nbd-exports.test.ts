/** The export registry: qsd's checks and messages, permissions, and pluggable metadata contexts. */
import { describe, it, expect, beforeEach, afterAll } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import type { BlockNode } from '../../src/blockdev/node.ts';
import { ExportRegistry } from '../helpers/exports.ts';
import type { DirtyBitmapView, MetaContextProvider } from '../../src/nbd/meta.ts';
import { NbdServer } from '../../src/nbd/server.ts';
import { memDriver, nbdsh, quietLogger, runTool } from '../helpers/nbd.ts';
import { tempDir } from '../helpers/temp.ts';
import { join } from 'node:path';

let graph: BlockGraph;
let registry: ExportRegistry;

beforeEach(async () => {
  graph = new BlockGraph();
  graph.register(memDriver());
  await graph.add({ driver: 'mem', 'node-name': 'n0', size: 1 << 20 });
  await graph.add({ driver: 'mem', 'node-name': 'ro0', size: 1 << 20, 'read-only': true });
  registry = new ExportRegistry();
});

describe('ExportRegistry.add', () => {
  const cases: [string, Parameters<ExportRegistry['add']>[1], string][] = [
    ['an invalid id', { id: '1bad', nodeName: 'n0' }, 'Invalid block export id'],
    ['a missing node', { id: 'e1', nodeName: 'nx' }, "Cannot find device='' nor node-name='nx'"],
    ['a writable export of a read-only node', { id: 'e1', nodeName: 'ro0', writable: true }, 'Cannot export read-only node as writable'],
    ['a name over 4096 bytes', { id: 'e1', nodeName: 'n0', name: 'x'.repeat(4097) }, `export name '${'x'.repeat(4097)}' too long`],
    ['a description over 4096 bytes', { id: 'e1', nodeName: 'n0', description: 'd'.repeat(4097) }, `description '${'d'.repeat(4097)}' too long`],
    ['an unknown bitmap', { id: 'e1', nodeName: 'n0', bitmaps: ['b0'] }, "Bitmap 'b0' is not found"],
  ];
  for (const [what, opts, message] of cases) {
    it(`refuses ${what} with qsd's message`, () => {
      expect(() => registry.add(graph, opts)).toThrow(message);
      expect(registry.list()).toEqual([]);
      expect(graph.find('n0').parents).toEqual([]);
    });
  }

  it('refuses a duplicate id and a duplicate name', () => {
    registry.add(graph, { id: 'e0', nodeName: 'n0' });
    expect(() => registry.add(graph, { id: 'e0', nodeName: 'ro0' })).toThrow("Block export id 'e0' is already in use");
    expect(() => registry.add(graph, { id: 'e1', nodeName: 'ro0', name: 'n0' })).toThrow("NBD server already has export named 'n0'");
  });

  it('names an export after its node by default; the empty name is allowed', () => {
    expect(registry.add(graph, { id: 'e0', nodeName: 'n0' }).name).toBe('n0');
    expect(registry.add(graph, { id: 'e1', nodeName: 'n0', name: '' }).name).toBe('');
    expect(registry.byName('')?.id).toBe('e1');
  });

  it('holds a root edge: writable exports take write, all share read and write but not resize', () => {
    const w = registry.add(graph, { id: 'e0', nodeName: 'n0', writable: true });
    const r = registry.add(graph, { id: 'e1', nodeName: 'n0', name: 'r' });
    expect(w.edge).toMatchObject({ role: 'root', perm: { read: true, write: true, resize: false }, shared: { read: true, write: true, resize: false } });
    expect(r.edge.perm.write).toBe(false);
    expect(graph.find('n0').parents.length).toBe(2);
    // A user wanting to resize the node conflicts with the exports.
    const resizer = { describe: () => 'a resizer' };
    expect(() => graph.link(resizer, graph.find('n0'), 'x', { perm: { read: true, write: false, resize: true }, shared: { read: true, write: true, resize: true } }))
      .toThrow("Permission conflict on node 'n0': permissions 'resize' are both required by a resizer (uses node 'n0' as 'x' child) and unshared by an unnamed block device (uses node 'n0' as 'root' child).");
  });

  it('refuses an export whose write permission conflicts with an exclusive user', () => {
    const owner = { describe: () => 'an exclusive user' };
    graph.link(owner, graph.find('n0'), 'file', { perm: { read: true, write: true, resize: false }, shared: { read: true, write: false, resize: false } });
    expect(() => registry.add(graph, { id: 'e0', nodeName: 'n0', writable: true })).toThrow(/an exclusive user/);
    expect(registry.add(graph, { id: 'e1', nodeName: 'n0' }).writable).toBe(false);
  });

  it('remove: unknown ids are refused; safe removal of an idle export unlinks it and emits deleted', async () => {
    await expect(registry.remove('nope')).rejects.toThrow("Export 'nope' is not found");
    const deleted: string[] = [];
    registry.on('deleted', (id) => deleted.push(id));
    registry.add(graph, { id: 'e0', nodeName: 'n0', writable: true });
    await registry.remove('e0', 'safe');
    expect(deleted).toEqual(['e0']);
    expect(graph.find('n0').parents).toEqual([]);
    expect(registry.get('e0')).toBeUndefined();
  });

  it('transmission flags and block sizes as qsd computes them', () => {
    const w = registry.add(graph, { id: 'e0', nodeName: 'n0', writable: true });
    const r = registry.add(graph, { id: 'e1', nodeName: 'n0', name: 'r' });
    expect(w.transmissionFlags(true)).toBe(0x1 | 0x4 | 0x8 | 0x100 | 0x20 | 0x40 | 0x800 | 0x400);
    expect(r.transmissionFlags(false)).toBe(0x1 | 0x2 | 0x4 | 0x8 | 0x400);
    expect(w.blockSizes(false)).toEqual([1, 4096, 32 << 20]);
  });
});

describe('pluggable metadata contexts', () => {
  const dir = tempDir('blockd-nbd-meta-');
  let server: NbdServer | undefined;
  afterAll(async () => server?.destroy());

  it('a dirty bitmap supplied by the block layer is exported as qemu:dirty-bitmap:NAME; extra providers plug in', async () => {
    const dirty = new Set([1, 2, 7]); // 64 KiB granules
    const bm: DirtyBitmapView = {
      name: 'b0',
      runs(offset, length) {
        const g = 65536;
        const out: { length: number; dirty: boolean }[] = [];
        for (let pos = offset; pos < offset + length;) {
          const next = Math.min(offset + length, (Math.floor(pos / g) + 1) * g);
          out.push({ length: next - pos, dirty: dirty.has(Math.floor(pos / g)) });
          pos = next;
        }
        return out;
      },
    };
    const custom: MetaContextProvider = {
      contexts: () => [{ name: 'x-test:everything', id: 100, extents: async (_o, l) => [{ length: l, flags: 42 }] }],
    };
    const { DEFAULT_PROVIDERS } = await import('../../src/nbd/meta.ts');
    registry = new ExportRegistry({
      findBitmap: (node: BlockNode, name: string) => (node.nodeName === 'n0' && name === 'b0' ? bm : undefined),
      providers: [...DEFAULT_PROVIDERS, custom],
    });
    const exp = registry.add(graph, { id: 'e0', nodeName: 'n0', bitmaps: ['b0'] });
    expect(exp.metaContexts.map((c) => [c.name, c.id])).toEqual([['base:allocation', 0], ['qemu:dirty-bitmap:b0', 2], ['x-test:everything', 100]]);
    server = new NbdServer(registry, { logger: quietLogger() });
    const sock = join(dir, 's');
    await server.listenUnix(sock);
    const uri = `nbd+unix:///n0?socket=${sock}`;
    const info = JSON.parse(await runTool('nbdinfo', ['--json', uri]));
    expect(info.exports[0].contexts).toEqual(['base:allocation', 'qemu:dirty-bitmap:b0', 'x-test:everything']);
    const map = (await runTool('nbdinfo', ['--map=qemu:dirty-bitmap:b0', uri])).trim().split('\n').map((l) => l.trim().split(/\s+/).slice(0, 3));
    expect(map).toEqual([['0', '65536', '0'], ['65536', '131072', '1'], ['196608', '262144', '0'], ['458752', '65536', '1'], ['524288', '524288', '0']]);
    const one = JSON.parse(await nbdsh(uri, `
h = nbd.NBD(); h.add_meta_context("qemu:dirty-bitmap:b0"); h.add_meta_context("x-test:everything"); h.connect_uri(uri)
got = {}
def cb(meta, off, ents, err):
    got[meta] = list(ents); return 0
h.block_status(200000, 70000, cb, flags=nbd.CMD_FLAG_REQ_ONE)
print(json.dumps(got))
`));
    expect(one).toEqual({ 'qemu:dirty-bitmap:b0': [126608, 1], 'x-test:everything': [200000, 42] });
  });
});
