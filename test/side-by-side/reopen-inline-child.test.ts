/**
 * blockdev-reopen of a node with an inline file child, side by side with
 * qsd 7.2: the child follows the node's read-only flag both ways (QEMU's
 * reopen queue takes in children opened inline without a read-only option
 * of their own); a file node added by itself, and one given read-only
 * explicitly, keep theirs.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { qmpDaemon } from '../helpers/live.ts';
import { tempDir } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';
import { BOTH, type Who } from '../helpers/pair.ts';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';

const cleanups: (() => unknown)[] = [];
afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c(); });

async function flags(qmp: QmpClient): Promise<string[]> {
  const nodes = (await qmp.execute('query-named-block-nodes', { flat: true })) as { 'node-name': string; drv: string; ro: boolean }[];
  return nodes.map((n) => `${n['node-name'].replace(/^#block\d+$/, '#block')} ${n.drv} ${n.ro ? 'ro' : 'rw'}`).sort();
}

async function session(who: Who): Promise<unknown[]> {
  const dir = tempDir(`reopen-inline-${who}-`);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  for (const f of ['a', 'b', 'c']) run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, `${f}.qcow2`), '1M']);
  const d = await qmpDaemon(who, dir, []);
  cleanups.push(async () => { d.qmp.close(); await d.proc.stop(); });
  const q = d.qmp;
  const out: unknown[] = [];
  const step = async (cmd: string, args: Record<string, unknown>) => {
    out.push(`${cmd} -> ${await q.execute(cmd, args).then(() => 'ok', (e: Error) => e.message)}`);
    out.push(await flags(q));
  };
  const inline = { driver: 'qcow2', 'node-name': 'a', file: { driver: 'file', filename: join(dir, 'a.qcow2') } };
  const explicitRw = { driver: 'qcow2', 'node-name': 'c', file: { driver: 'file', filename: join(dir, 'c.qcow2'), 'read-only': false } };
  await step('blockdev-add', inline);
  await step('blockdev-add', { driver: 'file', 'node-name': 'bf', filename: join(dir, 'b.qcow2') });
  await step('blockdev-add', { driver: 'qcow2', 'node-name': 'b', file: 'bf' });
  await step('blockdev-add', explicitRw);
  await step('blockdev-reopen', { options: [{ ...inline, 'read-only': true }] });
  await step('blockdev-reopen', { options: [{ driver: 'qcow2', 'node-name': 'b', file: 'bf', 'read-only': true }] });
  await step('blockdev-reopen', { options: [{ ...explicitRw, 'read-only': true }] });
  await step('blockdev-reopen', { options: [inline] });
  return out;
}

describe('blockdev-reopen and inline children, side by side with qsd', () => {
  it('the read-only flag of every node after each step is qsd\'s', async () => {
    const qsd = await session('qsd');
    const blockd = await session('blockd');
    expect(blockd).toEqual(qsd);
  }, 60_000);
});
