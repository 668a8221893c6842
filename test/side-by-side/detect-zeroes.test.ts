/**
 * detect-zeroes side by side with qsd: the same writes (all-zero buffers
 * over data, over holes, unaligned, with FUA, and buffers that are zero only
 * in part) through raw, qcow2 and file nodes with detect-zeroes off, on and
 * unmap (with discard=unmap), then block status over NBD (base:allocation)
 * and `qemu-img map` of the image once both daemons stopped. Also: unmap
 * without discard=unmap is refused with qsd's text, and blockdev-reopen
 * turns detection on and off. blockd accepted detect-zeroes and wrote the
 * zero buffers as data.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { join } from 'node:path';
import { SYSTEM_PYTHON, run, tryRun } from '../helpers/tools.ts';
import { startPair, type Pair, type Side, EMAP } from '../helpers/pair.ts';
import { QmpCommandError } from '../../src/qmp/client/qmp-client.ts';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

/** Writes, then the map over NBD. */
const WRITES = `
${EMAP}h = nbd.NBD(); h.add_meta_context("base:allocation"); h.connect_uri(uri)
z = lambda n: bytes(n)
h.pwrite(z(65536), 0)                          # over data, cluster-aligned
h.pwrite(z(65536), 1048576 + 4096)             # over data, not cluster-aligned
h.pwrite(z(4096), 3 * 1048576)                 # over a hole
h.pwrite(z(1000), 1543)                        # unaligned bytes over data
h.pwrite(z(131072), 2 * 1048576, nbd.CMD_FLAG_FUA)
h.pwrite(z(2 * 1048576), 4 * 1048576)           # larger than a piece of the zero scan, over data
part = bytearray(65536); part[65535] = 1
h.pwrite(bytes(part), 6 * 1048576)              # zero but for its last byte
part = bytearray(65536); part[30000] = 7
h.pwrite(bytes(part), 6 * 1048576 + 65536)      # zero but for one byte in the middle
h.flush()
res = {"map": emap(h), "data": h.pread(8192, 0).hex().count("0"), "tail": h.pread(65536, 6 * 1048576 + 65536)[29999:30002].hex()}
h.shutdown()
print(json.dumps(res))
`;

function setup(format: 'raw' | 'qcow2') {
  return (d: string) => {
    const img = join(d, `disk.${format}`);
    run('qemu-img', ['create', '-f', format, img, String(SIZE)]);
    // Flushed, so that the file's extents are allocated (not delayed) before the zero writes: ext4 maps them alike then.
    run('qemu-io', ['-f', format, '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x22 4M 3M', '-c', 'flush', img]);
  };
}

type Config = [what: string, format: 'raw' | 'qcow2', file: string, node: string, exportFile?: boolean];
const CONFIGS: Config[] = [
  ['raw, detect-zeroes=off', 'raw', '', ''],
  ['raw, detect-zeroes=on', 'raw', '', ',detect-zeroes=on'],
  ['raw, detect-zeroes=on, discard=unmap everywhere', 'raw', ',discard=unmap', ',detect-zeroes=on,discard=unmap'],
  ['raw, detect-zeroes=unmap, discard=unmap everywhere', 'raw', ',discard=unmap', ',detect-zeroes=unmap,discard=unmap'],
  ['raw, detect-zeroes=unmap, the file without discard=unmap', 'raw', '', ',detect-zeroes=unmap,discard=unmap'],
  ['raw over a direct-I/O file, detect-zeroes=unmap', 'raw', ',cache.direct=on,discard=unmap', ',detect-zeroes=unmap,discard=unmap'],
  ['file node exported, detect-zeroes=unmap', 'raw', ',detect-zeroes=unmap,discard=unmap', '', true],
  ['qcow2, detect-zeroes=off', 'qcow2', '', ''],
  ['qcow2, detect-zeroes=on', 'qcow2', '', ',detect-zeroes=on'],
  ['qcow2, detect-zeroes=unmap, discard=unmap everywhere', 'qcow2', ',discard=unmap', ',detect-zeroes=unmap,discard=unmap'],
  ['qcow2, detect-zeroes=unmap, the file without discard=unmap', 'qcow2', '', ',detect-zeroes=unmap,discard=unmap'],
];

