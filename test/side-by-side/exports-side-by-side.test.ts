/**
 * The one export path (src/export) and NBD server start, side by side with
 * qemu-storage-daemon: the same command-line errors (each start-up refusal
 * as one line) and the same QMP answers and events for the export commands,
 * in qsd's check order.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { BLOCKD, startDaemon, tempDir, type Running } from '../helpers/daemons.ts';
import { requireTool } from '../helpers/tools.ts';
import { RawQmpConnection } from '../../src/qmp/raw-connection.ts';

const running: Running[] = [];
afterAll(async () => { for (const r of running) await r.stop(); });

const NODE = ['--blockdev', 'driver=null-co,node-name=n0,size=1048576'];
const RO_NODE = ['--blockdev', 'driver=null-co,node-name=ro,size=1048576,read-only=on'];

/** The one line a daemon prints when its start-up fails, with its own name taken out. */
function startupError(which: 'qsd' | 'blockd', args: string[]): { status: number | null; line: string } {
  const cmd = which === 'qsd' ? requireTool('qemu-storage-daemon') : BLOCKD;
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, line: r.stderr.trim().replace(/^(qemu-storage-daemon|blockd): /, 'DAEMON: ') };
}

describe('command-line refusals as qsd', () => {
  it('--export: the checks every export shares, in qsd order, before the NBD server check', () => {
    const cases: string[][] = [
      [...NODE, '--export', 'type=nbd,id=1bad,node-name=nope'],
      [...NODE, '--export', 'type=nbd,id=e,node-name=nope'],
      [...RO_NODE, '--export', 'type=nbd,id=e,node-name=ro,writable=on'],
      [...NODE, '--export', 'type=nbd,id=e,node-name=n0,iothread=io0'],
      [...NODE, '--blockdev', 'driver=raw,node-name=r0,file=n0', '--export', 'type=nbd,id=e,node-name=n0,writable=on'],
      [...NODE, '--export', 'type=nbd,id=e,node-name=n0'],
    ];
    for (const args of cases) {
      const blockd = startupError('blockd', args);
      expect(blockd, args.join(' ')).toEqual(startupError('qsd', args));
      expect(blockd.status).toBe(1);
    }
  });
});

const SCRIPT = String.raw`
{"execute":"qmp_capabilities"}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"1bad","node-name":"nope"}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e9","node-name":"n0","writable":true}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e9","node-name":"ro","writable":true}}
{"execute":"nbd-server-add","arguments":{"device":"ro","writable":true}}
{"execute":"nbd-server-remove","arguments":{"name":"nope"}}
{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"@DIR@/nbd.sock"}}}}
{"execute":"nbd-server-add","arguments":{"device":"ro","writable":true}}
{"execute":"nbd-server-add","arguments":{"device":"r0","name":"x","description":"d"}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e9","node-name":"n0","writable":true}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"n0","name":"x"}}
{"execute":"block-export-add","arguments":{"type":"nbd","id":"e2","node-name":"n0","writethrough":true,"allocation-depth":true}}
{"execute":"query-block-exports"}
{"execute":"nbd-server-remove","arguments":{"name":"ro"}}
{"execute":"block-export-del","arguments":{"id":"x","mode":"hard"}}
{"execute":"block-export-del","arguments":{"id":"x"}}
{"execute":"query-block-exports"}
{"execute":"blockdev-del","arguments":{"node-name":"n0"}}
{"execute":"nbd-server-stop"}
{"execute":"query-block-exports"}
{"execute":"blockdev-del","arguments":{"node-name":"ro"}}
`.trim().split('\n');

function normalise(text: string, dir: string): string {
  return text.split(dir).join('@DIR@').replace(/"seconds": \d+, "microseconds": \d+/g, '"seconds": S, "microseconds": U');
}

async function session(which: 'qsd' | 'blockd'): Promise<string[][]> {
  const dir = tempDir(`exports-sbs-${which}-`);
  const qmp = join(dir, 'qmp.sock');
  const d = await startDaemon(which, [
    '--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'm',
    ...NODE, ...RO_NODE, '--blockdev', 'driver=raw,node-name=r0,file=n0',
  ], qmp);
  running.push(d);
  const c = await RawQmpConnection.open(qmp);
  await c.nextRaw();
  const out: string[][] = [];
  for (const line of SCRIPT) {
    c.send(`${line.split('@DIR@').join(dir)}\n{"execute":"query-version","id":"__sync__"}\n`);
    const step: string[] = [];
    for (;;) {
      const m = await c.nextRaw();
      if (m.value.id === '__sync__') break;
      step.push(normalise(m.text, dir));
    }
    out.push(step);
  }
  c.close();
  await d.stop();
  return out;
}

describe('QMP export commands as qsd', () => {
  it('answer the same script with the same replies and events', async () => {
    const qsd = await session('qsd');
    const blockd = await session('blockd');
    SCRIPT.forEach((line, i) => expect.soft(blockd[i], line).toEqual(qsd[i]));
  });
});
