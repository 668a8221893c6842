/**
 * blockdev-create for 'file' and the job commands, in-process: arguments
 * through the schema (the QMP visitor), handlers, the create job's event
 * sequence, and the created file's size and allocation.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { openSync, closeSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { nullDriver } from '../../src/blockdev/drivers/null.ts';
import { rawDriver } from '../../src/blockdev/drivers/raw.ts';
import { JobManager, JobError } from '../../src/blockdev/jobs/index.ts';
import { ofdLock } from '../../src/platform/native.ts';
import { fromJson } from '../../src/qapi/visit.ts';
import { jobCommands, type JobCommandContext } from '../../src/qmp/commands/jobs.ts';
import { argsType, type CommandContext } from '../../src/qmp/command.ts';
import { tempDir } from '../helpers/daemons.ts';

interface Ev { event: string; data: Record<string, unknown> }

function setup() {
  const events: Ev[] = [];
  const graph = new BlockGraph();
  // Creating files needs no driver in the graph; raw and null-co are drivers without image creation.
  graph.register(nullDriver);
  graph.register(rawDriver);
  const ctx: JobCommandContext = { jobs: new JobManager((event, data) => events.push({ event, data })), graph };
  /** Runs a command as QMP would: validate, then call. Returns the result or { error: { class, desc } }. */
  async function qmp(name: string, args: Record<string, unknown> = {}): Promise<unknown> {
    const cmd = jobCommands.find((c) => c.name === name);
    if (!cmd) throw new Error(`no command ${name}`);
    try {
      const valid = fromJson(argsType(cmd, ctx.graph), args) as never;
      return { return: await cmd.handler(valid, ctx as unknown as CommandContext) };
    } catch (e) {
      return { error: { class: e instanceof JobError ? e.qmpClass : 'GenericError', desc: (e as Error).message } };
    }
  }
  const statuses = (id: string) => events.filter((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id).map((e) => e.data.status);
  async function settle(id: string): Promise<void> {
    const job = ctx.jobs.get(id);
    if (job) await job.concluded;
  }
  return { events, ctx, qmp, statuses, settle };
}

let dir: string;
beforeAll(() => { dir = tempDir('blockd-jobs-create-'); });

