/**
 * blklogwrites side by side with qsd 7.2 (#20): the same writes, write
 * zeroes, discards, flushes and FUA writes over NBD through each daemon give
 * byte-equal dm-log-writes logs and disks (log sector sizes 512 and 4096,
 * a small log-super-update-interval, log-append continuing a log); option
 * errors and the node's query-named-block-nodes row are qsd's.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';

const MiB = 1024 * 1024;

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

function setup(d: string): void {
  const disk = Buffer.alloc(4 * MiB);
  for (let i = 0; i < disk.length; i += 4096) disk[i] = (i / 4096) & 0xff;
  writeFileSync(join(d, 'disk.raw'), disk);
  writeFileSync(join(d, 'log.raw'), Buffer.alloc(0));
  const bad = Buffer.alloc(4096);
  bad.write('not a log');
  writeFileSync(join(d, 'bad.raw'), bad);
  const v2 = Buffer.alloc(4096);
  v2.writeBigUInt64LE(0x6a736677736872n, 0);
  v2.writeBigUInt64LE(2n, 8);
  writeFileSync(join(d, 'v2.raw'), v2);
}

async function start(): Promise<Pair> {
  return startPair(setup, (d) => [
    '--blockdev', `driver=file,node-name=f0,filename=${join(d, 'disk.raw')}`,
    '--blockdev', `driver=file,node-name=l0,filename=${join(d, 'log.raw')}`,
    '--blockdev', `driver=file,node-name=bad,filename=${join(d, 'bad.raw')}`,
    '--blockdev', `driver=file,node-name=v2,filename=${join(d, 'v2.raw')}`,
  ]);
}

/** Aligned to 4096 so that both sector sizes take it without read-modify-write surprises at the NBD edge. */
const WRITES = `h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(b"a" * 4096, 0)
h.pwrite(b"b" * 65536, 8192)
h.flush()
h.flush()
h.zero(131072, 4096 * 3)
h.trim(65536, 1024 * 1024)
h.pwrite(bytes(range(256)) * 64, 2 * 1024 * 1024, nbd.CMD_FLAG_FUA)
h.pwrite(b"c" * 4096, 3 * 1024 * 1024, nbd.CMD_FLAG_FUA)
h.zero(40960, 4096, nbd.CMD_FLAG_FUA)
h.pwrite(b"d" * 300 * 1024, 1024 * 1024)
h.flush()
h.pwrite(b"e" * 4096, 4096)
print(json.dumps([sorted(set(h.pread(4096, 0))), sorted(set(h.pread(4096, 2 * 1024 * 1024)))[:4], h.get_size()]))
`;

/** The log as superblock and entries (target sector, sectors, flags; a digest of each entry's data), to show where two logs part. */
function entries(log: Buffer): unknown[] {
  if (log.length < 32) return ['empty'];
  const ss = log.readUInt32LE(24);
  const out: unknown[] = [{ entries: Number(log.readBigUInt64LE(16)), ss }];
  for (let at = ss; at + 32 <= log.length;) {
    const sector = Number(log.readBigUInt64LE(at)); const n = Number(log.readBigUInt64LE(at + 8)); const flags = Number(log.readBigUInt64LE(at + 16));
    const len = flags & 4 ? 0 : n * ss;
    const data = log.subarray(at + ss, at + ss + len);
    out.push([sector, n, flags, [...new Set(data)].slice(0, 4)]);
    at += ss + len;
  }
  return out;
}

async function addExport(side: Side, extra: Record<string, unknown>): Promise<void> {
  await side.qmp.execute('blockdev-add', { driver: 'blklogwrites', 'node-name': 'w0', file: 'f0', log: 'l0', discard: 'unmap', ...extra });
  await side.qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'w0', name: 'w', writable: true });
}

