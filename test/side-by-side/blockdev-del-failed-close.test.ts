/**
 * blockdev-del of a node whose close fails, side by side with qsd 7.2: a
 * qcow2 over blkdebug failing every L2 table write-back (event l2_update,
 * EIO). QEMU's bdrv_close returns nothing: qsd prints the error and
 * answers {}, the node is gone and its file node, unlocked, can be deleted
 * too. blockd answers the same (it used to answer "Input/output error" and
 * keep nothing consistent with qsd's node list). Whether the allocating
 * write before it fails is not compared: QEMU writes that L2 table back
 * during the write, blockd at close.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

async function scenario(s: Side): Promise<unknown[]> {
  const out: unknown[] = [];
  const ex = (command: string, args: Record<string, unknown> = {}) =>
    s.qmp.execute(command, args).then((r) => ['ok', command, r], (e: Error) => ['error', command, e.message]);
  out.push(await ex('blockdev-add', { driver: 'file', 'node-name': 'f0', filename: join(s.dir, 'a.qcow2') }));
  out.push(await ex('blockdev-add', { driver: 'blkdebug', 'node-name': 'dbg', image: 'f0', 'inject-error': [{ event: 'l2_update', errno: 5, immediately: false }] }));
  out.push(await ex('blockdev-add', { driver: 'qcow2', 'node-name': 'q0', file: 'dbg' }));
  out.push(await ex('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'q0', writable: true }));
  // An allocating write: a dirty L2 table to write back.
  await s.py('q0', 'h = nbd.NBD()\nh.connect_uri(uri)\ntry:\n    h.pwrite(b"x" * 65536, 0)\nexcept nbd.Error:\n    pass\nprint(json.dumps(0))');
  out.push(await ex('block-export-del', { id: 'e0' }));
  for (let i = 0; i < 100 && ((await s.qmp.execute('query-block-exports')) as unknown[]).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
  out.push(await ex('blockdev-del', { 'node-name': 'q0' }));
  out.push(await ex('blockdev-del', { 'node-name': 'dbg' }));
  out.push(await ex('blockdev-del', { 'node-name': 'f0' }));
  const nodes = (await s.qmp.execute('query-named-block-nodes')) as { 'node-name': string }[];
  out.push(['nodes', nodes.map((n) => n['node-name'])]);
  return out;
}

describe('blockdev-del when the close fails', () => {
  it('a qcow2 whose L2 write-back fails: {} as qsd, the node and its children gone, the file unlocked', async () => {
    pair = await startPair((d) => run('qemu-img', ['create', '-q', '-f', 'qcow2', join(d, 'a.qcow2'), '16M']), () => []);
    const got: Record<string, unknown[]> = {};
    for (const who of BOTH) got[who] = await scenario(pair[who]);
    expect(got.qsd).toEqual([
      ['ok', 'blockdev-add', {}], ['ok', 'blockdev-add', {}], ['ok', 'blockdev-add', {}], ['ok', 'block-export-add', {}],
      ['ok', 'block-export-del', {}], ['ok', 'blockdev-del', {}], ['ok', 'blockdev-del', {}], ['ok', 'blockdev-del', {}], ['nodes', []],
    ]);
    expect(got.blockd).toEqual(got.qsd);
  }, 60_000);
});