describe('blockdev-create file', () => {
  it('creates a sparse file (first block allocated): created, running, waiting, pending, concluded; dismiss → null', async () => {
    const t = setup();
    const f = join(dir, 'a.img');
    expect(await t.qmp('blockdev-create', { 'job-id': 'j1', options: { driver: 'file', filename: f, size: 1048576 } })).toEqual({ return: {} });
    await t.settle('j1');
    expect(t.statuses('j1')).toEqual(['created', 'running', 'waiting', 'pending', 'concluded']);
    expect(await t.qmp('query-jobs')).toEqual({ return: [{ id: 'j1', type: 'create', status: 'concluded', 'current-progress': 1, 'total-progress': 1 }] });
    expect(await t.qmp('query-block-jobs')).toEqual({ return: [] });
    expect(await t.qmp('job-dismiss', { id: 'j1' })).toEqual({ return: {} });
    expect(t.statuses('j1').at(-1)).toBe('null');
    expect(t.events.every((e) => e.event === 'JOB_STATUS_CHANGE')).toBe(true);
    const st = statSync(f);
    expect(st.size).toBe(1048576);
    expect(st.blocks).toBe(8); // only the first 4 KiB is written, as qsd does
    expect(st.mode & 0o777).toBe(0o644 & ~process.umask());
  });

  it('preallocates with falloc and full, and empties an existing file first', async () => {
    const t = setup();
    const a = join(dir, 'falloc.img');
    const b = join(dir, 'full.img');
    writeFileSync(b, Buffer.alloc(3 * 1048576, 1));
    await t.qmp('blockdev-create', { 'job-id': 'fa', options: { driver: 'file', filename: a, size: 2 * 1048576 + 1000, preallocation: 'falloc' } });
    await t.qmp('blockdev-create', { 'job-id': 'fu', options: { driver: 'file', filename: b, size: 1048576 + 1000, preallocation: 'full' } });
    await t.settle('fa');
    await t.settle('fu');
    expect(t.ctx.jobs.queryJobs().map((j) => [j.id, j.status, j.error])).toEqual([['fu', 'concluded', undefined], ['fa', 'concluded', undefined]]);
    expect(statSync(a).size).toBe(2 * 1048576 + 1000);
    expect(statSync(a).blocks * 512).toBeGreaterThanOrEqual(2 * 1048576 + 1000);
    expect(statSync(b).size).toBe(1048576 + 1000);
    expect(statSync(b).blocks * 512).toBeGreaterThanOrEqual(1048576 + 1000);
    expect(statSync(b).blocks * 512).toBeLessThan(3 * 1048576);
  });

  it('fails the job (not the command) with qsd texts', async () => {
    const t = setup();
    const cases: [string, Record<string, unknown>, string, boolean][] = [
      ['m', { filename: join(dir, 'meta.img'), size: 4096, preallocation: 'metadata' }, 'Unsupported preallocation mode: metadata', true],
      ['x', { filename: join(dir, 'hint.img'), size: 4096, 'extent-size-hint': 2 ** 33 }, 'Extent size hint is too large', false],
      ['y', { filename: join(dir, 'hint2.img'), size: 4096, 'extent-size-hint': -1 }, 'Extent size hint is too large', false],
      ['n', { filename: '/nonexistent-dir/x.img', size: 4096 }, "Could not create '/nonexistent-dir/x.img': No such file or directory", false],
      ['d', { filename: dir, size: 4096 }, `Could not create '${dir}': Is a directory`, true],
      ['s', { filename: join(dir, 'neg.img'), size: -1 }, 'Could not resize file: Invalid argument', true],
      ['b', { filename: join(dir, 'big.img'), size: 2 ** 62 }, 'Could not resize file: File too large', true],
      ['f', { filename: join(dir, 'bigf.img'), size: 2 ** 60, preallocation: 'falloc' }, 'Could not preallocate new data: File too large', true],
    ];
    for (const [id, options, error, exists] of cases) {
      expect(await t.qmp('blockdev-create', { 'job-id': id, options: { driver: 'file', ...options } })).toEqual({ return: {} });
      await t.settle(id);
      expect(t.statuses(id)).toEqual(['created', 'running', 'aborting', 'concluded']);
      expect(t.ctx.jobs.find(id).info()).toEqual({ id, type: 'create', status: 'concluded', 'current-progress': 1, 'total-progress': 1, error });
      expect(existsSync(String(options.filename))).toBe(exists);
    }
    // Files created before the failing step are left empty, as qsd leaves them.
    expect(statSync(join(dir, 'meta.img')).size).toBe(0);
    expect(statSync(join(dir, 'bigf.img')).size).toBe(0);
  });

  it('refuses a file another user holds with resize unshared', async () => {
    const t = setup();
    const f = join(dir, 'locked.img');
    writeFileSync(f, Buffer.alloc(4096));
    const fd = openSync(f, 'r+');
    try {
      ofdLock(fd, 'r', 203, 1); // another user does not share "resize"
      await t.qmp('blockdev-create', { 'job-id': 'l1', options: { driver: 'file', filename: f, size: 8192 } });
      await t.settle('l1');
      expect(t.ctx.jobs.find('l1').error).toBe('Failed to get "resize" lock');
      ofdLock(fd, 'u', 203, 1);
      ofdLock(fd, 'r', 101, 1); // another user writes: fine, we share write
      await t.qmp('blockdev-create', { 'job-id': 'l2', options: { driver: 'file', filename: f, size: 8192 } });
      await t.settle('l2');
      expect(t.ctx.jobs.find('l2').error).toBeUndefined();
      ofdLock(fd, 'r', 103, 1); // another user resizes: we do not share resize
      await t.qmp('blockdev-create', { 'job-id': 'l3', options: { driver: 'file', filename: f, size: 4096 } });
      await t.settle('l3');
      expect(t.ctx.jobs.find('l3').error).toBe('Failed to get shared "resize" lock');
    } finally {
      closeSync(fd);
    }
    expect(statSync(f).size).toBe(8192);
  });
});

