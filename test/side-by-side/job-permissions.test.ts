/**
 * Permissions of jobs, side by side with qsd: with an export (writable or
 * not) on a node of a backing chain or on a job's target, stream,
 * intermediate commit, mirror and backup are started with the same commands; the reply (qsd's "Permission conflict on node ..." text, or
 * success) and, for a refusal, the job's status changes (created, null)
 * equal qsd's; for a started job, its filter's read-only flag and driver.
 * blockd started block-stream over a writably exported backing node, a
 * commit into a writably exported base and a mirror onto an exported
 * target, and its conflict texts were its own; it also started an active
 * commit over an exported middle layer (qsd: 'consistent read' unshared by
 * the job's 'intermediate node'), and ran a commit of a layer with a writer
 * as an intermediate one with 'commit_top' (qsd, as QEMU's qmp_block_commit:
 * an active commit of that layer, 'mirror_top').
 */
import { describe, it, expect, afterEach } from 'vitest';
import { join } from 'node:path';
import { run } from '../helpers/tools.ts';
import { startPair, BOTH, type Pair, type Side } from '../helpers/pair.ts';
import { waitFor } from '../helpers/live.ts';
import { QmpCommandError } from '../../src/qmp/client/qmp-client.ts';

const SIZE = 4 * 1024 * 1024;

