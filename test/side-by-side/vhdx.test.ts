/**
 * vhdx side by side with qsd 7.2 (#20). Images made by `qemu-img create`
 * (dynamic, fixed, block sizes, log sizes, block_state_zero off) and
 * `qemu-img convert`: the bytes served over NBD equal `qemu-img convert -O
 * raw` and qsd's; `nbdinfo --map` and the node's query-named-block-nodes row
 * equal qsd's. The same seeded writes through both daemons (512-byte
 * aligned: both advertise vhdx's 512-byte minimum block size): `qemu-img
 * check` clean, `qemu-img compare` equal to a raw model, and the image files
 * equal to qsd's with the fields each side makes at random masked (header
 * GUIDs, sequence numbers and checksums, the page 83 GUID, log entries'
 * GUIDs and checksums). A dirty log (QEMU's own, left by a BAT replay that
 * blkdebug failed): refused read-only with qsd's text, replayed on a
 * writable open as qsd replays it; a log built here (two entries across the
 * end of the ring, data and zero descriptors, file growth; also with its
 * second entry broken) replayed as qsd replays it. drive-backup onto a new
 * vhdx and onto an existing one probed as vhdx: clean targets equal to the
 * source, of qsd's sizes. QEMU's sample images (test/fixtures/vhdx: a
 * Hyper-V dynamic image, a Hyper-V dirty log, Disk2VHD's twin headers) as
 * qsd reads, writes and replays them. blockdev-create: the files (size and masked
 * bytes) and errors of qsd. Qemu-img makes no differencing vhdx
 * (no backing option) and QEMU 7.2 opens none; constructed ones are in the
 * mutated corpus, which blockdev-add refuses or opens as qsd, with its text.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, statSync, copyFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, tryRun } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';
import { crc32c } from '../../src/blockdev/drivers/vhdx/crc32c.ts';

const SIZE = 20 * 1024 * 1024;
const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function fixCrc(b: Buffer, start: number, length: number): void {
  b.writeUInt32LE(0, start + 4);
  b.writeUInt32LE(crc32c(b.subarray(start, start + length)), start + 4);
}

/** The bytes each side makes at random: both headers, the page 83 GUID, log entries' checksums and GUIDs. */
function masked(b: Buffer): Buffer {
  const out = Buffer.from(b);
  if (out.length < 4 * 65536) return out;
  out.fill(0, 65536, 3 * 65536);
  const logOffset = Number(b.readBigUInt64LE(65536 + 72));
  const logLength = b.readUInt32LE(65536 + 68);
  for (let at = logOffset; at + 4096 <= Math.min(out.length, logOffset + logLength); at += 4096) {
    // QEMU leaves the rest of an entry's descriptor sector uninitialised (qemu_blockalign).
    if (out.toString('latin1', at, at + 4) === 'loge') { out.fill(0, at + 4, at + 8); out.fill(0, at + 32, at + 48); out.fill(0, at + 64 + 32 * out.readUInt32LE(at + 24), at + 4096); }
  }
  const md = Number(b.readBigUInt64LE(3 * 65536 + 64));
  if (md + 65536 + 32 <= out.length) out.fill(0, md + 65536 + 16, md + 65536 + 32);
  return out;
}

function source(d: string): string {
  const raw = join(d, 'src.raw');
  writeFileSync(raw, Buffer.alloc(SIZE));
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 100k', '-c', 'write -P 0x22 2M 1M', '-c', 'write -P 0x33 17M 4k', raw]);
  return raw;
}

const W = (d: string) => run('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x44 1M 8k', '-c', 'write -P 0x45 9M 64k', join(d, 'd.vhdx')]);
const create = (d: string, o: string) => run('qemu-img', ['create', '-q', '-f', 'vhdx', ...(o ? ['-o', o] : []), join(d, 'd.vhdx'), String(SIZE)]);
const IMAGES: Record<string, (d: string) => void> = {
  'create, dynamic': (d) => { create(d, ''); W(d); },
  'create, dynamic, block_size=1M': (d) => { create(d, 'block_size=1M'); W(d); },
  'create, dynamic, block_state_zero=off, log_size=2M, block_size=2M': (d) => { create(d, 'block_state_zero=off,log_size=2M,block_size=2M'); W(d); },
  'create, fixed': (d) => { create(d, 'subformat=fixed'); W(d); },
  'convert, dynamic': (d) => run('qemu-img', ['convert', '-O', 'vhdx', source(d), join(d, 'd.vhdx')]),
  'convert, fixed, block_size=4M': (d) => run('qemu-img', ['convert', '-O', 'vhdx', '-o', 'subformat=fixed,block_size=4M', source(d), join(d, 'd.vhdx')]),
};

