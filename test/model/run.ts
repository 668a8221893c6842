/**
 * Runs one scenario (commands.ts) against a daemon and checks it against the
 * model (model.ts): after every step the whole disk is read over NBD and
 * compared; at the end the daemon stops and every qcow2 file of the chain
 * (also the layers a job dropped) passes `qemu-img check`, the active layer
 * equals the model written as raw (`qemu-img compare`, same virtual size),
 * and each internal snapshot of a layer without backing reads as the disk
 * did when it was taken. Jobs run in the background while the following I/O
 * steps go on; a snapshot, resize, another job, `wait` or the end waits for them.
 * Throws, naming the step, at the first difference.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ReqFlag } from '../../src/blockdev/request.ts';
import type { BlockNode } from '../../src/blockdev/node.ts';
import { DiskModel, patternBytes } from './model.ts';
import { clusterSize, initialSize, resolveRange, type Scenario, type Step } from './commands.ts';
import { nbdClient, startDaemon, type Daemon, type Which } from './daemon.ts';

export interface RunResult {
  /** Steps carried out (a step that does not apply, as a stream with no backing, is skipped). */
  steps: number;
  skipped: number;
  jobs: number;
  /** Leaked clusters per qcow2 file (qemu-img check), by file name. */
  leaks: Record<string, number>;
}

/** A layer of the chain: `owned` ones were made by blockdev-add (node n<k>, its file f<k>), the others by blockdev-snapshot-sync. */
interface Layer { node: string; file: string; fmt: 'raw' | 'qcow2'; owned: boolean }

