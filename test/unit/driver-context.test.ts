/** What DriverContext hands a driver from above: objects (secrets), a logger bound to the node, the event sink. */
import { describe, it, expect } from 'vitest';
import { pino, type Logger } from 'pino';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { ObjectRegistry } from '../../src/objects/registry.ts';
import type { Driver, DriverContext } from '../../src/blockdev/driver.ts';
import { obj, opt } from '../../src/qapi/types.ts';

/** A driver that needs a secret (as LUKS will): looks it up at open, holds it until close. */
function secretUser(seen: { key?: string; ctx?: DriverContext }): Driver {
  return {
    name: 'needs-secret',
    kind: 'protocol',
    options: obj('BlockdevOptions-needs-secret', [opt('key-secret', 'str')]),
    async open(options, ctx) {
      seen.ctx = ctx;
      const id = options['key-secret'] as string;
      seen.key = ctx.objects.secret(id).toString();
      const release = ctx.objects.use(id);
      ctx.log.info({ secret: id }, 'opened');
      ctx.events.emit('TEST_EVENT', { 'node-name': ctx.nodeName });
      return { length: () => 512, async read(_o, b) { b.fill(1); }, async close() { release(); } };
    },
  };
}

function capture(): { log: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => { out.push(s); } });
  return { log, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('DriverContext', () => {
  it('gives a driver the registry\'s secrets, a node-bound logger and the graph\'s event sink', async () => {
    const objects = new ObjectRegistry();
    objects.add({ 'qom-type': 'secret', id: 'k0', data: 'hunter2' });
    const { log, lines } = capture();
    const events: [string, Record<string, unknown>][] = [];
    const graph = new BlockGraph({ objects, log, events: { emit: (e, d) => events.push([e, d]) } });
    const seen: { key?: string } = {};
    graph.register(secretUser(seen));
    await graph.add({ driver: 'needs-secret', 'node-name': 'n0', 'key-secret': 'k0' });
    expect(seen.key).toBe('hunter2');
    expect(lines()).toEqual([expect.objectContaining({ node: 'n0', secret: 'k0', msg: 'opened', level: 30 })]);
    expect(events).toEqual([['TEST_EVENT', { 'node-name': 'n0' }]]);
    // The node holds the secret: object-del is refused until the node is gone.
    expect(() => objects.del('k0')).toThrow("object 'k0' is in use, can not be deleted");
    await graph.del('n0');
    objects.del('k0');
  });

  it('a missing secret fails the open with QEMU\'s text and leaves no node', async () => {
    const graph = new BlockGraph({ objects: new ObjectRegistry() });
    graph.register(secretUser({}));
    await expect(graph.add({ driver: 'needs-secret', 'node-name': 'n0', 'key-secret': 'nope' })).rejects.toThrow("No secret with id 'nope'");
    expect(graph.nodes.size).toBe(0);
  });

  it('a graph built without an environment still opens drivers (no objects, silent log, events go nowhere)', async () => {
    const graph = new BlockGraph();
    const seen: { ctx?: DriverContext } = {};
    graph.register(secretUser(seen));
    await expect(graph.add({ driver: 'needs-secret', 'node-name': 'n0', 'key-secret': 'k' })).rejects.toThrow("No secret with id 'k'");
    expect(seen.ctx!.log.isLevelEnabled('error')).toBe(false);
    expect(() => seen.ctx!.events.emit('X', {})).not.toThrow();
  });
});