const WRITES = `import random
rnd = random.Random(13)
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
m = open(model, "r+b")
for i in range(60):
    off = rnd.randrange(0, (size - 300000) // 512) * 512
    n = rnd.randrange(1, 600) * 512
    if i % 7 == 3:
        h.zero(n, off); data = bytes(n)
    else:
        data = bytes([rnd.randrange(1, 256)]) * n; h.pwrite(data, off)
    m.seek(off); m.write(data)
h.flush()
print(json.dumps(0))
`;

/**
 * A dirty log as QEMU leaves it: blkdebug fails the replay's write of the BAT sector, so the entry stays in the log
 * (writes only: the log entry's merged BAT sector is read from there first).
 */
function dirty(d: string, name = 'd.vhdx'): void {
  run('qemu-img', ['create', '-q', '-f', 'vhdx', join(d, name), String(SIZE)]);
  run('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x66 3M 64k', join(d, name)]);
  const json = { driver: 'vhdx', file: { driver: 'blkdebug', 'inject-error': [{ event: 'pwritev', sector: 4096, iotype: 'write', errno: 5 }], image: { driver: 'file', filename: join(d, name) } } };
  const r = tryRun('qemu-io', ['-c', 'write -P 0x77 10M 64k', `json:${JSON.stringify(json)}`]);
  if (!r.stdout.includes('Input/output error')) throw new Error(`no dirty log made: ${r.stdout}${r.stderr}`);
}

interface Desc { at: number; data?: Buffer; zero?: number }

/** A log entry built here from the specification (not the driver's encoder): header, descriptors, data sectors, CRC-32C. */
function logEntry(seq: bigint, guid: Buffer, descs: Desc[], flushed: number, last: number): Buffer {
  const dataSectors = descs.filter((d) => d.data).length;
  const descSectors = Math.ceil((descs.length + 2) / 128);
  const b = Buffer.alloc((descSectors + dataSectors) * 4096);
  b.write('loge', 0, 'latin1');
  b.writeUInt32LE(b.length, 8);
  b.writeBigUInt64LE(seq, 16);
  b.writeUInt32LE(descs.length, 24);
  guid.copy(b, 32);
  b.writeBigUInt64LE(BigInt(flushed), 48);
  b.writeBigUInt64LE(BigInt(last), 56);
  let data = descSectors * 4096;
  descs.forEach((d, i) => {
    const at = 64 + 32 * i;
    if (d.data) {
      b.write('desc', at, 'latin1');
      d.data.copy(b, at + 4, 4092, 4096);
      d.data.copy(b, at + 8, 0, 8);
      b.write('data', data, 'latin1');
      b.writeUInt32LE(Number(seq >> 32n), data + 4);
      d.data.copy(b, data + 8, 8, 4092);
      b.writeUInt32LE(Number(seq & 0xffffffffn), data + 4092);
      data += 4096;
    } else {
      b.write('zero', at, 'latin1');
      b.writeBigUInt64LE(BigInt(d.zero!), at + 8);
    }
    b.writeBigUInt64LE(BigInt(d.at), at + 16);
    b.writeBigUInt64LE(seq, at + 24);
  });
  fixCrc(b, 0, b.length);
  return b;
}

/**
 * A log of two entries written across the end of the ring (1 MiB at 1 MiB): the first maps block 1 in the BAT sector
 * and writes past the end of the file (its last_file_offset unaligned, so the file is grown), the second zeroes 8 KiB
 * of block 0 and writes into block 1. `badSecond` spoils the second one's checksum.
 */
