/**
 * A raw file whose length is not a multiple of 512, side by side with qsd:
 * QEMU's block layer counts in sectors, so the disk is the length rounded up
 * to 512 and the tail reads as zeroes. Compared: the export size, reads of the
 * tail, a write into it (the file grows as far as the write reaches), block
 * status before and after, virtual sizes in query-named-block-nodes, and
 * block_resize to sizes that are not multiples of 512 (the file takes the
 * exact size, the nodes the rounded one). blockd exported the exact byte
 * length and refused the write into the tail.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QmpCommandError } from '../../src/qmp/client/qmp-client.ts';
import { startPair, type Pair, type Side, EMAP } from '../helpers/pair.ts';

const LENGTH = 1_000_000;

const args = (d: string) => [
  '--blockdev', `driver=file,node-name=f0,filename=${join(d, 'odd.raw')}`,
  '--blockdev', 'driver=raw,node-name=d0,file=f0',
];
const exportArgs = (d: string) => [...args(d), '--export', 'type=nbd,id=e0,node-name=d0,writable=on'];

const setup = (d: string) => writeFileSync(join(d, 'odd.raw'), Buffer.alloc(LENGTH, 0xaa));

/** Size, the tail, the map; a write into the tail; the tail and the map again. */
const TAIL = `
${EMAP}h = nbd.NBD(); h.add_meta_context("base:allocation"); h.connect_uri(uri)
size = h.get_size()
res = {"size": size, "tail": h.pread(1024, size - 1024).hex(), "map": emap(h)}
h.pwrite(b"\\x55" * 100, ${LENGTH} + 100)
h.flush()
res["tail after write"] = h.pread(1024, size - 1024).hex()
res["map after write"] = emap(h)
try:
    h.pread(1, size); res["read past the end"] = "ok"
except nbd.Error as e:
    res["read past the end"] = e.errnum
h.shutdown()
print(json.dumps(res))
`;

async function outcome(s: Side, cmd: string, a: Record<string, unknown>): Promise<unknown> {
  try {
    return { return: await s.qmp.execute(cmd, a) };
  } catch (e) {
    if (e instanceof QmpCommandError) return { error: e.errorClass, desc: e.desc };
    throw e;
  }
}

async function sizes(s: Side): Promise<unknown> {
  const nodes = (await s.qmp.execute('query-named-block-nodes')) as { 'node-name': string; image: { 'virtual-size': number } }[];
  return { file: statSync(join(s.dir, 'odd.raw')).size, nodes: nodes.map((n) => [n['node-name'], n.image['virtual-size']]).sort() };
}

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

describe('raw file of a length that is not a multiple of 512, side by side with qsd', () => {
  it('export size, tail reads, a write into the tail and block status as qsd', async () => {
    pair = await startPair(setup, exportArgs);
    const [theirs, ours] = [await pair.qsd.py('d0', TAIL), await pair.blockd.py('d0', TAIL)];
    expect((theirs as { size: number }).size).toBe(1_000_448);
    expect(ours).toEqual(theirs);
    expect(await sizes(pair.blockd)).toEqual(await sizes(pair.qsd));
    // An export does not share resize: block_resize is refused by both.
    const resize = async (s: Side) => outcome(s, 'block_resize', { 'node-name': 'd0', size: 2_000_000 });
    expect(await resize(pair.blockd)).toEqual(await resize(pair.qsd));
  });

  it('block_resize to sizes that are not multiples of 512 as qsd (file size, virtual sizes, then the export)', async () => {
    pair = await startPair(setup, args);
    for (const [node, size] of [['d0', 1_500_001], ['f0', 999_999], ['d0', 1000], ['d0', 0], ['d0', 513]] as const) {
      const step = async (s: Side) => ({ result: await outcome(s, 'block_resize', { 'node-name': node, size }), ...(await sizes(s) as object) });
      expect(await step(pair.blockd), `block_resize ${node} ${size}`).toEqual(await step(pair.qsd));
    }
    const add = async (s: Side) => outcome(s, 'block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'd0', writable: true });
    expect(await add(pair.blockd)).toEqual(await add(pair.qsd));
    const script = 'h = nbd.NBD(); h.connect_uri(uri); print(json.dumps([h.get_size(), h.pread(h.get_size(), 0).hex()]))';
    expect(await pair.blockd.py('d0', script)).toEqual(await pair.qsd.py('d0', script));
  });
});