async function removeExport(side: Side): Promise<void> {
  await side.qmp.execute('block-export-del', { id: 'e0' });
  await waitFor(side.events, (e) => e.event === 'BLOCK_EXPORT_DELETED');
  side.events.length = 0;
  await side.qmp.execute('blockdev-del', { 'node-name': 'w0' });
}

const row = async (side: Side) => {
  const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
  return nodes.filter((n) => n['node-name'] === 'w0').map((n) => [n.drv, String(n.file).split(side.dir).join('<d>'), n.ro, (n.image as Record<string, unknown>)['virtual-size']]);
};

describe('blklogwrites, side by side with qsd', () => {
  for (const extra of [{}, { 'log-sector-size': 4096 }, { 'log-super-update-interval': 2 }] as Record<string, unknown>[]) {
    it(`the same writes give equal logs (${JSON.stringify(extra)})`, async () => {
      pair = await start();
      const out: Record<string, unknown> = {};
      for (const who of BOTH) {
        const side = pair[who];
        await addExport(side, extra);
        const reads = await side.py('w', WRITES);
        out[who] = { reads, row: await row(side) };
        // Closing the node flushes it: after the last write there is one more FLUSH entry.
        await removeExport(side);
      }
      expect(out.blockd).toEqual(out.qsd);
      await pair.stopDaemons();
      const file = (who: 'qsd' | 'blockd', f: string) => readFileSync(join(pair![who].dir, f));
      expect(file('qsd', 'log.raw').length).toBeGreaterThan(4096);
      expect(entries(file('blockd', 'log.raw'))).toEqual(entries(file('qsd', 'log.raw')));
      expect(file('blockd', 'log.raw').equals(file('qsd', 'log.raw'))).toBe(true);
      expect(file('blockd', 'disk.raw').equals(file('qsd', 'disk.raw'))).toBe(true);
    }, 120_000);
  }

  it('log-append goes on where the log ended', async () => {
    pair = await start();
    for (const who of BOTH) {
      const side = pair[who];
      await addExport(side, { 'log-sector-size': 4096 });
      await side.py('w', WRITES);
      await removeExport(side);
      await addExport(side, { 'log-append': true });
      await side.py('w', WRITES);
      await removeExport(side);
    }
    await pair.stopDaemons();
    const file = (who: 'qsd' | 'blockd', f: string) => readFileSync(join(pair![who].dir, f));
    expect(file('blockd', 'log.raw').equals(file('qsd', 'log.raw'))).toBe(true);
    expect(file('blockd', 'disk.raw').equals(file('qsd', 'disk.raw'))).toBe(true);
  }, 120_000);

  it('refuses bad options with qsd\'s errors', async () => {
    pair = await start();
    const bad: Record<string, unknown>[] = [
      { 'log-sector-size': 1000 },
      { 'log-sector-size': 16 },
      { 'log-sector-size': 0 },
      { 'log-sector-size': 16777216 },
      { 'log-append': true, 'log-sector-size': 512 },
      { 'log-super-update-interval': 0 },
      { 'log-append': true, log: 'bad' },
      { 'log-append': true, log: 'v2' },
      { log: 'nope' },
    ];
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const replies: unknown[] = [];
      for (const b of bad) {
        replies.push(await side.qmp.execute('blockdev-add', { driver: 'blklogwrites', 'node-name': 'w0', file: 'f0', log: 'l0', ...b }).then(() => 'ok', (e: Error) => e.message));
        await side.qmp.execute('blockdev-del', { 'node-name': 'w0' }).catch(() => undefined);
      }
      // An empty log can be appended to (QEMU fakes its superblock).
      replies.push(await side.qmp.execute('blockdev-add', { driver: 'blklogwrites', 'node-name': 'w0', file: 'f0', log: 'l0', 'log-append': true }).then(() => 'ok', (e: Error) => e.message));
      replies.push(await row(side));
      out[who] = replies;
    }
    expect(out.blockd).toEqual(out.qsd);
  }, 120_000);
});
