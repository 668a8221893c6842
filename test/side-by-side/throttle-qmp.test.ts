/**
 * throttle-group objects and throttle nodes through QMP, side by side with
 * qemu-storage-daemon 7.2: the same script gives byte-identical replies
 * (object-add with valid and invalid limits and legacy x- properties, qom-get
 * and qom-set of limits, object-del refused while a node is in the group,
 * blockdev-add of throttle nodes and their errors, blockdev-reopen moving a
 * node to another group, the filter's json: filename), and --object's
 * start-up errors are qsd's.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { startDaemon, tempDir, BLOCKD, type Running } from '../helpers/daemons.ts';
import { requireTool } from '../helpers/tools.ts';
import { RawQmpConnection } from '../../src/qmp/raw-connection.ts';

const running: Running[] = [];
afterAll(async () => { for (const r of running) await r.stop(); });

const ARGS = [
  '--object', 'throttle-group,id=tg0,limits.iops-total=100,limits.bps-read=1048576',
  '--object', 'throttle-group,id=tg1,x-iops-total=5,limits.iops-total=6,x-bps-total=5,limits.bps-total=6',
  '--object', 'secret,id=s0,data=x',
  '--blockdev', 'null-co,node-name=n0',
  '--blockdev', 'null-co,node-name=n1',
  '--blockdev', 'throttle,node-name=t9,throttle-group=tg0,file=n1',
];

const SCRIPT = String.raw`
{"execute":"qom-get","arguments":{"path":"tg0","property":"limits"}}
{"execute":"qom-get","arguments":{"path":"/objects/tg1","property":"limits"}}
{"execute":"qom-get","arguments":{"path":"objects/tg1/","property":"x-iops-total"}}
{"execute":"qom-get","arguments":{"path":"tg1","property":"type"}}
{"execute":"qom-get","arguments":{"path":"/objects","property":"type"}}
{"execute":"qom-get","arguments":{"path":"tg0","property":"nope"}}
{"execute":"qom-get","arguments":{"path":"s0","property":"limits"}}
{"execute":"qom-get","arguments":{"path":"tgx","property":"limits"}}
{"execute":"qom-get","arguments":{"path":"/objects/tgx","property":"limits"}}
{"execute":"qom-get","arguments":{"path":"tg0"}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits","value":{"iops-total":200,"iops-read":3}}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits","value":{"bps-read":100,"iops-total-max":300,"iops-total-max-length":3}}}
{"execute":"qom-get","arguments":{"path":"tg0","property":"limits"}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits","value":{"iops-total-max-length":4294967296}}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits","value":{"iops-total":1.5}}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits","value":{"iops-total":-1}}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits","value":{"iops-total":"x"}}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits","value":{"foo":1}}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits","value":5}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits"}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"x-iops-total","value":7}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"type","value":"x"}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"nope","value":1}}
{"execute":"qom-set","arguments":{"path":"tgx","property":"limits","value":{}}}
{"execute":"qom-set","arguments":{"path":"tg0","property":"limits","value":{}}}
{"execute":"qom-get","arguments":{"path":"tg0","property":"limits"}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg0"}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"iops-total":5,"iops-read":1}}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"iops-size":4096}}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"iops-total-max":5}}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"iops-total":10,"iops-total-max":5}}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"iops-total":10,"iops-total-max-length":5}}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"iops-total":10,"iops-total-max":20,"iops-total-max-length":0}}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"bps-total":1000000000000001}}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"iops-total":1,"iops-total-max":100000000000000,"iops-total-max-length":11}}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","x-iops-total":-1}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","x-iops-write-max-length":4294967296}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","x-iops-total":5,"x-iops-read":3}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"iops-total":1},"bogus":1}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"bps-total":5},"x-bps-total":7,"x-iops-read":9,"x-iops-read-max":10,"x-iops-read-max-length":2,"x-iops-size":512}}
{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg2","limits":{"bps-total":5},"x-bps-total":7,"x-iops-read":9,"x-iops-read-max":10,"x-iops-read-max-length":2}}
{"execute":"qom-get","arguments":{"path":"tg2","property":"limits"}}
{"execute":"qom-get","arguments":{"path":"tg2","property":"x-bps-total"}}
{"execute":"blockdev-add","arguments":{"driver":"throttle","node-name":"t0","file":"n0"}}
{"execute":"blockdev-add","arguments":{"driver":"throttle","node-name":"t0","file":"n0","throttle-group":"nope"}}
{"execute":"blockdev-add","arguments":{"driver":"throttle","node-name":"t0","file":"n0","throttle-group":"s0"}}
{"execute":"blockdev-add","arguments":{"driver":"throttle","node-name":"t0","file":"n0","throttle-group":"tg0"}}
{"execute":"query-named-block-nodes","arguments":{"flat":true}}
{"execute":"object-del","arguments":{"id":"tg0"}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"throttle","node-name":"t0","file":"n0","throttle-group":"tg1"}]}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"throttle","node-name":"t0","file":"n0","throttle-group":"nope"}]}}
{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"throttle","node-name":"t0","file":"n0"}]}}
{"execute":"query-named-block-nodes","arguments":{"flat":true}}
{"execute":"object-del","arguments":{"id":"tg1"}}
{"execute":"object-del","arguments":{"id":"tg0"}}
{"execute":"blockdev-del","arguments":{"node-name":"t9"}}
{"execute":"object-del","arguments":{"id":"tg0"}}
{"execute":"blockdev-del","arguments":{"node-name":"t0"}}
{"execute":"object-del","arguments":{"id":"tg1"}}
{"execute":"object-del","arguments":{"id":"tg1"}}
{"execute":"object-del","arguments":{"id":"tg2"}}
`.trim().split('\n');

async function runScript(path: string, script: string[]): Promise<string[][]> {
  const c = await RawQmpConnection.open(path);
  await c.nextRaw();
  c.send('{"execute":"qmp_capabilities"}\n');
  await c.nextRaw();
  const out: string[][] = [];
  for (const line of script) {
    c.send(`${line}\n{"execute":"query-version","id":"__sync__"}\n`);
    const step: string[] = [line];
    for (;;) {
      const m = await c.nextRaw();
      if (m.value.id === '__sync__') break;
      step.push(m.text);
    }
    out.push(step);
  }
  c.close();
  return out;
}

async function replies(which: 'qsd' | 'blockd'): Promise<string[][]> {
  const dir = tempDir();
  const sock = join(dir, 'qmp.sock');
  const d = await startDaemon(which, ['--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'm', ...ARGS], sock);
  running.push(d);
  return runScript(sock, SCRIPT);
}

describe('throttle-group and throttle nodes over QMP, side by side with qsd', () => {
  it('answers the script byte for byte as qsd', async () => {
    const [q, b] = await Promise.all([replies('qsd'), replies('blockd')]);
    if (process.env.SHOW_REPLIES) console.log(q.map((x) => x.join('\n')).join('\n'));
    expect(q).toHaveLength(SCRIPT.length);
    for (let i = 0; i < q.length; i++) expect(b[i]).toEqual(q[i]);
  });

  it('--object throttle-group,help lists the properties as qsd', () => {
    const q = spawnSync(requireTool('qemu-storage-daemon'), ['--object', 'throttle-group,help'], { encoding: 'utf8' });
    const b = spawnSync(BLOCKD, ['--object', 'throttle-group,help'], { encoding: 'utf8' });
    expect(q.stdout).toMatch(/^throttle-group options:\n  limits=<ThrottleLimits>\n/);
    expect(b.stdout).toBe(q.stdout);
  });

  it('--object throttle-group start-up errors are qsd\'s', async () => {
    // A few of each kind (the unit tests have every text; the QMP script above the rest).
    const cases = [
      'limits.iops-total=100,limits.iops-read=5',
      'limits.iops-size=4096',
      'limits.iops-total=-1',
      'limits.iops-total-max-length=4294967296',
      'x-iops-total=-5',
      'x-iops-total-max-length=4294967296',
      'limits.iops-total=abc',
      'limits.foo=1',
      'limits.iops-total-max=1,x-bps-total=1',
    ];
    const qsd = requireTool('qemu-storage-daemon');
    const outcome = (cmd: string, opts: string) => new Promise<string>((resolve) => {
      const p = spawn(cmd, ['--object', `throttle-group,id=tg0,${opts}`, '--blockdev', 'null-co,node-name=n0'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      p.stderr.on('data', (d) => (err += d));
      const t = setTimeout(() => p.kill('SIGKILL'), 20_000);
      // 'close', not 'exit': the process can exit before its stderr has been read to the end (CI saw "1 " alone).
      p.once('close', (code) => { clearTimeout(t); resolve(`${code} ${err.replace(/^blockd:/, 'qemu-storage-daemon:')}`); });
    });
    // Four at a time: each blockd start costs a second or two of CPU.
    for (let i = 0; i < cases.length; i += 4) {
      const batch = cases.slice(i, i + 4);
      const got = await Promise.all(batch.flatMap((c) => [outcome(qsd, c), outcome(BLOCKD, c)]));
      for (let j = 0; j < batch.length; j++) {
        expect(got[2 * j]!.startsWith('1 qemu-storage-daemon: --object'), got[2 * j]).toBe(true);
        expect(got[2 * j + 1], batch[j]).toBe(got[2 * j]);
      }
    }
  });
});
