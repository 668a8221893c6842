/**
 * null-aio side by side with qsd 7.2 (#20): QEMU's second null driver, with
 * null-co's options. The nodes' query-named-block-nodes rows (filename
 * "null-aio://", or json:{...} once a strong option is set), the bytes and
 * the base:allocation map served over NBD equal qsd's.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

describe('null-aio, side by side with qsd', () => {
  it('query-named-block-nodes, NBD reads and nbdinfo --map as qsd', async () => {
    pair = await startPair(() => undefined, () => [
      '--blockdev', 'driver=null-aio,node-name=plain',
      '--blockdev', 'driver=null-aio,node-name=sized,size=1048576,read-zeroes=on,latency-ns=1000',
      '--blockdev', 'driver=null-aio,node-name=slow,latency-ns=2000',
      '--blockdev', 'driver=raw,node-name=fmt,file=sized',
      '--export', 'type=nbd,id=e0,node-name=fmt,name=disk,writable=on',
    ]);
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
      const uri = side.uri('disk');
      out[who] = {
        nodes: nodes.map((n) => [n['node-name'], n.drv, n.file, (n.image as Record<string, unknown>)['virtual-size'], n.ro]),
        bytes: await side.py('disk', 'import hashlib\nh = nbd.NBD()\nh.connect_uri(uri)\nh.pwrite(b"\\x55" * 4096, 8192)\nprint(json.dumps(hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest()))'),
        map: JSON.parse(run('nbdinfo', ['--map', '--json', uri])),
        size: run('nbdinfo', ['--size', uri]),
      };
    }
    expect(out.blockd).toEqual(out.qsd);
    expect((out.blockd as { nodes: unknown[] }).nodes).toContainEqual(['plain', 'null-aio', 'null-aio://', 1 << 30, false]);
  }, 60_000);
});
