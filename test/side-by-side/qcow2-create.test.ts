/**
 * qcow2 image creation against QEMU 7.2:
 *  - the layout model (drivers/qcow2/create-layout.ts) equals what
 *    `qemu-img create -f qcow2` writes, byte for byte, for many option sets;
 *  - blockdev-create qcow2 in-process: qemu-img check is clean and
 *    qemu-img info (format-specific data, cluster size, sizes, allocation)
 *    equals that of qemu-img create's image with the same options;
 *  - blockdev-create side by side with qemu-storage-daemon (bin/blockd and
 *    qsd with the same arguments): same files byte for byte, same job
 *    errors for every check qsd makes;
 *  - createQcow2File (the embedded default) equals qemu-img create.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync, writeSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { qcow2Layout, type Qcow2LayoutOptions } from '../../src/blockdev/drivers/qcow2/create-layout.ts';
import { createQcow2File } from '../../src/blockdev/create/qcow2.ts';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';
import { JobManager, JobError } from '../../src/blockdev/jobs/index.ts';
import { jobCommands, type JobCommandContext } from '../../src/qmp/commands/jobs.ts';
import { fromJson } from '../../src/qapi/visit.ts';
import { QmpClient, QmpCommandError } from '../../src/qmp/client/qmp-client.ts';
import { startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { requireTool, run } from '../helpers/tools.ts';
import { expectSameActualSize, expectSameAllocation } from '../helpers/allocation.ts';
import { execFileSync, spawnSync } from 'node:child_process';

let root: string;
beforeAll(() => { root = tempDir('blockd-qcow2-create-'); });

/** Writes a layout into a new sparse file, as createQcow2 would on an empty file. */
function materialise(path: string, opts: Qcow2LayoutOptions): void {
  const L = qcow2Layout(opts);
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, L.fileLength);
    for (const w of L.writes) writeSync(fd, w.data, 0, w.data.length, w.offset);
  } finally {
    closeSync(fd);
  }
}

function qemuImgCreate(dir: string, name: string, o: string, size: number): string {
  const f = join(dir, name);
  run('qemu-img', ['create', '-q', '-f', 'qcow2', ...(o ? ['-o', o] : []), f, String(size)]);
  return f;
}

function info(path: string): Record<string, unknown> {
  const i = JSON.parse(run('qemu-img', ['info', '--output=json', '-U', path])) as Record<string, unknown>;
  delete i.filename;
  return i;
}

/** qemu-img check without opening a backing file; a relative data file name is relative to the working directory (QEMU's rule). */
function checkClean(path: string): void {
  requireTool('qemu-img');
  const spec = `json:${JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: path } })}`;
  const r = spawnSync('qemu-img', ['check', '-U', spec], { encoding: 'utf8', cwd: dirname(path) });
  expect(r.stdout + r.stderr).toContain('No errors were found on the image.');
  expect(r.status).toBe(0);
}

/** The first offset where a and b differ, -1 if equal: compared natively, 1 MiB at a time (a per-byte callback over a 600 MiB image took a minute on a loaded machine). */
function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  const CHUNK = 1 << 20;
  for (let o = 0; o < Math.max(a.length, b.length); o += CHUNK) {
    const x = a.subarray(o, o + CHUNK);
    const y = b.subarray(o, o + CHUNK);
    if (x.equals(y)) continue;
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return o + i;
    return o + Math.min(x.length, y.length);
  }
  return -1;
}

