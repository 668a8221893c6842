/**
 * Writers of a direct-I/O file whose size is no multiple of its alignment,
 * side by side with qsd: a writable export over such a raw node (or its file
 * node) is refused with QEMU's "Cannot get 'write' permission without
 * 'resize': Image size is not a multiple of request alignment" (QEMU's
 * bdrv_node_refresh_perm: requests are aligned up and nothing may be written
 * past the end without resize), from block-export-add and from the command
 * line; read-only exports, buffered files and aligned sizes are accepted.
 * blockd accepted the writable export.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { requireTool } from '../helpers/tools.ts';
import { QmpCommandError } from '../../src/qmp/client/qmp-client.ts';

const SIZES = [1_000_000, 1_000_448, 1_048_576];

/** A sparse file of `size` bytes. */
function mkfile(path: string, size: number): void {
  closeSync(openSync(path, 'w'));
  truncateSync(path, size);
}

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

async function exportAdd(s: Side, a: Record<string, unknown>): Promise<unknown> {
  try {
    await s.qmp.execute('block-export-add', a);
    await s.qmp.execute('block-export-del', { id: a.id });
    return 'ok';
  } catch (e) {
    if (e instanceof QmpCommandError) return { error: e.errorClass, desc: e.desc };
    throw e;
  }
}

describe('writers of a direct-I/O file of unaligned size, side by side with qsd', () => {
  for (const size of SIZES) {
    it(`${size} bytes: block-export-add writable and not, over raw and file nodes, direct and buffered, as qsd`, async () => {
      pair = await startPair((d) => { for (const n of ['direct.raw', 'buffered.raw']) mkfile(join(d, n), size); }, (d) => [
        '--blockdev', `driver=file,node-name=fd,filename=${join(d, 'direct.raw')},cache.direct=on`,
        '--blockdev', 'driver=raw,node-name=rd,file=fd',
        '--blockdev', `driver=file,node-name=fb,filename=${join(d, 'buffered.raw')}`,
        '--blockdev', 'driver=raw,node-name=rb,file=fb',
      ]);
      const out: Record<string, unknown[]> = {};
      for (const who of BOTH) {
        out[who] = [];
        for (const node of ['rd', 'fd', 'rb']) {
          for (const writable of [true, false]) out[who]!.push([node, writable, await exportAdd(pair[who], { type: 'nbd', id: 'x', 'node-name': node, writable })]);
        }
      }
      expect(out.blockd).toEqual(out.qsd);
    });
  }

  it('the command line refuses the writable export alike', () => {
    const dir = tempDir();
    const img = join(dir, 'd.raw');
    mkfile(img, SIZES[0]!);
    const args = ['--blockdev', `driver=file,node-name=f0,filename=${img},cache.direct=on`, '--blockdev', 'driver=raw,node-name=d0,file=f0',
      '--nbd-server', `addr.type=unix,addr.path=${join(dir, 's.sock')}`, '--export', 'type=nbd,id=e0,node-name=d0,writable=on'];
    const q = spawnSync(requireTool('qemu-storage-daemon'), args, { encoding: 'utf8', timeout: 10_000 });
    const b = spawnSync(BLOCKD, args, { encoding: 'utf8', timeout: 20_000 });
    expect(q.status).toBe(1);
    expect([b.status, b.stderr.replace(/^blockd:/, '')]).toEqual([q.status, q.stderr.replace(/^qemu-storage-daemon:/, '')]);
  });
});