function constructedLog(d: string, name: string, badSecond: boolean): void {
  run('qemu-img', ['create', '-q', '-f', 'vhdx', join(d, name), String(SIZE)]);
  run('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x11 0 1M', join(d, name)]);
  const b = readFileSync(join(d, name));
  const guid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
  const bat = Buffer.from(b.subarray(2 * MiB, 2 * MiB + 4096));
  bat.writeBigUInt64LE(BigInt(16 * MiB) | 6n, 8);
  const a = logEntry(5n, guid, [{ at: 2 * MiB, data: bat }, { at: 16 * MiB + 4096, data: Buffer.alloc(4096, 0x99) }], b.length, 24 * MiB + 12345);
  const e = logEntry(6n, guid, [{ at: 8 * MiB, zero: 8192 }, { at: 16 * MiB + 8192, data: Buffer.alloc(4096, 0x5a) }], b.length, b.length);
  const ring = Buffer.alloc(MiB);
  a.copy(ring, MiB - 4096, 0, 4096);
  a.copy(ring, 0, 4096, 8192);
  a.copy(ring, 4096, 8192);
  if (badSecond) e[100] ^= 1;
  e.copy(ring, 4096 + a.length - 8192);
  ring.copy(b, MiB);
  for (const h of [65536, 2 * 65536]) { guid.copy(b, h + 48); fixCrc(b, h, 4096); }
  writeFileSync(join(d, name), b);
}

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'vhdx');
/** QEMU's sample image `name` (test/fixtures/vhdx) decompressed into `d`. */
function sample(d: string, name: string, as: string): void {
  copyFileSync(join(FIXTURES, `${name}.vhdx.bz2`), join(d, `${as}.bz2`));
  run('bzip2', ['-d', join(d, `${as}.bz2`)]);
}

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

const args = (d: string) => ['--blockdev', `driver=file,node-name=f0,filename=${join(d, 'd.vhdx')}`, '--blockdev', 'driver=vhdx,node-name=d0,file=f0',
  '--export', 'type=nbd,id=e0,node-name=d0,name=disk,writable=on'];

async function snapshot(side: Pair['qsd']): Promise<Record<string, unknown>> {
  const copy = join(side.dir, 'served.raw');
  run('nbdcopy', [side.uri('disk'), copy]);
  const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
  const row = nodes.find((n) => n['node-name'] === 'd0')!;
  const image = { ...(row.image as Record<string, unknown>) };
  delete image['actual-size'];
  return { bytes: sha(readFileSync(copy)), map: JSON.parse(run('nbdinfo', ['--map', '--json', side.uri('disk')])),
    row: [row.drv, String(row.file).split(side.dir).join('<d>'), JSON.stringify(image).split(side.dir).join('<d>')] };
}

