/**
 * Pull-mode fleecing with snapshot-access, side by side with qsd 7.2 (#20):
 * a copy-before-write filter over the disk (target: an empty qcow2), a
 * snapshot-access node over the filter exported read-only ('snap'), the
 * filter exported writable ('disk'). While the disk is written through
 * 'disk' (also with reads of 'snap' in flight at the same time), 'snap'
 * serves the point-in-time content: the bytes of `qemu-img convert -O raw`
 * of the disk before any write, what qsd serves; its map, the nodes' rows,
 * and the errors of a write and of a read after a discard are qsd's. After
 * the last writes only blockd's is checked (against the model): qsd 7.2
 * then serves zeroes in a range the write-zeroes covered (README). Its
 * map is the snapshot's (qsd's is the live disk's, see README), so nbdcopy
 * of 'snap' gets the point-in-time content too.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { imageContents } from '../helpers/live.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';

const SIZE = 4 * 1024 * 1024;

function setup(d: string): void {
  const disk = join(d, 'disk.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(SIZE)]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 1536k 700k', '-c', 'write -z 3M 128k', disk]);
  run('qemu-img', ['create', '-q', '-f', 'qcow2', join(d, 'tmp.qcow2'), String(SIZE)]);
}

const CONNECT = 'h = nbd.NBD()\nh.connect_uri(uri)\ns = nbd.NBD()\ns.connect_uri(uri.replace("/disk?", "/snap?"))\n';
const HASH = 'import hashlib\ndef sha(x): return hashlib.sha256(x).hexdigest()\n';

// Interleaved aio writes to 'disk' and reads of 'snap', some overlapping; the whole snapshot; then a
// write, a write-zeroes and a discard of 'disk', the whole snapshot again ('snap2') and the disk.
const SCRIPT = `${HASH}${CONNECT}
import random
rnd = random.Random(7)
cmds = []
for i in range(200):
    off = rnd.randrange(0, ${SIZE} - 65536) & ~511
    n = rnd.randrange(1, 128) * 512
    if i % 2:
        cmds.append((h, h.aio_pwrite(bytes([i & 255]) * n, off)))
    else:
        cmds.append((s, s.aio_pread(nbd.Buffer(n), off)))
    while h.aio_in_flight() + s.aio_in_flight() > 8:
        for x in (h, s):
            if x.aio_in_flight(): x.poll(1)
while h.aio_in_flight() or s.aio_in_flight():
    for x in (h, s):
        if x.aio_in_flight(): x.poll(1)
for x, c in cmds:
    x.aio_command_completed(c)  # raises the command's error
res = {"snap": sha(s.pread(${SIZE}, 0))}
h.pwrite(b"\\x77" * 65536, 0)
h.zero(65536, 2 * 65536)
h.trim(65536, 3 * 1024 * 1024)
res["snap2"] = sha(s.pread(${SIZE}, 0))
res["disk"] = sha(h.pread(${SIZE}, 0))
try:
    s.pwrite(b"x" * 512, 0); res["write"] = "ok"
except nbd.Error as e:
    res["write"] = e.errnum
print(json.dumps(res))
`;

// After a discard of the snapshot's first 1 MiB (a writable snap export), reading it fails, the rest reads.
const DISCARD = `${HASH}${CONNECT}
res = {}
s.trim(1024 * 1024, 0)
try:
    s.pread(512, 4096); res["read"] = "ok"
except nbd.Error as e:
    res["read"] = e.errnum
res["rest"] = sha(s.pread(${SIZE} - 1024 * 1024, 1024 * 1024))
h.pwrite(b"\\x99" * 65536, 0)
res["rest2"] = sha(s.pread(${SIZE} - 1024 * 1024, 1024 * 1024))
print(json.dumps(res))
`;

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

async function fleecing(snapWritable: boolean): Promise<Pair> {
  return startPair(setup, (d) => [
    '--blockdev', `driver=file,node-name=f0,filename=${join(d, 'disk.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=src,file=f0',
    '--blockdev', `driver=file,node-name=f1,filename=${join(d, 'tmp.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=tmp,file=f1',
    '--blockdev', 'driver=copy-before-write,node-name=cbw,file=src,target=tmp',
    '--blockdev', `driver=snapshot-access,node-name=acc,file=cbw${snapWritable ? ',discard=unmap' : ''}`,
    '--export', 'type=nbd,id=e0,node-name=cbw,name=disk,writable=on',
    '--export', `type=nbd,id=e1,node-name=acc,name=snap,writable=${snapWritable ? 'on' : 'off'}`,
  ]);
}

describe('snapshot-access over copy-before-write, side by side with qsd', () => {
  it('the export shows the point-in-time content while the disk is written', async () => {
    pair = await fleecing(false);
    const before = createHash('sha256').update(imageContents(pair.qsd.dir, 'disk.qcow2', true)).digest('hex');
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const mapBefore = JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('snap')]));
      const { snap2, ...res } = await side.py('disk', SCRIPT, 120_000) as Record<string, unknown>;
      if (who === 'blockd') expect(snap2).toBe(before);
      const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
      out[who] = {
        res, mapBefore,
        size: run('nbdinfo', ['--size', side.uri('snap')]),
        rows: nodes.filter((n) => n['node-name'] === 'acc').map((n) => [n.drv, String(n.file).split(side.dir).join('<d>'), n.ro, (n.image as Record<string, unknown>)['virtual-size']]),
      };
    }
    expect(out.blockd).toEqual(out.qsd);
    const res = (out.blockd as { res: { snap: string; disk: string } }).res;
    expect(res.snap).toBe(before);
    expect(res.disk).not.toBe(before);
    // blockd's map is the snapshot's own (qsd 7.2 reports the live disk's there: README), so a
    // map-aware copy (nbdcopy skips what the map calls zero) gets the point-in-time content.
    const b = pair.blockd;
    expect(JSON.parse(run('nbdinfo', ['--map', '--json', b.uri('snap')]))).toEqual((out.blockd as { mapBefore: unknown }).mapBefore);
    const copy = join(b.dir, 'snap.raw');
    run('nbdcopy', [b.uri('snap'), copy]);
    expect(createHash('sha256').update(readFileSync(copy)).digest('hex')).toBe(before);
  }, 180_000);

  it('a discarded range of the snapshot reads as qsd (refused) and the rest keeps its content', async () => {
    pair = await fleecing(true);
    const out: Record<string, unknown> = {};
    for (const who of BOTH) out[who] = await pair[who].py('disk', DISCARD, 60_000);
    expect(out.blockd).toEqual(out.qsd);
    expect((out.blockd as { read: unknown }).read).not.toBe('ok');
  }, 120_000);
});