function qemuImg(args: string[]): string {
  return execFileSync('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

/** qemu-img check --output=json: corruptions and check errors must be 0; returns the leaks. */
function check(file: string): number {
  let out: string;
  try {
    out = qemuImg(['check', '-f', 'qcow2', '--output=json', file]);
  } catch (e) {
    out = String((e as { stdout?: Buffer }).stdout ?? '');
    if (!out) throw new Error(`qemu-img check ${file} failed: ${String((e as { stderr?: Buffer }).stderr ?? e)}`);
  }
  const j = JSON.parse(out) as { corruptions?: number; 'check-errors'?: number; leaks?: number };
  if ((j.corruptions ?? 0) || (j['check-errors'] ?? 0)) throw new Error(`qemu-img check ${file}: ${out}`);
  return j.leaks ?? 0;
}

const describeStep = (i: number, st: Step) => `step ${i} ${JSON.stringify(st)}`;

export async function runScenario(s: Scenario, opts: { which: Which; dir: string; log?: (m: string) => void }): Promise<RunResult> {
  const { dir, which } = opts;
  const cluster = clusterSize(s);
  const unit = Math.max(cluster, 64 << 10);
  const model = new DiskModel(initialSize(s));
  const nbdSock = join(dir, 'nbd.sock');
  const res: RunResult = { steps: 0, skipped: 0, jobs: 0, leaks: {} };

  // The pre-made chain, with its data written by qemu-io.
  const chain: Layer[] = [];
  for (const [i, l] of s.layers.entries()) {
    const fmt = i === 0 ? s.format : 'qcow2';
    const file = join(dir, `l${i}.${fmt}`);
    const o = fmt === 'qcow2' ? ['-o', `cluster_size=${cluster}`] : [];
    const b = i > 0 ? ['-b', chain[i - 1]!.file, '-F', chain[i - 1]!.fmt] : [];
    qemuImg(['create', '-q', '-f', fmt, ...o, ...b, file, String(model.size)]);
    const cmds: string[] = [];
    for (const f of l.fills) {
      const [off, len] = resolveRange({ at: f.at, len: f.len, gran: 1 }, model.size, cluster);
      cmds.push('-c', `write -P ${f.pat} ${off} ${len}`);
      model.write(off, Buffer.alloc(len, f.pat));
    }
    if (cmds.length) execFileSync('qemu-io', ['-f', fmt, ...cmds, file], { stdio: 'ignore' });
    chain.push({ node: `n${i}`, file, fmt, owned: true });
  }
  const files: Layer[] = [...chain];
  const args: string[] = [];
  for (const [i, l] of chain.entries()) {
    args.push('--blockdev', `driver=file,node-name=f${i},filename=${l.file},discard=unmap`);
    args.push('--blockdev', `driver=${l.fmt},node-name=${l.node},file=f${i},discard=unmap${i > 0 ? `,backing=n${i - 1}` : ''}`);
  }
  args.push('--nbd-server', `addr.type=unix,addr.path=${nbdSock}`);
  args.push('--export', `type=nbd,id=e0,node-name=${chain.at(-1)!.node},name=d,writable=on`);

  const d: Daemon = await startDaemon(which, dir, args);
  let client: { node: BlockNode; close(): Promise<void> } | undefined;
  let job: Promise<void> | undefined;
  let jobError: unknown;
  const internals: { file: string; name: string; data: Buffer }[] = [];
  let serial = 0;
  const top = () => chain.at(-1)!;

  const settle = async () => {
    if (job) { await job; job = undefined; }
    if (jobError) throw jobError;
  };
  const verify = async (where: string) => {
    const buf = Buffer.alloc(model.size);
    if (client!.node.length() !== model.size) throw new Error(`${where}: the export is ${client!.node.length()} bytes, the model ${model.size}`);
    await client!.node.read(0, buf);
    const at = model.firstDifference(0, buf);
    if (at >= 0) throw new Error(`${where}: byte ${at} reads ${buf[at]}, the model has ${model.data[at]} (disk ${model.size} bytes, chain ${chain.map((l) => l.node).join('<')})`);
  };
  /** Layers a job dropped from the chain: the ones made by blockdev-add (n*, with their file f*) are deleted, top-most first, as a user does; a snapshot's overlay goes with its last user. */
  const dropNodes = async (dropped: Layer[]) => {
    for (const l of [...dropped].reverse()) {
      if (!l.owned) continue;
      await d.qmp.execute('blockdev-del', { 'node-name': l.node });
      // A file given inline to blockdev-add goes with its parent; a separate one (the command line's) is deleted after it.
      if (Number(l.node.slice(1)) < 100) await d.qmp.execute('blockdev-del', { 'node-name': `f${l.node.slice(1)}` });
    }
  };
  const startJob = (id: string, active: boolean, after: () => Layer[]) => {
    res.jobs++;
    job = (async () => {
      if (active) {
        await d.waitEvent((e) => e.event === 'BLOCK_JOB_READY' && e.data.device === id, `${id} ready`);
        await d.qmp.execute('job-complete', { id });
      }
      const done = await d.waitEvent((e) => e.event === 'BLOCK_JOB_COMPLETED' && e.data.device === id, `${id} completed`);
      if (done.data.error) throw new Error(`job ${id} failed: ${String(done.data.error)}`);
      await dropNodes(after());
    })().catch((e: unknown) => { jobError = e; });
  };

  try {
    client = await nbdClient(nbdSock, 'd');
    await verify('start');
    for (const [i, st] of s.steps.entries()) {
      const where = describeStep(i, st);
      let skipped = false;
      try {
        switch (st.op) {
          case 'write': {
            const [off, len] = resolveRange(st, model.size, cluster);
            const buf = patternBytes(st.pat, off, len);
            await client.node.write(off, buf, st.fua ? ReqFlag.FUA : 0);
            model.write(off, buf);
            break;
          }
          case 'zero': {
            const [off, len] = resolveRange(st, model.size, cluster);
            await client.node.writeZeroes(off, len, (st.mayUnmap ? ReqFlag.MAY_UNMAP : 0) | (st.fua ? ReqFlag.FUA : 0));
            model.zero(off, len);
            break;
          }
          case 'discard': {
            const [off, len] = resolveRange(st, model.size, cluster);
            await client.node.discard(off, len);
            const got = Buffer.alloc(len);
            await client.node.read(off, got);
            const bad = model.adoptDiscarded(off, got);
            if (bad >= 0) throw new Error(`byte ${bad} reads ${got[bad - off]} after the discard: neither the old ${model.data[bad]} nor 0`);
            break;
          }
          case 'flush':
            await client.node.flush();
            break;
          case 'resize': {
            await settle();
            // Taking the export down would close a blockdev-snapshot-sync overlay (the export is its only user).
            if (!top().owned) { skipped = true; break; }
            const size = model.size + 512 * (1 + (st.by % ((2 * unit) / 512)));
            // An NBD export neither shares the resize permission nor changes its size: take it down, resize, export again, as a user does.
            await client.close();
            client = undefined;
            const n = d.events.length;
            await d.qmp.execute('block-export-del', { id: 'e0' });
            await d.waitEvent((e) => d.events.indexOf(e) >= n && e.event === 'BLOCK_EXPORT_DELETED', 'export deleted');
            await d.qmp.execute('block_resize', { 'node-name': top().node, size });
            await d.qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': top().node, name: 'd', writable: true });
            client = await nbdClient(nbdSock, 'd');
            model.grow(size);
            break;
          }
          case 'snapshot': {
            await settle();
            const k = serial++;
            if (st.existing) {
              // blockdev-add of an overlay made by qemu-img (the scenario's cluster size), then blockdev-snapshot.
              const node = `n${100 + k}`;
              const file = join(dir, `${node}.qcow2`);
              qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-o', `cluster_size=${cluster}`, '-b', top().file, '-F', top().fmt, file, String(model.size)]);
              await d.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': node, discard: 'unmap', backing: null, file: { driver: 'file', 'node-name': `f${100 + k}`, filename: file, discard: 'unmap' } });
              await d.qmp.execute('blockdev-snapshot', { node: top().node, overlay: node });
              chain.push({ node, file, fmt: 'qcow2', owned: true });
            } else {
              const node = `s${k}`;
              const file = join(dir, `${node}.qcow2`);
              await d.qmp.execute('blockdev-snapshot-sync', { 'node-name': top().node, 'snapshot-file': file, 'snapshot-node-name': node, format: 'qcow2' });
              chain.push({ node, file, fmt: 'qcow2', owned: false });
            }
            files.push(top());
            break;
          }
          case 'internal': {
            await settle();
            if (top().fmt !== 'qcow2') { skipped = true; break; }
            const name = `i${serial++}`;
            await d.qmp.execute('blockdev-snapshot-internal-sync', { device: top().node, name });
            if (chain.length === 1) internals.push({ file: top().file, name, data: model.snapshot() });
            break;
          }
          case 'stream': {
            await settle();
            if (chain.length < 2) { skipped = true; break; }
            const k = st.base % chain.length;
            const id = `j${serial++}`;
            const baseIdx = k - 1;
            await d.qmp.execute('block-stream', { 'job-id': id, device: top().node, ...(baseIdx >= 0 ? { 'base-node': chain[baseIdx]!.node } : {}) });
            startJob(id, false, () => chain.splice(baseIdx + 1, chain.length - baseIdx - 2));
            break;
          }
          case 'commit': {
            await settle();
            if (chain.length < 2) { skipped = true; break; }
            const topIdx = 1 + (st.top % (chain.length - 1));
            const baseIdx = st.base % topIdx;
            const id = `j${serial++}`;
            const active = topIdx === chain.length - 1;
            await d.qmp.execute('block-commit', { 'job-id': id, device: top().node, 'top-node': chain[topIdx]!.node, 'base-node': chain[baseIdx]!.node });
            startJob(id, active, () => chain.splice(baseIdx + 1, topIdx - baseIdx));
            break;
          }
          case 'wait':
            await settle();
            break;
        }
        if (skipped) res.skipped++; else res.steps++;
        await verify(where);
        if (jobError) throw jobError;
      } catch (e) {
        const log = d.stderr().trim();
        throw new Error(`${which}: ${where}: ${e instanceof Error ? e.message : String(e)}${log ? `\n${which} stderr: ${log.slice(-1500)}` : ''}`, { cause: e });
      }
    }
    await settle();
    await verify('after the last job');
    const exp = (await d.qmp.execute('query-block-exports')) as { 'node-name': string }[];
    if (exp[0]?.['node-name'] !== top().node) throw new Error(`the export is on ${exp[0]?.['node-name']}, the active layer is ${top().node}`);
    await client.node.flush();
  } finally {
    await client?.close().catch(() => undefined);
    if (job) await job;
    const code = await d.stop();
    if (code !== 0 && !jobError) opts.log?.(`${which} exited with ${code}: ${d.stderr().slice(-500)}`);
  }
  if (jobError) throw jobError;

  // The files, with the daemon gone.
  for (const l of files) if (l.fmt === 'qcow2') res.leaks[l.file.slice(dir.length + 1)] = check(l.file);
  const raw = join(dir, 'model.raw');
  writeFileSync(raw, model.data);
  const info = JSON.parse(qemuImg(['info', '--output=json', '-f', top().fmt, top().file])) as { 'virtual-size': number };
  if (info['virtual-size'] !== model.size) throw new Error(`${top().file} is ${info['virtual-size']} bytes, the model ${model.size}`);
  try {
    qemuImg(['compare', '-f', top().fmt, '-F', 'raw', top().file, raw]);
  } catch (e) {
    throw new Error(`qemu-img compare ${top().file} with the model: ${String((e as { stdout?: Buffer }).stdout ?? e)}`);
  }
  for (const sn of internals) {
    const out = join(dir, `${sn.name}.raw`);
    qemuImg(['convert', '-f', 'qcow2', '-l', `snapshot.name=${sn.name}`, '-O', 'raw', sn.file, out]);
    const got = readFileSync(out);
    rmSync(out);
    const n = Math.min(got.length, sn.data.length);
    if (!got.subarray(0, n).equals(sn.data.subarray(0, n))) throw new Error(`internal snapshot ${sn.name} of ${sn.file} differs from the disk when it was taken`);
  }
  rmSync(raw);
  return res;
}