describe('qcow2Layout equals qemu-img create, byte for byte', () => {
  const MiB = 1048576;
  const cases: [string, string, Qcow2LayoutOptions][] = [
    ['default', '', { size: 1024 * MiB }],
    ['empty', '', { size: 0 }],
    ['odd size', '', { size: 1000 * 512 }],
    ['v2', 'compat=0.10', { size: 1024 * MiB, version: 2 }],
    ['512-byte clusters', 'cluster_size=512', { size: MiB, clusterSize: 512 }],
    ['4k clusters, 1 TiB', 'cluster_size=4096', { size: 1024 * 1024 * MiB, clusterSize: 4096 }],
    ['512-byte clusters, refcount table grows', 'cluster_size=512,refcount_bits=1', { size: 64 * 1024 * MiB, clusterSize: 512, refcountBits: 1 }],
    ['2M clusters', 'cluster_size=2M', { size: 10 * 1024 * MiB, clusterSize: 2 * MiB }],
    ['refcount 1', 'refcount_bits=1', { size: 1024 * MiB, refcountBits: 1 }],
    ['refcount 64', 'refcount_bits=64', { size: 1024 * MiB, refcountBits: 64 }],
    ['lazy refcounts', 'lazy_refcounts=on', { size: 1024 * MiB, lazyRefcounts: true }],
    ['extended L2', 'extended_l2=on', { size: 1024 * MiB, extendedL2: true }],
    ['zstd', 'compression_type=zstd', { size: 1024 * MiB, compressionType: 'zstd' }],
    ['backing', 'backing_file=base.raw,backing_fmt=raw', { size: MiB, backingFile: 'base.raw', backingFormat: 'raw' }],
    ['v2 backing', 'compat=0.10,backing_file=base.raw,backing_fmt=raw', { size: MiB, version: 2, backingFile: 'base.raw', backingFormat: 'raw' }],
    ['backing, 4k clusters (no feature table)', 'cluster_size=4096,backing_file=base.raw,backing_fmt=raw', { size: MiB, clusterSize: 4096, backingFile: 'base.raw', backingFormat: 'raw' }],
    ['data file', 'data_file=data.raw', { size: MiB + 512, dataFile: 'data.raw' }],
    ['raw data file', 'data_file=data.raw,data_file_raw=on', { size: MiB, dataFile: 'data.raw', dataFileRaw: true }],
    ['data file, full', 'data_file=data.raw,preallocation=full', { size: MiB + 512, dataFile: 'data.raw', preallocation: 'full' }],
    ['data file, metadata, 512', 'data_file=data.raw,preallocation=metadata,cluster_size=512', { size: 8 * MiB, dataFile: 'data.raw', preallocation: 'metadata', clusterSize: 512 }],
    ['metadata', 'preallocation=metadata', { size: 100 * MiB, preallocation: 'metadata' }],
    ['metadata, partial cluster', 'preallocation=metadata', { size: MiB + 512, preallocation: 'metadata' }],
    ['metadata, two L2 tables', 'preallocation=metadata', { size: 600 * MiB, preallocation: 'metadata' }],
    ['metadata, 512, refcount blocks and table growth', 'preallocation=metadata,cluster_size=512', { size: 16 * MiB, preallocation: 'metadata', clusterSize: 512 }],
    ['metadata, 512, refcount 64', 'preallocation=metadata,cluster_size=512,refcount_bits=64', { size: 4 * MiB, preallocation: 'metadata', clusterSize: 512, refcountBits: 64 }],
    ['metadata, 4k, refcount 1', 'preallocation=metadata,cluster_size=4096,refcount_bits=1', { size: 64 * MiB, preallocation: 'metadata', clusterSize: 4096, refcountBits: 1 }],
    ['metadata, v2, 4k', 'preallocation=metadata,compat=0.10,cluster_size=4096', { size: 32 * MiB, preallocation: 'metadata', version: 2, clusterSize: 4096 }],
    ['metadata, extended L2', 'preallocation=metadata,extended_l2=on,cluster_size=32k', { size: MiB, preallocation: 'metadata', extendedL2: true, clusterSize: 32768 }],
    ['falloc', 'preallocation=falloc', { size: 20 * MiB, preallocation: 'falloc' }],
    ['full, partial cluster', 'preallocation=full', { size: MiB + 512, preallocation: 'full' }],
    ['falloc, 512', 'preallocation=falloc,cluster_size=512', { size: 16 * MiB, preallocation: 'falloc', clusterSize: 512 }],
    ['falloc, 1k, refcount 4', 'preallocation=falloc,cluster_size=1024,refcount_bits=4', { size: 8 * MiB, preallocation: 'falloc', clusterSize: 1024, refcountBits: 4 }],
    ['falloc, extended L2, backing', 'preallocation=falloc,extended_l2=on,backing_file=base.raw,backing_fmt=raw', { size: 4 * MiB, preallocation: 'falloc', extendedL2: true, backingFile: 'base.raw', backingFormat: 'raw' }],
  ];
  let dir: string;
  beforeAll(() => {
    dir = join(root, 'layout');
    mkdirSync(dir);
    run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'base.raw'), '1M']);
  });

  for (const [name, o, opts] of cases) {
    it(name, () => {
      const sub = join(dir, name.replace(/[^a-z0-9]+/gi, '_'));
      mkdirSync(sub);
      // Relative names (backing file, data file) resolve against the image's directory.
      execFileSync('cp', [join(dir, 'base.raw'), sub]);
      requireTool('qemu-img');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', ...(o ? ['-o', o] : []), 'ref.qcow2', String(opts.size)], { cwd: sub });
      materialise(join(sub, 'mine.qcow2'), opts);
      const ref = readFileSync(join(sub, 'ref.qcow2'));
      const mine = readFileSync(join(sub, 'mine.qcow2'));
      expect(mine.length).toBe(ref.length);
      const diff = firstDifference(mine, ref);
      expect(diff, `first differing byte at ${diff}`).toBe(-1);
      if (opts.dataFile !== undefined) {
        const d = qcow2Layout(opts).dataFile!;
        const tailEnd = d.zeroTail ? d.zeroTail.offset + d.zeroTail.length : 0;
        expect(Math.max(d.length, tailEnd)).toBe(statSync(join(sub, opts.dataFile)).size);
      }
      checkClean(join(sub, 'mine.qcow2'));
    });
  }

  it('refuses what QEMU refuses, with its words', () => {
    expect(() => qcow2Layout({ size: 2 ** 51 + 512 })).toThrow('Could not resize image: Failed to grow the L1 table: File too large');
    expect(() => qcow2Layout({ size: 2 ** 51 })).not.toThrow();
    expect(() => qcow2Layout({ size: 2 ** 40, clusterSize: 512, dataFile: 'x'.repeat(400) })).toThrow('Could not write qcow2 header: No space left on device');
    expect(qcow2Layout({ size: 2 ** 20, backingFile: 'b'.repeat(1024) }).error?.message)
      .toBe(`Could not assign backing file '${'b'.repeat(1024)}' with format '(null)': Invalid argument`);
    expect(qcow2Layout({ size: 2 ** 20, backingFile: 'b'.repeat(1023) }).error).toBeUndefined();
    expect(qcow2Layout({ size: 2 ** 20, clusterSize: 512, backingFile: 'b'.repeat(400), backingFormat: 'raw' }).error?.message)
      .toBe(`Could not assign backing file '${'b'.repeat(400)}' with format 'raw': No space left on device`);
  });
});

