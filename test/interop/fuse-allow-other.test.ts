/**
 * allow-other: 'auto' tries the mount with allow_other and falls back to a
 * mount without it (qsd's fuse_export_create); 'on' fails with qsd's text;
 * 'off' never asks. As root the kernel never refuses allow_other, so the
 * refusal is made by a mount function that refuses it, around the real one.
 * The export runs in this process: the file is only reached from child
 * processes (a synchronous call here would wait for this very thread).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { ExportDriverTable } from '../../src/export/drivers.ts';
import { BlockExports } from '../../src/export/registry.ts';
import { FuseExportDriver } from '../../src/fuse/export.ts';
import { mountFuse } from '../../src/fuse/mount.ts';
import { readMountInfo } from '../../src/fuse/mountinfo.ts';
import { tempDir } from '../helpers/temp.ts';
import { mountpointFile, runAsync, unmountAll } from '../helpers/fuse.ts';
import { memDriver } from '../helpers/nbd.ts';
import type { BlockExportOptionsValue } from '../../src/qapi/block-export.ts';

let exports: BlockExports | undefined;
let dir: string;
afterEach(async () => {
  await exports?.closeAll();
  exports = undefined;
  unmountAll(dir);
});

async function setUp(refuseAllowOther: boolean) {
  dir = tempDir('blockd-fuse-ao-');
  const graph = new BlockGraph();
  graph.register(memDriver());
  await graph.add({ driver: 'mem', 'node-name': 'n0', size: 1 << 20 });
  const calls: boolean[] = [];
  const fuse = new FuseExportDriver({
    mount: (mp, o) => {
      calls.push(o.allowOther);
      if (o.allowOther && refuseAllowOther) throw Object.assign(new Error('Operation not permitted'), { code: 'EPERM', errno: 1 });
      return mountFuse(mp, o);
    },
  });
  exports = new BlockExports(new ExportDriverTable([fuse]), { onError: (e) => { throw e; } });
  const add = (id: string, allow: string, mp: string) =>
    exports!.add(graph, { type: 'fuse', id, 'node-name': 'n0', mountpoint: mp, writable: true, 'allow-other': allow } as BlockExportOptionsValue);
  return { calls, add };
}

const fsTypeOf = (mp: string) => readMountInfo().find((m) => m.mountPoint === mp)?.fsType;

describe('allow-other', () => {
  it("'auto' falls back to a mount without allow_other; chmod for others is then refused (EPERM)", async () => {
    const { calls, add } = await setUp(true);
    const mp = mountpointFile(dir);
    add('e0', 'auto', mp);
    expect(calls).toEqual([true, false]);
    expect(fsTypeOf(mp)).toBe('fuse');
    const opts = (await runAsync('sh', ['-c', `grep " ${mp} " /proc/self/mountinfo`])).stdout;
    expect(opts).not.toContain('allow_other');
    const r = await runAsync('sh', ['-c', `chmod 0644 ${mp}; echo $?; chmod 0600 ${mp}; echo $?; stat -c '%a %s' ${mp}`]);
    expect(r.stdout.split('\n')).toEqual(['1', '0', '600 1048576', '']);
    expect(r.stderr).toContain('Operation not permitted');
  });

  it("'on' fails with qsd's text and leaves nothing mounted; 'off' asks once, without allow_other", async () => {
    const { calls, add } = await setUp(true);
    const mp = mountpointFile(dir);
    expect(() => add('e0', 'on', mp)).toThrow('Failed to mount FUSE session to export');
    expect(calls).toEqual([true]);
    expect(readMountInfo().filter((m) => m.mountPoint.startsWith(dir))).toEqual([]);
    expect(exports!.query()).toEqual([]);
    const mp2 = mountpointFile(dir, 'mnt2');
    add('e1', 'off', mp2);
    expect(calls).toEqual([true, false]);
    expect((await runAsync('stat', ['-c', '%s', mp2])).stdout.trim()).toBe('1048576');
  });

  it("'auto' keeps allow_other when the mount takes it; chmod for others is then allowed", async () => {
    const { calls, add } = await setUp(false);
    const mp = mountpointFile(dir);
    add('e0', 'auto', mp);
    expect(calls).toEqual([true]);
    const opts = (await runAsync('sh', ['-c', `grep " ${mp} " /proc/self/mountinfo`])).stdout;
    expect(opts).toContain('allow_other');
    expect((await runAsync('sh', ['-c', `chmod 0644 ${mp} && stat -c %a ${mp}`])).stdout.trim()).toBe('644');
  });
});