describe('blockdev-create arguments', () => {
  it('validates as qsd does', async () => {
    const t = setup();
    const f = join(dir, 'args.img');
    const err = (desc: string) => ({ error: { class: 'GenericError', desc } });
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'file', filename: f } })).toEqual(err("Parameter 'options.size' is missing"));
    expect(await t.qmp('blockdev-create', { options: { driver: 'file', filename: f, size: 5 } })).toEqual(err("Parameter 'job-id' is missing"));
    expect(await t.qmp('blockdev-create', { 'job-id': 'a' })).toEqual(err("Parameter 'options' is missing"));
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { filename: f, size: 5 } })).toEqual(err("Parameter 'options.driver' is missing"));
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'nosuch', size: 5 } })).toEqual(err("Parameter 'driver' does not accept value 'nosuch'"));
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'file', filename: f, size: 5, preallocation: 'bogus' } })).toEqual(err("Parameter 'preallocation' does not accept value 'bogus'"));
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'file', filename: f, size: 5, x: 1 } })).toEqual(err("Parameter 'options.x' is unexpected"));
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'file', filename: f, size: 1.5 } })).toEqual(err("Parameter 'options.size' expects uint64"));
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'raw', size: 5 } })).toEqual(err("Parameter 'options.size' is unexpected"));
    // The driver is checked before the job id.
    expect(await t.qmp('blockdev-create', { 'job-id': '1x', options: { driver: 'raw' } })).toEqual(err('Driver does not support blockdev-create'));
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'null-co' } })).toEqual(err('Driver does not support blockdev-create'));
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'vvfat' } })).toEqual(err("Parameter 'driver' does not accept value 'vvfat'"));
    expect(await t.qmp('blockdev-create', { 'job-id': '1bad', options: { driver: 'file', filename: f, size: 5 } })).toEqual(err("Invalid job ID '1bad'"));
    expect(await t.qmp('blockdev-create', { 'job-id': '', options: { driver: 'file', filename: f, size: 5 } })).toEqual(err("Invalid job ID ''"));
    expect(t.events).toEqual([]);
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'file', filename: f, size: 5 } })).toEqual({ return: {} });
    expect(await t.qmp('blockdev-create', { 'job-id': 'a', options: { driver: 'file', filename: f, size: 5 } })).toEqual(err("Job ID 'a' already in use"));
    await t.settle('a');
  });
});

describe('job commands', () => {
  it('refuse verbs with QEMU texts and classes', async () => {
    const t = setup();
    await t.qmp('blockdev-create', { 'job-id': 'j1', options: { driver: 'file', filename: join(dir, 'v.img'), size: 4096 } });
    await t.settle('j1');
    const err = (desc: string, cls = 'GenericError') => ({ error: { class: cls, desc } });
    expect(await t.qmp('job-pause', { id: 'j1' })).toEqual(err("Job 'j1' in state 'concluded' cannot accept command verb 'pause'"));
    expect(await t.qmp('job-resume', { id: 'j1' })).toEqual(err("Can't resume a job that was not paused"));
    expect(await t.qmp('job-cancel', { id: 'j1' })).toEqual(err("Job 'j1' in state 'concluded' cannot accept command verb 'cancel'"));
    expect(await t.qmp('job-complete', { id: 'j1' })).toEqual(err("Job 'j1' in state 'concluded' cannot accept command verb 'complete'"));
    expect(await t.qmp('job-finalize', { id: 'j1' })).toEqual(err("Job 'j1' in state 'concluded' cannot accept command verb 'finalize'"));
    for (const [name, args] of [
      ['block-job-pause', { device: 'j1' }], ['block-job-resume', { device: 'j1' }], ['block-job-cancel', { device: 'j1', force: true }],
      ['block-job-complete', { device: 'j1' }], ['block-job-set-speed', { device: 'j1', speed: 10 }],
      ['block-job-dismiss', { id: 'j1' }], ['block-job-finalize', { id: 'j1' }],
    ] as const) {
      expect(await t.qmp(name, args)).toEqual(err("Block job 'j1' not found", 'DeviceNotActive'));
    }
    expect(await t.qmp('job-pause', { id: 'nope' })).toEqual(err('Job not found'));
    expect(await t.qmp('job-dismiss', { id: 'nope' })).toEqual(err('Job not found'));
    expect(await t.qmp('job-dismiss', { id: 'j1' })).toEqual({ return: {} });
    expect(await t.qmp('job-dismiss', { id: 'j1' })).toEqual(err('Job not found'));
    expect(await t.qmp('job-pause', {})).toEqual(err("Parameter 'id' is missing"));
  });

  it('every command has a schema, a doc and a handler; names are unique', () => {
    const names = jobCommands.map((c) => c.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names.sort()).toEqual([
      'block-job-cancel', 'block-job-complete', 'block-job-dismiss', 'block-job-finalize', 'block-job-pause',
      'block-job-resume', 'block-job-set-speed', 'blockdev-create', 'job-cancel', 'job-complete', 'job-dismiss',
      'job-finalize', 'job-pause', 'job-resume', 'query-block-jobs', 'query-jobs', 'x-blockdev-amend',
    ]);
    for (const c of jobCommands) {
      expect(argsType(c, new BlockGraph()).kind).toBe('object');
      expect(c.doc.length).toBeGreaterThan(10);
    }
  });
});

