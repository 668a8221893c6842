/**
 * Every NBD command with length 0 (read, write, write-zeroes, trim, flush,
 * cache, block status), at offset 0, in the middle, at the end and just past
 * it, with each flag it takes, over simple and structured replies: blockd
 * answers with qsd's errno, on raw and qcow2 images, buffered and with
 * cache.direct=on, and on a direct-I/O file node exported as it is. (blockd
 * answered a zero-length write on a file with EIO.)
 */
import { describe, it, expect, afterEach } from 'vitest';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, type Pair } from '../helpers/pair.ts';

const SIZE = 1024 * 1024;

const PROBE = `
res = {}
for structured in (True, False):
    h = nbd.NBD(); h.set_strict_mode(0)
    h.set_request_structured_replies(structured)
    h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    size = h.get_size()
    cmds = {
        "read": lambda o: h.pread(0, o),
        "read FUA": lambda o: h.pread(0, o, nbd.CMD_FLAG_FUA),
        "read DF": lambda o: h.pread(0, o, nbd.CMD_FLAG_DF),
        "write": lambda o: h.pwrite(b"", o),
        "write FUA": lambda o: h.pwrite(b"", o, nbd.CMD_FLAG_FUA),
        "zero": lambda o: h.zero(0, o),
        "zero FUA": lambda o: h.zero(0, o, nbd.CMD_FLAG_FUA),
        "zero NO_HOLE": lambda o: h.zero(0, o, nbd.CMD_FLAG_NO_HOLE),
        "zero FAST_ZERO": lambda o: h.zero(0, o, nbd.CMD_FLAG_FAST_ZERO),
        "trim": lambda o: h.trim(0, o),
        "trim FUA": lambda o: h.trim(0, o, nbd.CMD_FLAG_FUA),
        "cache": lambda o: h.cache(0, o),
        "block status": lambda o: h.block_status(0, o, lambda *a: 0),
        "block status REQ_ONE": lambda o: h.block_status(0, o, lambda *a: 0, nbd.CMD_FLAG_REQ_ONE),
    }
    for where, off in (("at 0", 0), ("in the middle", size // 2 + 1), ("at the end", size), ("past the end", size + 1)):
        for name, fn in cmds.items():
            key = "%s %s %s" % ("structured" if structured else "simple", name, where)
            try:
                fn(off); res[key] = "ok"
            except nbd.Error as e:
                res[key] = errno.errorcode.get(e.errnum, e.errnum)
    try:
        h.zero(512, 512, nbd.CMD_FLAG_FAST_ZERO); res["zero FAST_ZERO of 512 bytes at 512"] = "ok"
    except nbd.Error as e:
        res["zero FAST_ZERO of 512 bytes at 512"] = errno.errorcode.get(e.errnum, e.errnum)
    try:
        h.flush(); res["flush"] = "ok"
    except nbd.Error as e:
        res["flush"] = errno.errorcode.get(e.errnum, e.errnum)
    res["data afterwards"] = h.pread(4096, 0).hex() + h.pread(4096, size - 4096).hex()
    h.shutdown()
print(json.dumps(res, sort_keys=True))
`;

const CONFIGS: [string, string, (dir: string) => string[]][] = [
  ['raw', 'raw', (d) => rawArgs(d, '')],
  ['raw, cache.direct=on', 'raw', (d) => rawArgs(d, ',cache.direct=on')],
  ['qcow2', 'qcow2', (d) => qcow2Args(d, '')],
  ['qcow2, cache.direct=on', 'qcow2', (d) => qcow2Args(d, ',cache.direct=on')],
  ['a direct-I/O file node exported as it is', 'raw', (d) => [
    '--blockdev', `driver=file,node-name=d0,filename=${join(d, 'disk.raw')},cache.direct=on`,
    '--export', 'type=nbd,id=e0,node-name=d0,writable=on',
  ]],
];

function rawArgs(d: string, fileOpts: string): string[] {
  return [
    '--blockdev', `driver=file,node-name=f0,filename=${join(d, 'disk.raw')}${fileOpts}`,
    '--blockdev', 'driver=raw,node-name=d0,file=f0',
    '--export', 'type=nbd,id=e0,node-name=d0,writable=on',
  ];
}

function qcow2Args(d: string, fileOpts: string): string[] {
  return [
    '--blockdev', `driver=file,node-name=f0,filename=${join(d, 'disk.qcow2')}${fileOpts}`,
    '--blockdev', 'driver=qcow2,node-name=d0,file=f0',
    '--export', 'type=nbd,id=e0,node-name=d0,writable=on',
  ];
}

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

describe('zero-length NBD requests, side by side with qsd', () => {
  for (const [what, format, args] of CONFIGS) {
    it(`${what}: every command with length 0 gets qsd's answer`, async () => {
      pair = await startPair((d) => {
        const img = join(d, `disk.${format}`);
        run('qemu-img', ['create', '-f', format, img, String(SIZE)]);
        run('qemu-io', ['-f', format, '-c', 'write -P 0x5a 0 8k', '-c', `write -P 0xa5 ${SIZE - 8192} 8k`, img]);
      }, args);
      const [theirs, ours] = await Promise.all([pair.qsd.py('d0', PROBE), pair.blockd.py('d0', PROBE)]);
      // A sample of what qsd does, so that a change on its side shows.
      expect((theirs as Record<string, string>)['structured write at the end']).toBe('ok');
      expect((theirs as Record<string, string>)['simple write at 0']).toBe('ok');
      expect(ours).toEqual(theirs);
    });
  }
});
