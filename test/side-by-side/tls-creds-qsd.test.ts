/**
 * tls-creds-* objects side by side with qsd: the errors a user meets when
 * making them (a missing dir or file in it, our own certificate expired or
 * not issued by the CA, an encrypted key without or with the wrong
 * password, a PSK user not in the file) are qsd's, word for word; an
 * encrypted key opened with passwordid serves clients on both.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { BLOCKD, tempDir } from '../helpers/daemons.ts';
import { qmpDaemon } from '../helpers/live.ts';
import { getPort } from '../helpers/port.ts';
import { requireTool, run, tryRun } from '../helpers/tools.ts';
import { makeTlsFixture, waitForPort, type TlsFixture } from '../helpers/tls.ts';
import { BOTH, type Who } from '../helpers/pair.ts';

let fx: TlsFixture;
let root: string;
const stops: (() => Promise<unknown>)[] = [];
beforeAll(() => {
  root = tempDir('blockd-tls-creds-');
  fx = makeTlsFixture(join(root, 'pki'));
  // Our own certificate from another CA than the one in the dir; a dir with no key.
  mkdirSync(join(root, 'mismatch'));
  for (const f of ['server-cert.pem', 'server-key.pem']) copyFileSync(join(fx.otherServer, f), join(root, 'mismatch', f));
  copyFileSync(join(fx.server, 'ca-cert.pem'), join(root, 'mismatch', 'ca-cert.pem'));
  mkdirSync(join(root, 'nokey'));
  for (const f of ['ca-cert.pem', 'server-cert.pem']) copyFileSync(join(fx.server, f), join(root, 'nokey', f));
  writeFileSync(join(root, 'pw'), fx.keyPassword);
  writeFileSync(join(root, 'badpw'), 'wrong');
});
afterAll(async () => { for (const s of stops.splice(0)) await s().catch(() => undefined); });

function startFails(who: Who, args: string[]): { status: number | null; text: string } {
  const r = spawnSync(who === 'qsd' ? requireTool('qemu-storage-daemon') : BLOCKD, args, { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, text: r.stderr.trim().replace(/^(qemu-storage-daemon|blockd): /, '') };
}

describe('TLS credentials objects, side by side with qsd', () => {
  it('the same errors, word for word', () => {
    const x = (dir: string, extra = '') => ['--object', `tls-creds-x509,id=t,endpoint=server,dir=${dir}${extra}`];
    const cases: string[][] = [
      ['--object', 'tls-creds-x509,id=t,endpoint=server'],
      x(join(root, 'nothere')),
      x(join(root, 'nokey')),
      x(fx.client1),
      x(fx.expiredServer),
      x(join(root, 'mismatch')),
      x(fx.encryptedServer),
      ['--object', `secret,id=pw,file=${join(root, 'badpw')}`, ...x(fx.encryptedServer, ',passwordid=pw')],
      x(fx.encryptedServer, ',passwordid=nope'),
      ['--object', `tls-creds-x509,id=t,endpoint=client,dir=${fx.expired}`],
      ['--object', `tls-creds-psk,id=t,endpoint=client,dir=${fx.pskServer},username=carol`],
      ['--object', `tls-creds-psk,id=t,endpoint=server,dir=${fx.client1}`],
      ['--object', `tls-creds-psk,id=t,endpoint=server,dir=${fx.pskServer},username=alice`],
    ];
    for (const args of cases) {
      const [q, b] = BOTH.map((w) => startFails(w, args));
      expect(b, args.join(' ')).toEqual(q);
      expect(q.status, args.join(' ')).toBe(1);
    }
  });

  it('qom-get of the credentials and authz objects\' properties is qsd\'s', async () => {
    const got: Record<string, unknown>[] = [];
    for (const who of BOTH) {
      const dir = join(root, `qom-${who}`);
      mkdirSync(dir);
      const d = await qmpDaemon(who, dir, [
        '--object', `tls-creds-x509,id=x,endpoint=server,dir=${fx.server},verify-peer=off,priority=NORMAL`,
        '--object', `tls-creds-x509,id=xc,dir=${fx.client1},sanity-check=off`,
        '--object', `tls-creds-psk,id=p,endpoint=client,dir=${fx.pskServer},username=alice`,
        '--object', `tls-creds-psk,id=pq,endpoint=client,dir=${dirname(fx.pskDefault)}`,
        '--object', 'tls-creds-anon,id=a,endpoint=server',
        '--object', 'authz-simple,id=s,identity=alice',
        '--object', 'authz-list,id=l,policy=allow,rules.0.match=bob,rules.0.policy=deny,rules.0.format=glob']);
      stops.push(async () => { d.qmp.close(); await d.proc.stop(); });
      const values: Record<string, unknown> = {};
      for (const [id, props] of [['x', ['endpoint', 'verify-peer', 'dir', 'priority', 'sanity-check', 'passwordid']],
        ['xc', ['endpoint', 'verify-peer', 'sanity-check']], ['p', ['username', 'endpoint']], ['pq', ['username']],
        ['a', ['endpoint', 'dir', 'priority']], ['s', ['identity']], ['l', ['policy', 'rules']]] as [string, string[]][]) {
        for (const prop of props) {
          values[`${id}.${prop}`] = await d.qmp.execute('qom-get', { path: `/objects/${id}`, property: prop }).catch((e: Error) => e.message);
        }
      }
      got.push(values);
    }
    expect(got[1]).toEqual(got[0]);
    expect(got[0]).toMatchObject({ 'x.endpoint': 'server', 'x.verify-peer': false, 'x.priority': 'NORMAL', 'p.username': 'alice', 'pq.username': '', 's.identity': 'alice' });
  });

  it('an encrypted key with passwordid serves clients', async () => {
    for (const who of BOTH) {
      const dir = join(root, `pw-${who}`);
      mkdirSync(dir);
      run('qemu-img', ['create', '-f', 'raw', join(dir, 'd.img'), '1M']);
      const port = await getPort();
      const d = await qmpDaemon(who, dir, ['--object', `secret,id=pw,file=${join(root, 'pw')}`,
        '--object', `tls-creds-x509,id=t,endpoint=server,dir=${fx.encryptedServer},passwordid=pw`,
        '--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'd.img')}`,
        '--nbd-server', `addr.type=inet,addr.host=127.0.0.1,addr.port=${port},tls-creds=t`, '--export', 'type=nbd,id=e0,node-name=f0,name=disk0']);
      stops.push(async () => { d.qmp.close(); await d.proc.stop(); });
      await waitForPort(port);
      expect(tryRun('nbdinfo', ['--size', `nbds://127.0.0.1:${port}/disk0?tls-certificates=${fx.client1}`]).stdout.trim(), who).toBe(String(1 << 20));
    }
  });
});