describe('createQcow2File (the embedded default)', () => {
  for (const size of [0, 512, 1 << 30, 5 * 2 ** 40 + 65536]) {
    it(`equals qemu-img create for ${size} bytes`, async () => {
      const dir = join(root, `file-${size}`);
      mkdirSync(dir);
      const ref = qemuImgCreate(dir, 'ref.qcow2', '', size);
      const mine = join(dir, 'mine.qcow2');
      await createQcow2File(mine, size);
      expect(readFileSync(mine).equals(readFileSync(ref))).toBe(true);
      expect(statSync(mine).mode & 0o777).toBe(0o644 & ~process.umask());
      checkClean(mine);
    });
  }
  it('replaces an existing file and refuses odd sizes', async () => {
    const dir = join(root, 'file-replace');
    mkdirSync(dir);
    const mine = join(dir, 'mine.qcow2');
    await createQcow2File(mine, 1 << 30);
    await createQcow2File(mine, 1 << 20);
    expect(info(mine)['virtual-size']).toBe(1 << 20);
    await expect(createQcow2File(mine, 1000)).rejects.toThrow('Image size must be a multiple of 512 bytes');
  });
});

// ---- blockdev-create in-process, compared with qemu-img create

function inProcess() {
  const graph = new BlockGraph();
  registerDrivers(graph);
  const ctx: JobCommandContext = { jobs: new JobManager(() => undefined), graph };
  async function qmp(name: string, args: Record<string, unknown> = {}): Promise<unknown> {
    const cmd = jobCommands.find((c) => c.name === name);
    if (!cmd) throw new Error(`no command ${name}`);
    try {
      const valid = fromJson(typeof cmd.args === 'function' ? cmd.args({ graph }) : cmd.args!, args) as never;
      return { return: await cmd.handler(valid, ctx as never) };
    } catch (e) {
      return { error: { class: e instanceof JobError ? e.qmpClass : 'GenericError', desc: (e as Error).message } };
    }
  }
  /** blockdev-create, waits for the job, dismisses it; returns the job's error (undefined: it worked). */
  async function create(id: string, options: Record<string, unknown>): Promise<string | undefined> {
    const r = await qmp('blockdev-create', { 'job-id': id, options }) as { error?: { desc: string } };
    if (r.error) return `QMP: ${r.error.desc}`;
    await ctx.jobs.get(id)!.concluded;
    const err = ctx.jobs.queryJobs().find((j) => j.id === id)?.error;
    await qmp('job-dismiss', { id });
    return err;
  }
  return { graph, create };
}

