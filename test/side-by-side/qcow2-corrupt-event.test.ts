/**
 * A qcow2 image found corrupt while in use: qsd and blockd both refuse the
 * read and send BLOCK_IMAGE_CORRUPTED with the same data (the qcow2 driver
 * emits it through its DriverContext's event sink; the daemon hands the QMP
 * event bus to the graph).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/daemons.ts';
import { qmpDaemon, waitFor, type Ev } from '../helpers/live.ts';
import { run, tryRun } from '../helpers/tools.ts';

const stops: (() => Promise<unknown>)[] = [];
afterEach(async () => { for (const s of stops.splice(0)) await s().catch(() => undefined); });

/** An image whose first L1 entry points at an unaligned L2 table. */
function corruptImage(dir: string): string {
  const f = join(dir, 'bad.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', f, '1M']);
  const b = readFileSync(f);
  const l1 = Number(b.readBigUInt64BE(40));
  b.writeBigUInt64BE((1n << 63n) | 0x10200n, l1);
  writeFileSync(f, b);
  return f;
}

async function corruptionEvents(which: 'blockd' | 'qsd'): Promise<{ read: string; events: Ev[] }> {
  const dir = tempDir(`corrupt-${which}-`);
  const img = corruptImage(dir);
  const nbd = join(dir, 'nbd.sock');
  const d = await qmpDaemon(which, dir, [
    '--blockdev', `driver=file,node-name=f0,filename=${img}`, '--blockdev', 'driver=qcow2,node-name=d0,file=f0',
    '--nbd-server', `addr.type=unix,addr.path=${nbd}`, '--export', 'type=nbd,id=e0,node-name=d0',
  ]);
  stops.push(() => d.proc.stop(), async () => d.qmp.close());
  const r = tryRun('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 4k', `nbd+unix:///d0?socket=${nbd}`]);
  await waitFor(d.events, (e) => e.event === 'BLOCK_IMAGE_CORRUPTED', 10_000);
  return { read: (r.stdout + r.stderr).trim(), events: d.events.filter((e) => e.event === 'BLOCK_IMAGE_CORRUPTED') };
}

describe('BLOCK_IMAGE_CORRUPTED, side by side with qsd', () => {
  it('an unaligned L2 table offset: the read fails with EIO and one event, data as qsd sends it', async () => {
    const q = await corruptionEvents('qsd');
    const b = await corruptionEvents('blockd');
    expect(q.read).toContain('Input/output error');
    expect(b.read).toContain('Input/output error');
    expect(q.events).toEqual([{ event: 'BLOCK_IMAGE_CORRUPTED', data: { device: '', msg: 'L2 table offset 0x10200 unaligned (L1 index: 0)', 'node-name': 'd0', fatal: true } }]);
    expect(b.events).toEqual(q.events);
  });
});