describe('vhdx, side by side with qsd', () => {
  for (const [name, make] of Object.entries(IMAGES)) {
    it(`${name}: reads, map and node row as qsd and qemu-img; writes leave a clean image equal to qsd's`, async () => {
      pair = await startPair(make, args);
      const expected = join(pair.qsd.dir, 'expected.raw');
      run('qemu-img', ['convert', '-U', '-f', 'vhdx', '-O', 'raw', join(pair.qsd.dir, 'd.vhdx'), expected]);
      const want = sha(readFileSync(expected));
      const out: Record<string, unknown> = {};
      for (const who of BOTH) {
        const side = pair[who];
        const before = await snapshot(side);
        copyFileSync(expected, join(side.dir, 'model.raw'));
        await side.py('disk', `model = ${JSON.stringify(join(side.dir, 'model.raw'))}\n${WRITES}`, 120_000);
        out[who] = { ...before, after: await snapshot(side) };
      }
      expect(out.blockd).toEqual(out.qsd);
      expect((out.blockd as { bytes: string }).bytes).toBe(want);
      await pair.stopDaemons();
      for (const who of BOTH) {
        const img = join(pair[who].dir, 'd.vhdx');
        expect(run('qemu-img', ['check', '-f', 'vhdx', img])).toContain('No errors were found on the image.');
        run('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', img, join(pair[who].dir, 'model.raw')]);
      }
      const [a, b] = BOTH.map((who) => masked(readFileSync(join(pair![who].dir, 'd.vhdx'))));
      expect(a.length).toBe(b.length);
      expect(b.equals(a)).toBe(true);
    }, 180_000);
  }

  it('a dirty log: refused read-only with qsd\'s text; replayed on a writable open as qsd replays it', async () => {
    pair = await startPair((d) => { dirty(d); copyFileSync(join(d, 'd.vhdx'), join(d, 'ro.vhdx')); }, args);
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const ro = await side.qmp.execute('blockdev-add', { driver: 'vhdx', 'node-name': 'ro', 'read-only': true,
        file: { driver: 'file', filename: join(side.dir, 'ro.vhdx') } }).then(() => 'ok', (e: Error) => e.message.split(side.dir).join('<d>'));
      out[who] = { ro, ...(await snapshot(side)) };
    }
    expect(out.blockd).toEqual(out.qsd);
    expect((out.blockd as { ro: string }).ro).toContain('contains a log that needs to be replayed');
    await pair.stopDaemons();
    for (const who of BOTH) expect(run('qemu-img', ['check', '-f', 'vhdx', join(pair[who].dir, 'd.vhdx')])).toContain('No errors were found on the image.');
    const [a, b] = BOTH.map((who) => masked(readFileSync(join(pair![who].dir, 'd.vhdx'))));
    expect(b.equals(a)).toBe(true);
    // The replayed write is there: the block at 10M reads 0x77.
    const raw = join(pair.blockd.dir, 'out.raw');
    run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', join(pair.blockd.dir, 'd.vhdx'), raw]);
    expect(readFileSync(raw).subarray(10 * MiB, 10 * MiB + 65536).every((x) => x === 0x77)).toBe(true);
  }, 120_000);

  it('a constructed log of two entries across the end of the ring (data and zero descriptors, file growth): replayed as qsd, also with its second entry broken', async () => {
    pair = await startPair((d) => {
      constructedLog(d, 'd.vhdx', false);
      constructedLog(d, 'broken.vhdx', true);
      copyFileSync(join(d, 'd.vhdx'), join(d, 'ro.vhdx'));
    }, args);
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const add = (n: string, ro: boolean) => side.qmp.execute('blockdev-add', { driver: 'vhdx', 'node-name': n, 'read-only': ro,
        file: { driver: 'file', filename: join(side.dir, `${n}.vhdx`) } }).then(() => 'ok', (e: Error) => e.message.split(side.dir).join('<d>'));
      out[who] = { ro: await add('ro', true), broken: await add('broken', false), ...(await snapshot(side)) };
    }
    expect(out.blockd).toEqual(out.qsd);
    await pair.stopDaemons();
    for (const who of BOTH) {
      for (const n of ['d', 'broken']) {
        const img = join(pair[who].dir, `${n}.vhdx`);
        expect(run('qemu-img', ['check', '-f', 'vhdx', img])).toContain('No errors were found on the image.');
      }
    }
    for (const n of ['d', 'broken']) {
      const [a, b] = BOTH.map((who) => masked(readFileSync(join(pair![who].dir, `${n}.vhdx`))));
      expect(a.length).toBe(b.length);
      expect(b.equals(a)).toBe(true);
    }
    const bytes = (n: string) => {
      const raw = join(pair!.blockd.dir, `${n}.raw`);
      run('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', join(pair!.blockd.dir, `${n}.vhdx`), raw]);
      const r = readFileSync(raw);
      return [r[0], r[8192], r[8 * MiB + 4096], r[8 * MiB + 8192]];
    };
    // QEMU's search keeps the run with the highest first sequence number, so of the run 5, 6 it is the entry 6 alone
    // that is replayed (block 0 zeroed, block 1 still unmapped); with entry 6 broken, entry 5 maps block 1.
    expect(bytes('d')).toEqual([0, 0x11, 0, 0]);
    expect(bytes('broken')).toEqual([0x11, 0x11, 0x99, 0]);
    expect(statSync(join(pair.blockd.dir, 'broken.vhdx')).size).toBe(25 * MiB);
  }, 120_000);

  it('drive-backup onto a new vhdx (format vhdx) and onto an existing one without format (probed vhdx): the targets qsd makes', async () => {
    pair = await startPair((d) => { create(d, ''); W(d); run('qemu-img', ['create', '-q', '-f', 'vhdx', join(d, 'old.vhdx'), String(SIZE)]); },
      (d) => ['--blockdev', `driver=file,node-name=f0,filename=${join(d, 'd.vhdx')}`, '--blockdev', 'driver=vhdx,node-name=d0,file=f0']);
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const rows: unknown[] = [];
      for (const [id, target, extra] of [['b1', 'new.vhdx', { format: 'vhdx' }], ['b2', 'old.vhdx', { mode: 'existing' }]] as const) {
        await side.qmp.execute('drive-backup', { 'job-id': id, device: 'd0', target: join(side.dir, target), sync: 'full', ...extra });
        await waitFor(side.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && e.data.status === 'null');
        const done = side.events.find((e) => e.event === 'BLOCK_JOB_COMPLETED' && e.data.device === id);
        // Not `len`: qsd counts the last 8 MiB block whole (24 MiB for the 20 MiB disk), blockd's backup the disk's bytes.
        rows.push({ done: done !== undefined, error: done?.data.error ?? null });
      }
      const withFormat = await side.qmp.execute('drive-backup', { 'job-id': 'b3', device: 'd0', target: join(side.dir, 'x.vhdx'), sync: 'top', format: 'vhdx' })
        .then(() => 'ok', (e: Error) => e.message);
      out[who] = { rows, withFormat };
    }
    expect(out.blockd).toEqual(out.qsd);
    await pair.stopDaemons();
    for (const who of BOTH) {
      for (const t of ['new.vhdx', 'old.vhdx']) {
        const img = join(pair[who].dir, t);
        expect(run('qemu-img', ['check', '-f', 'vhdx', img])).toContain('No errors were found on the image.');
        run('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vhdx', img, join(pair[who].dir, 'd.vhdx')]);
      }
    }
    // The same file sizes; not the same bytes: QEMU's backup copies blocks in parallel, so its target's blocks lie in the
    // order its workers allocated them.
    for (const t of ['new.vhdx', 'old.vhdx']) expect(statSync(join(pair.blockd.dir, t)).size).toBe(statSync(join(pair.qsd.dir, t)).size);
  }, 120_000);

  it("QEMU's sample images (iotests 064, 070): Hyper-V's dynamic image read and written, its dirty log refused read-only and replayed, Disk2VHD's twin headers", async () => {
    pair = await startPair((d) => {
      sample(d, 'iotest-dynamic-1G', 'd.vhdx');
      sample(d, 'iotest-dirtylog-10G-4M', 'dirty.vhdx');
      copyFileSync(join(d, 'dirty.vhdx'), join(d, 'dirtyro.vhdx'));
      sample(d, 'test-disk2vhd', 'd2v.vhdx');
    }, args);
    const READS = `import hashlib
h = nbd.NBD()
h.connect_uri(uri)
M = 1024 * 1024
def digest(o, n):
    s = hashlib.sha256()
    for k in range(o, o + n, 16):
        s.update(h.pread(min(16, o + n - k) * M, k * M))
    return s.hexdigest()[:16]
def sums(ranges):
    return [digest(o, n) for o, n in ranges]
out = {"size": h.get_size(), "before": sums([(0, 33), (33, 33), (66, 62)])}
for k in range(99, 157, 16):
    h.pwrite(bytes([0xc3]) * (min(16, 157 - k) * M), k * M)
h.flush()
out["after"] = sums([(0, 33), (33, 33), (66, 33), (99, 58), (157, 99)])
print(json.dumps(out))
`;
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const add = (n: string, ro: boolean) => side.qmp.execute('blockdev-add', { driver: 'vhdx', 'node-name': n, 'read-only': ro,
        file: { driver: 'file', filename: join(side.dir, `${n}.vhdx`) } }).then(() => 'ok', (e: Error) => e.message.split(side.dir).join('<d>'));
      const opened = [await add('dirtyro', true), await add('dirty', false), await add('d2v', true)];
      await side.qmp.execute('nbd-server-add', { device: 'dirty', name: 'dirty' });
      await side.qmp.execute('nbd-server-add', { device: 'd2v', name: 'd2v' });
      const peek = `h = nbd.NBD()\nh.connect_uri(uri)\nimport hashlib\nprint(json.dumps([h.get_size(), hashlib.sha256(h.pread(20 * 1024 * 1024, 0)).hexdigest()]))\n`;
      out[who] = { opened, rw: await side.py('disk', READS, 120_000), dirty: await side.py('dirty', peek), d2v: await side.py('d2v', peek) };
    }
    expect(out.blockd).toEqual(out.qsd);
    expect((out.blockd as { opened: string[] }).opened[0]).toContain('contains a log that needs to be replayed');
    await pair.stopDaemons();
    for (const who of BOTH) {
      for (const n of ['d', 'dirty']) expect(run('qemu-img', ['check', '-f', 'vhdx', join(pair[who].dir, `${n}.vhdx`)])).toContain('No errors were found on the image.');
      run('qemu-io', ['-f', 'vhdx', '-c', 'read -P 0xa5 0 18M', join(pair[who].dir, 'dirty.vhdx')]);
      run('qemu-io', ['-f', 'vhdx', '-c', 'read -P 0xa5 0 33M', '-c', 'read -P 0x96 33M 33M', '-c', 'read -P 0xc3 99M 58M', join(pair[who].dir, 'd.vhdx')]);
    }
    for (const n of ['d', 'dirty']) {
      const [a, b] = BOTH.map((who) => masked(readFileSync(join(pair![who].dir, `${n}.vhdx`))));
      expect(a.length).toBe(b.length);
      expect(b.equals(a)).toBe(true);
    }
  }, 180_000);

  it('blockdev-create (dynamic, fixed, block and log sizes, block-state-zero, bad sizes): the files and errors of qsd', async () => {
    pair = await startPair(() => undefined, () => []);
    const cases: Record<string, unknown>[] = [
      { size: SIZE }, { size: SIZE, subformat: 'fixed' }, { size: SIZE, 'block-size': MiB }, { size: SIZE, 'block-state-zero': false },
      { size: SIZE, 'log-size': 3 * MiB, 'block-size': 32 * MiB }, { size: 3 * 1024 * MiB }, { size: 0 }, { size: 1000, subformat: 'fixed' },
      { size: SIZE, 'log-size': 1000 }, { size: SIZE, 'log-size': 2 ** 32 }, { size: SIZE, 'block-size': 3 * MiB },
      { size: SIZE, 'block-size': 512 * MiB }, { size: SIZE, 'block-size': 1000 }, { size: 2 ** 47 },
    ];
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (const [i, c] of cases.entries()) {
        const path = join(side.dir, `new${i}.vhdx`);
        const job = async (id: string, options: Record<string, unknown>) => {
          await side.qmp.execute('blockdev-create', { 'job-id': id, options });
          await waitFor(side.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id && e.data.status === 'concluded');
          const [j] = (await side.qmp.execute('query-jobs', {}) as { id: string; error?: string }[]).filter((x) => x.id === id);
          await side.qmp.execute('job-dismiss', { id });
          return j.error ?? 'ok';
        };
        await job(`f${i}`, { driver: 'file', filename: path, size: 0 });
        await side.qmp.execute('blockdev-add', { driver: 'file', 'node-name': `n${i}`, filename: path });
        const result = await job(`v${i}`, { driver: 'vhdx', file: `n${i}`, ...c });
        await side.qmp.execute('blockdev-del', { 'node-name': `n${i}` });
        const size = statSync(path).size;
        const bytes = size <= 128 << 20 ? masked(readFileSync(path)) : Buffer.alloc(0);
        const check = result === 'ok' ? tryRun('qemu-img', ['check', '-f', 'vhdx', path]).stdout.trim() : '';
        out[who].push({ result, size, content: sha(bytes), check });
      }
    }
    expect(out.blockd).toEqual(out.qsd);
  }, 180_000);

  it('a corpus of mutated headers, region tables, metadata, BATs and logs (seeded): blockdev-add refuses or opens as qsd, with its text', async () => {
    const N = 90;
    // Every fifth image (a mutated dirty log) is opened writable, the others read-only.
    pair = await startPair((d) => {
      run('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', join(d, 'base.vhdx'), String(SIZE)]);
      run('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x22 3M 64k', join(d, 'base.vhdx')]);
      dirty(d, 'dirty.vhdx');
      const base = readFileSync(join(d, 'base.vhdx'));
      const dirtyImg = readFileSync(join(d, 'dirty.vhdx'));
      let seed = 47;
      const rnd = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31; };
      const mdAt = Number(base.readBigUInt64LE(3 * 65536 + 64));
      for (let i = 0; i < N; i++) {
        const log = i % 5 === 4;
        const b = Buffer.from(log ? dirtyImg : base);
        const areas: [number, number, () => void][] = log
          ? [[MiB, 128, () => fixCrc(b, MiB, 8192)], [MiB + 4096, 16, () => fixCrc(b, MiB, 8192)], [MiB + 8192 - 8, 8, () => fixCrc(b, MiB, 8192)]]
          : [[65536, 80, () => fixCrc(b, 65536, 4096)], [2 * 65536, 80, () => fixCrc(b, 2 * 65536, 4096)],
            [3 * 65536, 80, () => fixCrc(b, 3 * 65536, 65536)], [mdAt, 200, () => undefined], [mdAt + 65536, 40, () => undefined], [2 * MiB, 64, () => undefined]];
        const [at, len, fix] = areas[Math.floor(rnd() * areas.length)];
        for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) {
          const p = at + Math.floor(rnd() * len);
          b[p] = rnd() < 0.5 ? Math.floor(rnd() * 256) : b[p] ^ (1 << Math.floor(rnd() * 8));
        }
        if (i % 2 === 0) fix();
        writeFileSync(join(d, `m${i}.vhdx`), b);
      }
      // Differencing images: has_parent without a locator, and a parent locator entry in the metadata table.
      const p1 = Buffer.from(base);
      p1.writeUInt32LE(2, mdAt + 65536 + 4);
      writeFileSync(join(d, 'diff1.vhdx'), p1);
      const p2 = Buffer.from(base);
      p2.writeUInt32LE(6, mdAt + 8);
      Buffer.from('2d5fd3a80bb34d45abf7d3d84834ab0c', 'hex').copy(p2, mdAt + 32 * 6);
      p2.writeUInt32LE(65536 + 40, mdAt + 32 * 6 + 16); p2.writeUInt32LE(20, mdAt + 32 * 6 + 20); p2.writeUInt32LE(4, mdAt + 32 * 6 + 24);
      p2.writeUInt32LE(2, mdAt + 65536 + 4);
      writeFileSync(join(d, 'diff2.vhdx'), p2);
      // Both headers broken; no file identifier; the dirty image opened read-only.
      const h = Buffer.from(base);
      h[65536 + 20] ^= 1; h[2 * 65536 + 20] ^= 1;
      writeFileSync(join(d, 'nohdr.vhdx'), h);
      const sig = Buffer.from(base);
      sig[3] ^= 1;
      writeFileSync(join(d, 'nosig.vhdx'), sig);
      writeFileSync(join(d, 'dirtyro.vhdx'), dirtyImg);
    }, () => []);
    const names = [...Array.from({ length: N }, (_, i) => `m${i}`), 'diff1', 'diff2', 'nohdr', 'nosig', 'dirtyro'];
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      out[who] = [];
      for (const [i, n] of names.entries()) {
        const writable = i < N && i % 5 === 4;
        const r = await side.qmp.execute('blockdev-add', { driver: 'vhdx', 'node-name': n, 'read-only': !writable,
          file: { driver: 'file', filename: join(side.dir, `${n}.vhdx`) } }).then(() => 'ok', (e: Error) => e.message.split(side.dir).join('<d>'));
        if (r === 'ok') await side.qmp.execute('blockdev-del', { 'node-name': n });
        out[who].push(`${n}: ${r}`);
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(new Set(out.blockd.map((x) => String(x).replace(/^\w+: /, '').replace(/'[^']*'/g, "''"))).size).toBeGreaterThanOrEqual(5);
  }, 180_000);
});