describe('blockdev-create qcow2 in-process, compared with qemu-img create', () => {
  const MiB = 1048576;
  const cases: [string, string, Record<string, unknown>][] = [
    ['default', '', { size: 64 * MiB }],
    ['v2', 'compat=0.10', { size: 64 * MiB, version: 'v2' }],
    ['options', 'cluster_size=16k,refcount_bits=8,lazy_refcounts=on,extended_l2=on,compression_type=zstd', { size: 64 * MiB, 'cluster-size': 16384, 'refcount-bits': 8, 'lazy-refcounts': true, 'extended-l2': true, 'compression-type': 'zstd' }],
    ['metadata', 'preallocation=metadata', { size: 64 * MiB, preallocation: 'metadata' }],
    ['falloc', 'preallocation=falloc', { size: 64 * MiB, preallocation: 'falloc' }],
    ['full', 'preallocation=full', { size: 64 * MiB + 512, preallocation: 'full' }],
    ['backing', 'backing_file=base.raw,backing_fmt=raw', { size: 64 * MiB, 'backing-file': 'base.raw', 'backing-fmt': 'raw' }],
    ['backing, extended L2, metadata', 'backing_file=base.raw,backing_fmt=raw,extended_l2=on,preallocation=metadata', { size: 64 * MiB, 'backing-file': 'base.raw', 'backing-fmt': 'raw', 'extended-l2': true, preallocation: 'metadata' }],
  ];
  for (const [name, o, options] of cases) {
    it(`${name}: qemu-img check is clean, qemu-img info equal (allocation included)`, async () => {
      const dir = join(root, `inproc-${name.replace(/[^a-z0-9]+/gi, '_')}`);
      mkdirSync(dir);
      run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'base.raw'), '1M']);
      const ref = join(dir, 'ref.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', ...(o ? ['-o', o] : []), 'ref.qcow2', String(options.size)], { cwd: dir });
      const t = inProcess();
      const mine = join(dir, 'mine.qcow2');
      expect(await t.create('f', { driver: 'file', filename: mine, size: 0 })).toBeUndefined();
      await t.graph.add({ driver: 'file', filename: mine, 'node-name': 'f0' });
      expect(await t.create('q', { driver: 'qcow2', file: 'f0', ...options })).toBeUndefined();
      await t.graph.closeAll();
      checkClean(mine);
      const [a, b] = [info(mine), info(ref)];
      expectSameActualSize(a['actual-size'] as number, b['actual-size'] as number);
      delete a['actual-size'];
      delete b['actual-size'];
      expect(a).toEqual(b);
      expectSameAllocation(mine, ref);
      // The same bytes, too (the file create writes its first 4 KiB: zeroes, like qemu-img's protocol create).
      expect(readFileSync(mine).equals(readFileSync(ref))).toBe(true);
      // Opened by blockd's own driver, it reads as zeroes (or the backing file) everywhere.
      const g = new BlockGraph();
      registerDrivers(g);
      const n = await g.add({ driver: 'qcow2', 'node-name': 'q', file: { driver: 'file', filename: mine }, 'read-only': true });
      const buf = Buffer.alloc(1 << 20, 1);
      await n.read(Number(options.size) - buf.length, buf);
      expect(buf.equals(Buffer.alloc(buf.length))).toBe(true);
      await g.closeAll();
    });
  }

  it('an inline file definition, and an external data file node', async () => {
    const dir = join(root, 'inproc-inline');
    mkdirSync(dir);
    const t = inProcess();
    const img = join(dir, 'img.qcow2');
    const data = join(dir, 'img.data');
    expect(await t.create('f', { driver: 'file', filename: img, size: 0 })).toBeUndefined();
    expect(await t.create('d', { driver: 'file', filename: data, size: 0 })).toBeUndefined();
    await t.graph.add({ driver: 'file', filename: data, 'node-name': 'd0' });
    expect(await t.create('q', { driver: 'qcow2', file: { driver: 'file', filename: img }, 'data-file': 'd0', 'data-file-raw': true, size: 8 * MiB })).toBeUndefined();
    // The inline node is gone again; the data file node is left as it was.
    expect([...t.graph.nodes.keys()]).toEqual(['d0']);
    expect(t.graph.nodes.get('d0')!.parents).toEqual([]);
    await t.graph.closeAll();
    checkClean(img);
    const i = info(img) as { 'format-specific': { data: Record<string, unknown> } };
    expect(i['format-specific'].data).toMatchObject({ 'data-file': data, 'data-file-raw': true });
    expect(statSync(data).size).toBe(8 * MiB);
    expect(JSON.parse(run('qemu-img', ['map', '--output=json', img]))).toEqual([
      { start: 0, length: 8 * MiB, depth: 0, present: true, zero: false, data: true, offset: 0 },
    ]);
  });
});

