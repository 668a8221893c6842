/**
 * qom-list, qom-list-properties and qom-list-types side by side with
 * qemu-storage-daemon 7.2: the tree blockd has (/, /objects and each object,
 * /chardevs and the monitor's chardev) lists as qsd lists it, every object
 * type blockd implements has qsd's properties in qsd's order, errors are
 * qsd's, and the types blockd reports are qsd's for the same searches
 * (qsd also has types blockd does not implement: those are the difference).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import { OBJECT_TYPES } from '../../src/objects/table.ts';

describe('QOM listings side by side with qemu-storage-daemon', () => {
  const dir = tempDir('blockd-qom-');
  const d = {} as Record<Who, { proc: Running; qmp: QmpClient }>;
  const ask = (qmp: QmpClient, cmd: string, args: Record<string, unknown>) => qmp.execute(cmd, args).catch((e: Error) => e.message);

  beforeAll(async () => {
    for (const who of BOTH) {
      const r = await qmpDaemon(who, dir, ['--object', 'iothread,id=io0', '--object', 'secret,id=s0,data=x',
        '--object', 'throttle-group,id=tg0,limits.iops-total=100', '--object', 'authz-simple,id=az0,identity=me', '--object', 'authz-list,id=al0']);
      d[who] = r;
    }
  }, 60_000);
  afterAll(async () => {
    for (const x of Object.values(d)) { x.qmp.close(); await x.proc.stop(); }
  });

  it('qom-list of the tree and of each object, with the same errors', async () => {
    // A container's children come in qsd's hash-table order: compared as sets. (A partial path naming a
    // container, "objects", resolves or not in qsd depending on that order too: left out.)
    const paths = ['/', '/objects', '/objects/io0', '/objects/s0', '/objects/tg0', 'tg0', '/objects/az0', '/objects/al0', '/chardevs', '/chardevs/m',
      '/objects/nope', '/nope', ''];
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) {
      for (const path of paths) {
        const r = await ask(d[who].qmp, 'qom-list', { path });
        seen[who].push([path, Array.isArray(r) && (path === '/objects' || path === '/chardevs') ? [...r].sort((a, b) => a.name.localeCompare(b.name)) : r]);
      }
    }
    expect(seen.blockd).toEqual(seen.qsd);
  });

  it('qom-list-properties of every type blockd implements, and of an unknown one', async () => {
    const names = [...OBJECT_TYPES.map((t) => t.qomType), 'chardev-socket', 'nope'];
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    for (const who of BOTH) for (const typename of names) seen[who].push([typename, await ask(d[who].qmp, 'qom-list-properties', { typename })]);
    expect(seen.blockd).toEqual(seen.qsd);
  });

  it('qom-list-types: what blockd reports is what qsd reports for the same search, among the types blockd has', async () => {
    const searches = [{}, { implements: 'user-creatable' }, { implements: 'tls-creds' }, { implements: 'tls-creds', abstract: true }, { implements: 'authz', abstract: true }, { implements: 'nope' }];
    for (const args of searches) {
      const [q, b] = await Promise.all(BOTH.map((w) => d[w].qmp.execute('qom-list-types', args) as Promise<{ name: string }[]>));
      const key = (l: { name: string }[]) => l.map((t) => JSON.stringify(t)).sort();
      const mine = new Set(b.map((t) => t.name));
      expect(key(b), JSON.stringify(args)).toEqual(key(q.filter((t) => mine.has(t.name))));
      // Every type blockd implements that qsd finds for the search, blockd finds too.
      const implemented = new Set([...OBJECT_TYPES.map((t) => t.qomType), 'chardev-socket', 'container']);
      expect(q.filter((t) => implemented.has(t.name)).every((t) => mine.has(t.name)), JSON.stringify(args)).toBe(true);
    }
  });
});
