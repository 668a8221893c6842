/**
 * cache.direct=on side by side with qsd: the NBD_INFO_BLOCK_SIZE an export
 * advertises (nbdinfo's minimum, preferred and maximum) for raw and qcow2
 * over a buffered and a direct-I/O file, and for a direct-I/O file node
 * exported as it is; and unaligned writes and reads through a direct-I/O
 * export (libnbd in its default strict mode, which refuses requests
 * unaligned to the advertised minimum) land as in qsd. blockd advertised the
 * file's 4 KiB O_DIRECT alignment on raw, so libnbd refused ("request is
 * unaligned"); qsd advertises 1 and does read-modify-write in its block layer.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { runTool } from '../helpers/nbd.ts';
import { imageContents } from '../helpers/live.ts';
import { startPair, type Pair, type Side } from '../helpers/pair.ts';

const SIZE = 4 * 1024 * 1024;

type Config = [what: string, format: 'raw' | 'qcow2', direct: boolean, fileOnly?: boolean];
const CONFIGS: Config[] = [
  ['raw, buffered', 'raw', false],
  ['raw, cache.direct=on', 'raw', true],
  ['qcow2, buffered', 'qcow2', false],
  ['qcow2, cache.direct=on', 'qcow2', true],
  ['file node, buffered', 'raw', false, true],
  ['file node, cache.direct=on', 'raw', true, true],
];

function args([, format, direct, fileOnly]: Config) {
  return (d: string) => [
    '--blockdev', `driver=file,node-name=f0,filename=${join(d, `disk.${format}`)}${direct ? ',cache.direct=on' : ''}`,
    ...(fileOnly ? [] : ['--blockdev', `driver=${format},node-name=d0,file=f0`]),
    '--export', `type=nbd,id=e0,node-name=${fileOnly ? 'f0' : 'd0'},name=disk,writable=on`,
  ];
}

function setup(format: string) {
  return (d: string) => {
    const img = join(d, `disk.${format}`);
    run('qemu-img', ['create', '-f', format, img, String(SIZE)]);
    run('qemu-io', ['-f', format, '-c', 'write -P 0x11 0 64k', img]);
  };
}

async function blockSizes(s: Side): Promise<unknown> {
  const j = JSON.parse(await runTool('nbdinfo', ['--json', s.uri('disk')]));
  const e = j.exports[0];
  return { min: e.block_size_minimum, preferred: e.block_size_preferred, max: e.block_size_maximum, size: e['export-size'] };
}

/** Unaligned writes (strict libnbd), then what reads back at unaligned places. */
const UNALIGNED = `
h = nbd.NBD()
h.connect_uri(uri)
out = {"min": h.get_block_size(nbd.SIZE_MINIMUM)}
for off, data in ((777, b"\\xab" * 1000), (4095, b"\\xcd" * 2), (65536 - 3, b"\\xef" * 8197), (${SIZE} - 5, b"\\x42" * 5)):
    try:
        h.pwrite(data, off); out["write %d+%d" % (off, len(data))] = "ok"
    except nbd.Error as e:
        out["write %d+%d" % (off, len(data))] = str(e)
h.flush()
for off, n in ((700, 1200), (4090, 10), (65530, 8210), (${SIZE} - 9, 9)):
    out["read %d+%d" % (off, n)] = h.pread(n, off).hex()
h.shutdown()
print(json.dumps(out))
`;

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

describe('direct I/O: block sizes and unaligned requests, side by side with qsd', () => {
  for (const c of CONFIGS) {
    it(`${c[0]}: nbdinfo block sizes as qsd's`, async () => {
      pair = await startPair(setup(c[1]), args(c));
      const [theirs, ours] = [await blockSizes(pair.qsd), await blockSizes(pair.blockd)];
      expect(ours).toEqual(theirs);
    });
  }

  for (const c of CONFIGS.filter(([, , direct, fileOnly]) => direct && !fileOnly)) {
    it(`${c[0]}: unaligned libnbd writes succeed and the image holds what qsd's holds`, async () => {
      pair = await startPair(setup(c[1]), args(c));
      const [theirs, ours] = await Promise.all([pair.qsd.py('disk', UNALIGNED), pair.blockd.py('disk', UNALIGNED)]);
      expect((theirs as Record<string, unknown>)['write 777+1000']).toBe('ok');
      expect(ours).toEqual(theirs);
      await pair.stopDaemons();
      const image = `disk.${c[1]}`;
      expect(imageContents(join(pair.dir, 'blockd'), image).equals(imageContents(join(pair.dir, 'qsd'), image))).toBe(true);
    });
  }
});
