/**
 * blockd has every QMP command and event qemu-storage-daemon 7.2 has, and no
 * other: query-commands and the commands and events of query-qmp-schema are
 * the same sets on both (README, "QMP": what blockd does differently inside
 * some of them). Their types are compared in qmp-side-by-side.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { BOTH, type Who } from '../helpers/pair.ts';

describe('the QMP command and event sets of qemu-storage-daemon and blockd', () => {
  const dir = tempDir('blockd-cmdset-');
  const d = {} as Record<Who, { proc: Running; qmp: QmpClient }>;

  beforeAll(async () => {
    for (const who of BOTH) d[who] = await qmpDaemon(who, dir, []);
  }, 60_000);
  afterAll(async () => {
    for (const x of Object.values(d)) { x.qmp.close(); await x.proc.stop(); }
  });

  it('query-commands: the same commands', async () => {
    const names = async (who: Who) => ((await d[who].qmp.execute('query-commands')) as { name: string }[]).map((c) => c.name).sort();
    const q = await names('qsd');
    expect(q.length).toBeGreaterThan(70);
    expect(await names('blockd')).toEqual(q);
  });

  it('query-qmp-schema: the same commands and the same events', async () => {
    const schema = async (who: Who) => (await d[who].qmp.execute('query-qmp-schema')) as { name: string; 'meta-type': string }[];
    const [q, b] = await Promise.all(BOTH.map(schema));
    for (const kind of ['command', 'event']) {
      const of = (s: typeof q) => s.filter((e) => e['meta-type'] === kind).map((e) => e.name).sort();
      expect(of(q).length, kind).toBeGreaterThan(10);
      expect(of(b!), kind).toEqual(of(q!));
    }
  });
});
