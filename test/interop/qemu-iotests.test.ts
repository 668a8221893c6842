/**
 * QEMU's own qemu-iotests against blockd: `npm run iotests` (scripts/iotests.sh)
 * runs tests of Debian's qemu 7.2 source package with QSD_PROG=bin/blockd.
 * qsd-jobs: a job still running at `quit`, and block-stream refused with
 * qsd's permission conflict over a writably exported base; graph-changes-while-io:
 * blockdev-add/del of an overlay over a null-co node while qemu-img bench
 * writes to it over NBD from an iothread export. qsd 7.2 passes qsd-jobs; it
 * fails graph-changes-while-io itself (IOTESTS_QSD_PROG=qemu-storage-daemon:
 * "nbd_blockdev_client_closed: Assertion `qemu_in_main_thread() && nbd_server'
 * failed" as the test stops it), which blockd passes.
 * In FUSE mode (-fuse: check exports every test image through
 * --export type=fuse of QSD_PROG and the test works on the mounted file), a
 * sample that qsd 7.2 passes too: 025 (resize), 036 (feature bits), 046
 * (concurrent allocating writes), 079 (cluster sizes: each daemon is sent
 * SIGTERM while it is still starting, see shutdown.test.ts).
 * The first run fetches the source package (cached under ./var/).
 */
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { requireTool } from '../helpers/tools.ts';

const SCRIPT = join(import.meta.dirname, '../../scripts/iotests.sh');

describe("QEMU's qemu-iotests with QSD_PROG=blockd", () => {
  it('qsd-jobs and graph-changes-while-io pass', async () => {
    for (const t of ['qemu-img', 'qemu-io', 'qemu-nbd', 'qemu-system-x86_64', 'apt-get', 'dpkg-source']) requireTool(t);
    // Asynchronously: a worker blocked in a synchronous child for minutes misses vitest's RPC deadline.
    const p = spawn('bash', [SCRIPT, '-qcow2', 'qsd-jobs', 'graph-changes-while-io'], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 280_000 });
    let out = '';
    p.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    p.stderr.on('data', (b: Buffer) => { out += b.toString(); });
    const status = await new Promise<number | null>((resolve) => p.on('close', resolve));
    expect(out).toMatch(/qsd-jobs\s+pass/);
    expect(out).toMatch(/graph-changes-while-io\s+pass/);
    expect(out).toContain('Passed all 2 iotests');
    expect(status).toBe(0);
  }, 300_000);
});

describe("QEMU's qemu-iotests in FUSE mode with QSD_PROG=blockd", () => {
  it('025, 036, 046 and 079 pass with every image exported through blockd --export type=fuse', async () => {
    for (const t of ['qemu-img', 'qemu-io', 'qemu-nbd', 'qemu-system-x86_64', 'apt-get', 'dpkg-source', 'fusermount3']) requireTool(t);
    const tests = ['025', '036', '046', '079'];
    const p = spawn('bash', [SCRIPT, '-fuse', '-qcow2', ...tests], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 280_000 });
    let out = '';
    p.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    p.stderr.on('data', (b: Buffer) => { out += b.toString(); });
    const status = await new Promise<number | null>((resolve) => p.on('close', resolve));
    expect(out).toContain('IMGPROTO      -- fuse');
    for (const t of tests) expect(out).toMatch(new RegExp(`${t}\\s+pass`));
    expect(out).toContain(`Passed all ${tests.length} iotests`);
    expect(status).toBe(0);
  }, 300_000);
});
