/**
 * change-backing-file side by side with qemu-storage-daemon 7.2: on a
 * base <- mid <- top chain, the same refusals, and the same header change of
 * a read-only intermediate image (backing name and, as QEMU records it, the
 * image's own format) with the live graph and query-named-block-nodes as
 * qsd leaves them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import type { QmpClient } from '../../src/qmp/client/qmp-client.ts';
import { tempDir, type Running } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { run } from '../helpers/tools.ts';
import { BOTH, type Who } from '../helpers/pair.ts';

describe('change-backing-file side by side with qemu-storage-daemon', () => {
  const dir = tempDir('blockd-cbf-');
  const d = {} as Record<Who, { proc: Running; qmp: QmpClient; sub: string }>;

  beforeAll(async () => {
    for (const who of BOTH) {
      const sub = join(dir, who);
      run('mkdir', ['-p', sub]);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(sub, 'base.qcow2'), '4M']);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(sub, 'mid.qcow2')]);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', join(sub, 'top.qcow2')]);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', join(sub, 'other.qcow2'), '4M']);
      const r = await qmpDaemon(who, sub, [
        '--blockdev', `driver=qcow2,node-name=b,read-only=on,file.driver=file,file.filename=${join(sub, 'base.qcow2')}`,
        '--blockdev', `driver=qcow2,node-name=m,read-only=on,backing=b,file.driver=file,file.filename=${join(sub, 'mid.qcow2')}`,
        '--blockdev', `driver=qcow2,node-name=t,backing=m,file.driver=file,file.filename=${join(sub, 'top.qcow2')}`,
        '--blockdev', `driver=qcow2,node-name=o,file.driver=file,file.filename=${join(sub, 'other.qcow2')}`,
      ]);
      d[who] = { ...r, sub };
    }
  }, 60_000);
  afterAll(async () => {
    for (const x of Object.values(d)) { x.qmp.close(); await x.proc.stop(); }
  });

  it('refuses alike, then changes the header of a read-only intermediate image alike', async () => {
    const seen: Record<Who, unknown[]> = { qsd: [], blockd: [] };
    const tries: Record<string, string>[] = [
      { device: 'nope', 'image-node-name': 'm', 'backing-file': 'x' },
      { device: 't', 'image-node-name': 'nope', 'backing-file': 'x' },
      { device: 't', 'image-node-name': 'b', 'backing-file': 'x' },
      { device: 'm', 'image-node-name': 'm', 'backing-file': 'x' },
      { device: 'o', 'image-node-name': 'm', 'backing-file': 'x' },
      { device: 't', 'image-node-name': 'm', 'backing-file': 'renamed-base.qcow2' },
    ];
    for (const who of BOTH) {
      const { qmp, sub } = d[who];
      for (const t of tries) seen[who].push(await qmp.execute('change-backing-file', t).then(() => 'ok', (e: Error) => e.message));
      const nodes = (await qmp.execute('query-named-block-nodes')) as { 'node-name': string; ro: boolean; backing_file?: string; image: Record<string, unknown> }[];
      const m = nodes.find((n) => n['node-name'] === 'm')!;
      seen[who].push({ ro: m.ro, backing_file: m.backing_file?.replace(sub, '@'), 'backing-filename': m.image['backing-filename'], fmt: m.image['backing-filename-format'] });
      const info = JSON.parse(run('qemu-img', ['info', '-U', '--output=json', join(sub, 'mid.qcow2')]));
      seen[who].push({ 'backing-filename': info['backing-filename'], 'backing-filename-format': info['backing-filename-format'] });
      run('cp', [join(sub, 'base.qcow2'), join(sub, 'renamed-base.qcow2')]);
      expect(run('qemu-img', ['check', '-U', join(sub, 'mid.qcow2')])).toContain('No errors were found');
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.qsd.at(-1)).toEqual({ 'backing-filename': 'renamed-base.qcow2', 'backing-filename-format': 'qcow2' });
  });
});