function args([, format, file, node, exportFile]: Config) {
  return (d: string) => [
    '--blockdev', `driver=file,node-name=f0,filename=${join(d, `disk.${format}`)}${file}`,
    ...(exportFile ? [] : ['--blockdev', `driver=${format},node-name=d0,file=f0${node}`]),
    '--export', `type=nbd,id=e0,node-name=${exportFile ? 'f0' : 'd0'},name=disk,writable=on`,
  ];
}

/** qemu-img map of the stopped side's image (JSON, offsets into the file dropped for raw: they equal the guest's). */
function imageMap(s: Side, format: string): unknown {
  const img = join(s.dir, `disk.${format}`);
  // ext4 counts cached pages over unwritten extents as data for SEEK_DATA: what the page cache holds
  // (readahead differs between the daemons) is dropped first, so the map shows the file's extents.
  run(SYSTEM_PYTHON, ['-c', 'import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nos.fsync(fd)\nos.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)', img]);
  return JSON.parse(run('qemu-img', ['map', '--output=json', '-f', format, join(s.dir, `disk.${format}`)]))
    .map((e: Record<string, unknown>) => ({ start: e.start, length: e.length, data: e.data, zero: e.zero }));
}

async function outcome(s: Side, cmd: string, a: Record<string, unknown>): Promise<unknown> {
  try {
    return { return: await s.qmp.execute(cmd, a) };
  } catch (e) {
    if (e instanceof QmpCommandError) return { error: e.errorClass, desc: e.desc };
    throw e;
  }
}

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

describe('detect-zeroes, side by side with qsd', () => {
  for (const c of CONFIGS) {
    it(`${c[0]}: block status after zero writes, and the image's map, as qsd's`, async () => {
      pair = await startPair(setup(c[1]), args(c));
      const theirs = await pair.qsd.py('disk', WRITES);
      const ours = await pair.blockd.py('disk', WRITES);
      expect(ours).toEqual(theirs);
      await pair.stopDaemons();
      expect(imageMap(pair.blockd, c[1])).toEqual(imageMap(pair.qsd, c[1]));
    });
  }

  it('detect-zeroes=unmap without discard=unmap is refused with qsd\'s message', async () => {
    pair = await startPair(setup('raw'), (d) => ['--blockdev', `driver=file,node-name=f0,filename=${join(d, 'disk.raw')}`]);
    const add = (s: Side) => outcome(s, 'blockdev-add', { driver: 'raw', 'node-name': 'd0', file: 'f0', 'detect-zeroes': 'unmap' });
    const theirs = await add(pair.qsd);
    expect(theirs).toMatchObject({ error: 'GenericError' });
    expect(await add(pair.blockd)).toEqual(theirs);
    const cli = (cmd: string) => tryRun(cmd, ['--blockdev', `driver=file,node-name=f0,filename=${join(pair!.dir, 'qsd', 'disk.raw')},detect-zeroes=unmap,force-share=on,read-only=on`]);
    const q = cli('qemu-storage-daemon');
    const b = cli(join(import.meta.dirname, '../../bin/blockd'));
    expect([b.status, b.stderr.replace(/^blockd:/, '')]).toEqual([q.status, q.stderr.replace(/^qemu-storage-daemon:/, '')]);
  });

  it('blockdev-reopen switches detection on and off (and refuses unmap without discard=unmap)', async () => {
    const c: Config = ['raw', 'raw', ',discard=unmap', ''];
    pair = await startPair(setup('raw'), args(c));
    const steps = async (s: Side) => {
      const out: unknown[] = [];
      const reopen = (extra: Record<string, unknown>) => outcome(s, 'blockdev-reopen', { options: [{ driver: 'raw', 'node-name': 'd0', file: 'f0', ...extra }] });
      out.push(await reopen({ 'detect-zeroes': 'unmap' }));
      out.push(await reopen({ 'detect-zeroes': 'unmap', discard: 'unmap' }));
      out.push(await s.py('disk', 'h = nbd.NBD(); h.connect_uri(uri); h.pwrite(bytes(65536), 0); h.flush(); print("null")'));
      out.push(await reopen({ 'detect-zeroes': 'off' }));
      out.push(await s.py('disk', 'h = nbd.NBD(); h.connect_uri(uri); h.pwrite(bytes(65536), 1048576); h.flush(); print("null")'));
      return out;
    };
    const theirs = await steps(pair.qsd);
    const ours = await steps(pair.blockd);
    expect(ours).toEqual(theirs);
    await pair.stopDaemons();
    expect(imageMap(pair.blockd, 'raw')).toEqual(imageMap(pair.qsd, 'raw'));
  });
});
