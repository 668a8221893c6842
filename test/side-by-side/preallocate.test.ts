/**
 * The preallocate filter side by side with qsd 7.2 (#20): qcow2 over
 * preallocate over a file, written over NBD. While the daemon runs the
 * file is longer than the image's data, on a prealloc-align boundary and
 * allocated (fallocate, not sparse); once the daemon quits it is cut back
 * to qsd's size, `qemu-img check` is clean and the contents are what was
 * written. Option errors and the filter's query-named-block-nodes row are
 * qsd's.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { imageContents, waitFor } from '../helpers/live.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';

const PREALLOC = 4 * 1024 * 1024;

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

const WRITE = `h = nbd.NBD()
h.connect_uri(uri)
for i in range(24):
    h.pwrite(bytes([i + 1]) * 131072, i * 131072)
h.zero(65536, 5 * 1024 * 1024)
h.pwrite(b"z" * 4096, 9 * 1024 * 1024)
h.flush()
print(json.dumps(h.get_size()))
`;

function start(): Promise<Pair> {
  return startPair((d) => run('qemu-img', ['create', '-q', '-f', 'qcow2', join(d, 'disk.qcow2'), '64M']), (d) => [
    '--blockdev', `driver=file,node-name=f0,filename=${join(d, 'disk.qcow2')}`,
    '--blockdev', `driver=preallocate,node-name=p0,file=f0,prealloc-size=${PREALLOC},prealloc-align=2097152`,
    '--blockdev', 'driver=qcow2,node-name=d0,file=p0',
    '--export', 'type=nbd,id=e0,node-name=d0,name=disk,writable=on',
  ]);
}

describe('preallocate, side by side with qsd', () => {
  it('losing its users (blockdev-del of the format above) cuts the file back at once', async () => {
    pair = await start();
    const sizes: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      await side.py('disk', WRITE);
      const img = join(side.dir, 'disk.qcow2');
      const during = statSync(img).size;
      await side.qmp.execute('block-export-del', { id: 'e0' });
      await waitFor(side.events, (e) => e.event === 'BLOCK_EXPORT_DELETED');
      await side.qmp.execute('blockdev-del', { 'node-name': 'd0' });
      const after = statSync(img).size;
      expect(after).toBeLessThan(during);
      sizes[who] = after;
    }
    expect(sizes.blockd).toBe(sizes.qsd);
  }, 120_000);

  it('grows the file in allocated steps, cuts it back at exit, and the image is intact', async () => {
    pair = await start();
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      await side.py('disk', WRITE);
      const img = join(side.dir, 'disk.qcow2');
      const st = statSync(img);
      const end = Number(/Image end offset: (\d+)/.exec(run('qemu-img', ['check', '-U', img]))![1]);
      expect(st.size).toBeGreaterThan(end);
      expect(st.size % 2097152).toBe(0);
      expect(st.blocks * 512).toBeGreaterThanOrEqual(st.size);
      const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
      const rows = nodes.filter((n) => n['node-name'] === 'p0').map((n) => [n.drv, String(n.file).split(side.dir).join('<d>'), n.ro]);
      const bad = await side.qmp.execute('blockdev-add', { driver: 'preallocate', 'node-name': 'p1', file: 'f0', 'prealloc-align': 1000 }).catch((e: Error) => e.message);
      out[who] = { rows, bad };
    }
    expect(out.blockd).toEqual(out.qsd);
    await pair.stopDaemons();
    const sizes = BOTH.map((who) => statSync(join(pair![who].dir, 'disk.qcow2')).size);
    expect(sizes[1]).toBe(sizes[0]);
    for (const who of BOTH) expect(run('qemu-img', ['check', join(pair[who].dir, 'disk.qcow2')])).toContain('No errors were found');
    expect(imageContents(pair.blockd.dir, 'disk.qcow2').equals(imageContents(pair.qsd.dir, 'disk.qcow2'))).toBe(true);
  }, 120_000);
});
