/**
 * host_cdrom side by side with qsd 7.2 (#20). This machine has no CD-ROM
 * drive: on a loop device backed by an ISO-like file (Debian here has no
 * genisoimage or xorriso: a raw file with an ISO 9660 volume descriptor)
 * the node opens, read-only or read-write, with the same node rows as
 * qsd's, but it has no medium (QEMU asks the drive with CDROM_DRIVE_STATUS,
 * which a loop device refuses), so an NBD export of it, or of a raw node
 * above it, is refused with qsd's message. A regular file or a missing path
 * is refused with qsd's messages, and so is a read-write open of a block
 * device set read-only (QEMU's check_hdev_writable, host_device's too).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run, requireTool } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair } from '../helpers/pair.ts';
import { rng } from '../helpers/dmg.ts';

let pair: Pair | undefined;
const loops: string[] = [];
afterEach(async () => {
  await pair?.stop();
  pair = undefined;
  for (const l of loops.splice(0)) run('losetup', ['-d', l]);
});

function isoLike(file: string): void {
  const r = rng(5);
  const b = Buffer.alloc(4 << 20);
  for (let i = 0; i < b.length; i += 4096) b.fill(Math.floor(r() * 256), i, i + 2048);
  // The primary volume descriptor at sector 16 of 2048 bytes.
  b.fill(0, 16 * 2048, 17 * 2048);
  b[16 * 2048] = 1;
  b.write('CD001', 16 * 2048 + 1, 'latin1');
  b[16 * 2048 + 6] = 1;
  writeFileSync(file, b);
}

describe('host_cdrom, side by side with qsd', () => {
  it('on a loop device: opens as qsd (node rows), has no medium: NBD exports refused; a regular file and a missing path refused', async () => {
    requireTool('losetup');
    const dev: Record<string, string> = {};
    pair = await startPair((d) => {
      isoLike(join(d, 'disc.iso'));
      const loop = run('losetup', ['--find', '--show', '--read-only', join(d, 'disc.iso')]).trim();
      loops.push(loop);
      dev[d] = loop;
      const rw = run('losetup', ['--find', '--show', join(d, 'disc.iso')]).trim();
      loops.push(rw);
      dev[`${d}/rw`] = rw;
    }, () => []);
    const out: Record<string, unknown[]> = {};
    for (const who of BOTH) {
      const side = pair[who];
      const clean = (s: string) => s.replace(/^GenericError: /, '').split(side.dir).join('<d>').split(dev[side.dir]).join('<loop>').split(dev[`${side.dir}/rw`]).join('<loop-rw>');
      const tries: [string, Record<string, unknown>][] = [
        ['regular file', { driver: 'host_cdrom', 'node-name': 'c', filename: join(side.dir, 'disc.iso'), 'read-only': true }],
        ['missing', { driver: 'host_cdrom', 'node-name': 'c', filename: join(side.dir, 'nothing'), 'read-only': true }],
        ['loop, read-only', { driver: 'host_cdrom', 'node-name': 'c', filename: dev[side.dir], 'read-only': true }],
        ['read-only loop, read-write', { driver: 'host_cdrom', 'node-name': 'c', filename: dev[side.dir] }],
        ['read-only loop, auto-read-only', { driver: 'host_cdrom', 'node-name': 'c', filename: dev[side.dir], 'auto-read-only': true }],
        ['loop, read-write', { driver: 'host_cdrom', 'node-name': 'c', filename: dev[`${side.dir}/rw`] }],
        // file-posix's check_hdev_writable is host_device's too; host_device has its medium.
        ['host_device, read-only loop, read-write', { driver: 'host_device', 'node-name': 'c', filename: dev[side.dir] }],
        ['host_device, read-only', { driver: 'host_device', 'node-name': 'c', filename: dev[side.dir], 'read-only': true }],
        ['raw over it', { driver: 'raw', 'node-name': 'c', 'read-only': true, file: { driver: 'host_cdrom', filename: dev[side.dir], 'read-only': true } }],
      ];
      out[who] = [];
      for (const [what, args] of tries) {
        const r = await side.qmp.execute('blockdev-add', args).then(() => 'ok', (e: Error) => clean(e.message));
        const row: unknown[] = [what, r];
        if (r === 'ok') {
          const nodes = (await side.qmp.execute('query-named-block-nodes', { flat: true })) as Record<string, unknown>[];
          row.push(nodes.map((n) => {
            const image = { ...(n.image as Record<string, unknown>) };
            delete image['actual-size'];
            return [n.drv, n.ro, clean(String(n.file)), clean(JSON.stringify(image))];
          }));
          row.push(await side.qmp.execute('block-export-add', { type: 'nbd', id: 'e', 'node-name': 'c', name: 'disc' })
            .then(() => 'ok', (e: Error) => clean(e.message)));
          if (row[3] === 'ok') await side.qmp.execute('block-export-del', { id: 'e' });
          await side.qmp.execute('blockdev-del', { 'node-name': 'c' });
        }
        out[who].push(row);
      }
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(out.blockd.map((r) => (r as string[])[1])).toEqual([
      "'host_cdrom' driver requires '<d>/disc.iso' to be either a character or block device",
      "Could not open '<d>/nothing': No such file or directory",
      'ok', 'The device is not writable: Permission denied', 'ok', 'ok', 'The device is not writable: Permission denied', 'ok', 'ok',
    ]);
    const noMedium = "Failed to determine the NBD export's length: No medium found";
    expect(out.blockd.filter((r) => (r as string[])[1] === 'ok').map((r) => (r as string[])[3])).toEqual([noMedium, noMedium, noMedium, 'ok', noMedium]);
  }, 120_000);
});