function setup(d: string): void {
  const img = (n: string) => join(d, n);
  run('qemu-img', ['create', '-f', 'qcow2', img('base.qcow2'), String(SIZE)]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', img('base.qcow2')]);
  run('qemu-img', ['create', '-f', 'qcow2', '-b', img('base.qcow2'), '-F', 'qcow2', img('mid.qcow2')]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 1M 1M', img('mid.qcow2')]);
  run('qemu-img', ['create', '-f', 'qcow2', '-b', img('mid.qcow2'), '-F', 'qcow2', img('top.qcow2')]);
  run('qemu-img', ['create', '-f', 'qcow2', img('tgt.qcow2'), String(SIZE)]);
}

function chainArgs(d: string): string[] {
  const img = (n: string) => join(d, n);
  return [
    '--blockdev', `driver=file,node-name=file_base,filename=${img('base.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=fmt_base,file=file_base',
    '--blockdev', `driver=file,node-name=file_mid,filename=${img('mid.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=fmt_mid,file=file_mid,backing=fmt_base',
    '--blockdev', `driver=file,node-name=file_top,filename=${img('top.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=fmt_top,file=file_top,backing=fmt_mid',
    '--blockdev', `driver=file,node-name=file_tgt,filename=${img('tgt.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=fmt_tgt,file=file_tgt',
  ];
}

interface Case { what: string; exported: string; writable: boolean; cmd: string; args: Record<string, unknown> }
const CASES: Case[] = [
  { what: 'block-stream of the whole chain, the base exported writable', exported: 'fmt_base', writable: true, cmd: 'block-stream', args: { device: 'fmt_top' } },
  { what: 'block-stream of the whole chain, the base exported read-only', exported: 'fmt_base', writable: false, cmd: 'block-stream', args: { device: 'fmt_top' } },
  { what: 'block-stream down to the base, the middle layer exported writable', exported: 'fmt_mid', writable: true, cmd: 'block-stream', args: { device: 'fmt_top', 'base-node': 'fmt_base' } },
  { what: 'block-stream down to the base, the base exported writable', exported: 'fmt_base', writable: true, cmd: 'block-stream', args: { device: 'fmt_top', 'base-node': 'fmt_base' } },
  { what: 'intermediate block-commit, the base exported writable', exported: 'fmt_base', writable: true, cmd: 'block-commit', args: { device: 'fmt_top', 'top-node': 'fmt_mid', 'base-node': 'fmt_base', speed: 1024, 'filter-node-name': 'ct' } },
  { what: 'active block-commit, the base exported writable', exported: 'fmt_base', writable: true, cmd: 'block-commit', args: { device: 'fmt_top', 'base-node': 'fmt_base' } },
  { what: 'active block-commit, the middle layer exported read-only', exported: 'fmt_mid', writable: false, cmd: 'block-commit', args: { device: 'fmt_top', 'base-node': 'fmt_base' } },
  { what: 'active block-commit, the middle layer exported writable', exported: 'fmt_mid', writable: true, cmd: 'block-commit', args: { device: 'fmt_top', 'base-node': 'fmt_base' } },
  { what: 'intermediate block-commit, the committed layer exported read-only', exported: 'fmt_mid', writable: false, cmd: 'block-commit', args: { device: 'fmt_top', 'top-node': 'fmt_mid', 'base-node': 'fmt_base', speed: 1024, 'filter-node-name': 'ct' } },
  { what: 'intermediate block-commit with backing-file, the committed layer exported writable', exported: 'fmt_mid', writable: true, cmd: 'block-commit', args: { device: 'fmt_top', 'top-node': 'fmt_mid', 'base-node': 'fmt_base', 'backing-file': 'base.qcow2' } },
  { what: 'intermediate block-commit, no export in the way', exported: 'fmt_tgt', writable: true, cmd: 'block-commit', args: { device: 'fmt_top', 'top-node': 'fmt_mid', 'base-node': 'fmt_base', speed: 1024, 'filter-node-name': 'ct' } },
  { what: 'active block-commit with a filter name, no export in the way', exported: 'fmt_tgt', writable: true, cmd: 'block-commit', args: { device: 'fmt_top', 'base-node': 'fmt_base', speed: 1024, 'filter-node-name': 'ct' } },
  { what: 'intermediate block-commit, the committed layer exported writable', exported: 'fmt_mid', writable: true, cmd: 'block-commit', args: { device: 'fmt_top', 'top-node': 'fmt_mid', 'base-node': 'fmt_base', speed: 1024, 'filter-node-name': 'ct' } },
  { what: 'blockdev-mirror, the target exported writable', exported: 'fmt_tgt', writable: true, cmd: 'blockdev-mirror', args: { device: 'fmt_top', target: 'fmt_tgt', sync: 'full' } },
  { what: 'blockdev-mirror, the target exported read-only', exported: 'fmt_tgt', writable: false, cmd: 'blockdev-mirror', args: { device: 'fmt_top', target: 'fmt_tgt', sync: 'full' } },
  { what: 'blockdev-backup, the target exported writable', exported: 'fmt_tgt', writable: true, cmd: 'blockdev-backup', args: { device: 'fmt_top', target: 'fmt_tgt', sync: 'full' } },
  { what: 'blockdev-backup, the target exported read-only', exported: 'fmt_tgt', writable: false, cmd: 'blockdev-backup', args: { device: 'fmt_top', target: 'fmt_tgt', sync: 'full' } },
];

/** The command's reply, and the job's status changes when it was refused; a started job is cancelled and waited for. */
async function attempt(s: Side, c: Case): Promise<unknown> {
  try {
    await s.qmp.execute(c.cmd, { 'job-id': 'job0', ...c.args });
  } catch (e) {
    if (!(e instanceof QmpCommandError)) throw e;
    const statuses = s.events.filter((ev) => ev.event === 'JOB_STATUS_CHANGE' && ev.data.id === 'job0').map((ev) => ev.data.status);
    return { error: e.errorClass, desc: e.desc, statuses };
  }
  // The job's filter: commit_top (read-only) for an intermediate commit, mirror_top (read-write) for an
  // active one, which a commit of a layer with a writer (a writable export of it) is.
  const nodes = await s.qmp.execute<{ 'node-name': string; ro: boolean; drv: string }[]>('query-named-block-nodes', { flat: true });
  const filters = nodes.filter((n) => n['node-name'] === 'ct').map((n) => ({ ro: n.ro, drv: n.drv }));
  // A small backup can finish (and be dismissed) before the cancel arrives: then it has already ended.
  await s.qmp.execute('job-cancel', { id: 'job0' }).catch((e: unknown) => {
    if (!(e instanceof QmpCommandError && e.desc === 'Job not found')) throw e;
  });
  await waitFor(s.events, (ev) => ev.event === 'JOB_STATUS_CHANGE' && ev.data.id === 'job0' && ev.data.status === 'null');
  return { return: {}, filters };
}

let pair: Pair | undefined;
afterEach(async () => { await pair?.stop(); pair = undefined; });

describe('permissions of jobs, side by side with qsd', () => {
  for (const c of CASES) {
    it(`${c.what}: the same reply as qsd`, async () => {
      pair = await startPair(setup, (d) => [...chainArgs(d),
        '--export', `type=nbd,id=export1,node-name=${c.exported},name=export1,writable=${c.writable ? 'on' : 'off'}`]);
      const out: Record<string, unknown> = {};
      for (const who of BOTH) out[who] = await attempt(pair[who], c);
      expect(out.blockd).toEqual(out.qsd);
    });
  }
});

describe('a commit of a layer with a writer runs as an active commit, as in qsd', () => {
  it('READY, a write through the export, job-complete: the export ends on the base, the same events, data and chain as qsd', async () => {
    pair = await startPair(setup, (d) => [...chainArgs(d), '--export', 'type=nbd,id=export1,node-name=fmt_mid,name=export1,writable=on']);
    const out: Record<string, unknown> = {};
    for (const who of BOTH) {
      const s = pair[who];
      await s.qmp.execute('block-commit', { 'job-id': 'job0', device: 'fmt_top', 'top-node': 'fmt_mid', 'base-node': 'fmt_base', 'filter-node-name': 'ct' });
      await waitFor(s.events, (ev) => ev.event === 'BLOCK_JOB_READY');
      run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 2M 64k', s.uri('export1')]);
      await s.qmp.execute('job-complete', { id: 'job0' });
      await waitFor(s.events, (ev) => ev.event === 'JOB_STATUS_CHANGE' && ev.data.id === 'job0' && ev.data.status === 'null');
      const exportsNow = await s.qmp.execute<{ 'node-name': string }[]>('query-block-exports');
      const nodes = await s.qmp.execute<{ 'node-name': string; backing_file_depth: number }[]>('query-named-block-nodes', { flat: true });
      const data = s.py('export1', [
        'h = nbd.NBD(); h.connect_uri(uri)',
        'print(json.dumps([h.pread(1, 0).hex(), h.pread(1, 1 << 20).hex(), h.pread(1, 2 << 20).hex(), h.pread(1, (2 << 20) + 65536).hex()]))',
      ].join('\n'));
      out[who] = {
        events: s.events.filter((ev) => ev.event.startsWith('BLOCK_JOB') || ev.event === 'JOB_STATUS_CHANGE')
          .map((ev) => (ev.event === 'JOB_STATUS_CHANGE' ? ev.data.status : ev.event)),
        exports: exportsNow.map((e) => e['node-name']),
        nodes: nodes.map((n) => `${n['node-name']}:${n.backing_file_depth}`).sort(),
        data: await data,
      };
    }
    expect(out.blockd).toEqual(out.qsd);
    expect(out.blockd).toMatchObject({ exports: ['fmt_base'], data: ['11', '22', '44', '00'] });
  });
});