// ---- side by side with qemu-storage-daemon

type Reply = { return: unknown } | { error: { class: string; desc: string } };

interface Target {
  dir: string;
  execute(cmd: string, args?: Record<string, unknown>): Promise<Reply>;
  close(): Promise<void>;
}

async function daemonTarget(which: 'qsd' | 'blockd', dir: string): Promise<Target> {
  const sock = join(dir, 'qmp.sock');
  const proc: Running = await startDaemon(which, ['--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'm'], sock);
  const client = await QmpClient.connect(sock);
  return {
    dir,
    async execute(cmd, args) {
      try {
        return { return: await client.execute(cmd, args) };
      } catch (e) {
        if (e instanceof QmpCommandError) return { error: { class: e.errorClass, desc: e.desc } };
        throw e;
      }
    },
    async close() { client.close(); await proc.stop(); },
  };
}

describe('blockdev-create qcow2, side by side with qemu-storage-daemon', () => {
  let qsd: Target;
  let blockd: Target;
  beforeAll(async () => {
    // Directories of the same length, so that names recorded in the images have the same size.
    mkdirSync(join(root, 'sqsd'));
    mkdirSync(join(root, 'sbkd'));
    qsd = await daemonTarget('qsd', join(root, 'sqsd'));
    blockd = await daemonTarget('blockd', join(root, 'sbkd'));
  });
  afterAll(async () => {
    await qsd?.close();
    await blockd?.close();
  });

  /** Runs a job to its end; returns the reply's error, the job's error, or 'ok'. */
  async function job(t: Target, id: string, options: Record<string, unknown>): Promise<string> {
    const r = await t.execute('blockdev-create', { 'job-id': id, options });
    if ('error' in r) return `QMP ${r.error.class}: ${r.error.desc}`;
    for (let i = 0; ; i++) {
      const q = await t.execute('query-jobs') as { return: { id: string; status: string; error?: string }[] };
      const j = q.return.find((x) => x.id === id)!;
      if (j.status === 'concluded') {
        await t.execute('job-dismiss', { id });
        return (j.error ?? 'ok').split(t.dir).join('<dir>').replace(/#block\d+/g, '#block');
      }
      if (i > 2000) throw new Error(`job ${id} did not conclude`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  let n = 0;
  /** A fresh empty file with a node on it (and a second one for a data file). */
  async function fileNode(t: Target, name: string): Promise<string> {
    const f = join(t.dir, `${name}.img`);
    expect(await job(t, `mk_${name}`, { driver: 'file', filename: f, size: 0 })).toBe('ok');
    expect(await t.execute('blockdev-add', { driver: 'file', filename: f, 'node-name': `n_${name}` })).toEqual({ return: {} });
    return `n_${name}`;
  }

  /** blockdev-create qcow2 on both; returns both outcomes and the two image files. */
  async function sideBySide(name: string, options: (t: Target) => Record<string, unknown>, withData = false): Promise<[string, string]> {
    const id = `c${n++}`;
    const out: string[] = [];
    for (const t of [qsd, blockd]) {
      const file = await fileNode(t, name);
      const data = withData ? await fileNode(t, `${name}-data`) : undefined;
      out.push(await job(t, id, { driver: 'qcow2', file, ...(data ? { 'data-file': data } : {}), ...options(t) }));
      for (const node of [file, data]) if (node) expect(await t.execute('blockdev-del', { 'node-name': node })).toEqual({ return: {} });
    }
    return out as [string, string];
  }

  /** The two images, with each daemon's directory name swapped for a placeholder of the same length. */
  function sameFiles(name: string): void {
    for (const suffix of ['.img', '-data.img']) {
      const a = join(qsd.dir, name + suffix);
      const b = join(blockd.dir, name + suffix);
      if (!existsSync(a)) continue;
      expect(statSync(b).size).toBe(statSync(a).size);
      expectSameAllocation(b, a);
      const x = readFileSync(a);
      const y = readFileSync(b);
      const from = Buffer.from(blockd.dir);
      const to = Buffer.from(qsd.dir);
      for (let i = y.indexOf(from); i >= 0; i = y.indexOf(from, i + 1)) to.copy(y, i);
      const diff = x.findIndex((v, i) => v !== y[i]);
      expect(diff, `${name}${suffix}: first differing byte at ${diff}`).toBe(-1);
    }
    checkClean(join(blockd.dir, `${name}.img`));
  }

  const MiB = 1048576;
  const ok: [string, Record<string, unknown>, boolean?][] = [
    ['default', { size: 1024 * MiB }],
    ['v2', { size: 1024 * MiB, version: 'v2' }],
    ['tiny clusters', { size: 16 * MiB, 'cluster-size': 512, preallocation: 'metadata' }],
    ['big clusters', { size: 10 * 1024 * MiB, 'cluster-size': 2 * MiB }],
    ['features', { size: MiB, 'refcount-bits': 1, 'lazy-refcounts': true, 'extended-l2': true, 'compression-type': 'zstd' }],
    ['refcount 64', { size: MiB, 'refcount-bits': 64 }],
    ['backing', { size: MiB, 'backing-file': 'base.raw', 'backing-fmt': 'raw' }],
    ['backing without format', { size: MiB, 'backing-file': '/nonexistent' }],
    ['v2 backing', { size: MiB, version: 'v2', 'backing-file': 'x.qcow2', 'backing-fmt': 'qcow2' }],
    ['metadata', { size: 100 * MiB + 512, preallocation: 'metadata' }],
    ['falloc', { size: 20 * MiB, preallocation: 'falloc' }],
    ['full', { size: 3 * MiB + 512, preallocation: 'full' }],
    ['backing and preallocation', { size: 4 * MiB, 'backing-file': 'b', 'extended-l2': true, preallocation: 'metadata' }],
    ['empty', { size: 0, preallocation: 'metadata' }],
    ['data file', { size: MiB + 512 }, true],
    ['raw data file', { size: 4 * MiB, 'data-file-raw': true }, true],
    ['data file, falloc', { size: 4 * MiB, preallocation: 'falloc' }, true],
    ['data file and backing', { size: MiB, 'backing-file': 'x' }, true],
    ['huge', { size: 2 ** 51 }],
    ['long backing name', { size: MiB, 'backing-file': 'l'.repeat(1023) }],
  ];
  for (const [name, options, withData] of ok) {
    it(`${name}: same image`, async () => {
      const key = name.replace(/[^a-z0-9]+/gi, '_');
      const [a, b] = await sideBySide(key, () => options, withData);
      expect(a).toBe('ok');
      expect(b).toBe(a);
      sameFiles(key);
    });
  }

  const fails: [string, Record<string, unknown>, boolean?][] = [
    ['size', { size: 1000, 'cluster-size': 1000 }],
    ['negative size', { size: -1 }],
    ['cluster size', { size: MiB, 'cluster-size': 1000, 'refcount-bits': 3 }],
    ['cluster size too big', { size: MiB, 'cluster-size': 4 * MiB }],
    ['extended L2, v2', { size: MiB, 'extended-l2': true, version: 'v2', 'cluster-size': 1000 }],
    ['extended L2, small clusters', { size: MiB, 'extended-l2': true, 'cluster-size': 8192, 'refcount-bits': 3 }],
    ['backing format alone', { size: MiB, 'backing-fmt': 'raw', version: 'v2', 'lazy-refcounts': true }],
    ['backing and preallocation', { size: MiB, 'backing-file': 'x', preallocation: 'full', 'refcount-bits': 3 }],
    ['lazy refcounts, v2', { size: MiB, 'lazy-refcounts': true, version: 'v2', 'refcount-bits': 3 }],
    ['refcount width', { size: MiB, 'refcount-bits': 128, 'data-file-raw': true }],
    ['refcount zero', { size: MiB, 'refcount-bits': 0 }],
    ['refcount, v2', { size: MiB, 'refcount-bits': 8, version: 'v2', 'compression-type': 'zstd' }],
    ['data-file-raw alone', { size: MiB, 'data-file-raw': true, 'compression-type': 'zstd', version: 'v2' }],
    ['data-file-raw and backing', { size: MiB, 'backing-file': 'x', 'data-file-raw': true, 'data-file': 'nosuch' }],
    ['no data file node', { size: MiB, 'data-file': 'nosuch', 'compression-type': 'zstd', version: 'v2' }],
    ['data file, v2', { size: MiB, version: 'v2', 'compression-type': 'zstd', encrypt: { format: 'luks' } }, true],
    ['zstd, v2', { size: MiB, 'compression-type': 'zstd', version: 'v2', encrypt: { format: 'luks' } }],
    ['encrypt without secret', { size: MiB, encrypt: { format: 'luks' } }],
    ['no file node', { size: 1000, file: 'nosuch' }],
    ['too big', { size: 2 ** 51 + 512 }],
    ['much too big', { size: 2 ** 52 }],
    ['long backing name', { size: MiB, 'backing-file': 'l'.repeat(1024) }],
    ['backing name does not fit', { size: MiB, 'cluster-size': 512, 'backing-file': 'b'.repeat(420), 'backing-fmt': 'raw' }],
    ['data file is the file', { size: MiB, 'data-file': 'SELF' }],
  ];
  for (const [name, options, withData] of fails) {
    it(`fails like qsd: ${name}`, async () => {
      const key = `f_${name.replace(/[^a-z0-9]+/gi, '_')}`;
      const [a, b] = await sideBySide(key, (t) => {
        const o = { ...options };
        if (o['data-file'] === 'SELF') o['data-file'] = `n_${key}`;
        return o;
      }, withData);
      expect(a).not.toBe('ok');
      expect(b).toBe(a);
    });
  }

  for (const mode of ['off', 'metadata', 'falloc', 'full']) {
    it(`a file with old contents (preallocation ${mode}): kept past the image, as qsd does`, async () => {
      const name = `old_${mode}`;
      const out: string[] = [];
      for (const t of [qsd, blockd]) {
        const f = join(t.dir, `${name}.img`);
        writeFileSync(f, Buffer.alloc(3 * MiB, 0x55));
        expect(await t.execute('blockdev-add', { driver: 'file', filename: f, 'node-name': name })).toEqual({ return: {} });
        out.push(await job(t, `j_${name}`, { driver: 'qcow2', file: name, size: MiB, preallocation: mode }));
        expect(await t.execute('blockdev-del', { 'node-name': name })).toEqual({ return: {} });
      }
      expect(out[1]).toBe(out[0]);
      if (out[0] === 'ok') sameFiles(name);
      else expect(out[0]).toBe('Could not resize image: Failed to resize underlying file: Cannot use preallocation for shrinking files');
    });
  }

  it('a file node in use by a qcow2 node, and a data file node in use', async () => {
    const out: string[][] = [];
    for (const t of [qsd, blockd]) {
      const f = join(t.dir, 'used.qcow2');
      run('qemu-img', ['create', '-q', '-f', 'qcow2', f, '1M']);
      expect(await t.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'u', file: { driver: 'file', filename: f, 'node-name': 'uf' } })).toEqual({ return: {} });
      const file = await fileNode(t, 'used-other');
      out.push([
        await job(t, 'u1', { driver: 'qcow2', file: 'uf', size: MiB }),
        await job(t, 'u2', { driver: 'qcow2', file, 'data-file': 'uf', size: MiB }),
        // A qcow2 image written through a qcow2 node: allowed (and what qsd does).
        await job(t, 'u3', { driver: 'qcow2', file: 'u', size: 512 * 1024 }),
      ]);
      for (const node of ['u', file]) expect(await t.execute('blockdev-del', { 'node-name': node })).toEqual({ return: {} });
    }
    expect(out[1]).toEqual(out[0]);
    expect(out[0][2]).toBe('ok');
  });
});
