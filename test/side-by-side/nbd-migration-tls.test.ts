/**
 * Live storage migration over NBD with TLS on the destination (issue 15's
 * check on issue 14's scenario): the destination exports its new image on a
 * TLS-only NBD server (x509, tls-authz naming the source's certificate);
 * the source adds an nbd node with tls-creds/tls-hostname and mirrors its
 * live disk into it while a client writes; at READY the writer stops and
 * the job completes. blockd→blockd, blockd→qsd and qsd→blockd: the
 * destination's image equals the model of acknowledged writes, and the
 * source's job events are the same as qsd's.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/daemons.ts';
import { cleanupsAfterEach, flush, imageContents, qmpDaemon, waitFor, Writer } from '../helpers/live.ts';
import { RawClient, rawNegotiate } from '../helpers/nbd.ts';
import { sequence } from '../helpers/live-export.ts';
import { makeChain, prepareDestination, side, stopSide, type Side, type Who } from '../helpers/migration.ts';
import { run } from '../helpers/tools.ts';
import { makeTlsFixture, type TlsFixture } from '../helpers/tls.ts';

const SIZE = 8 * 1024 * 1024;
const cleanups = cleanupsAfterEach();
let fx: TlsFixture;
beforeAll(() => { fx = makeTlsFixture(tempDir('blockd-migr-tls-pki-')); });

/** The destination: a TLS-only NBD server on a Unix socket; only client1's certificate is authorized. */
async function tlsDestination(who: Who, root: string): Promise<Side> {
  const dir = join(root, 'dst');
  mkdirSync(dir, { recursive: true });
  const nbdSock = join(dir, 'nbd.sock');
  const d = await qmpDaemon(who, dir, [
    '--object', `tls-creds-x509,id=tls0,dir=${fx.server},endpoint=server`,
    '--object', `authz-simple,id=az,identity=${fx.dn1.replace(/,/g, ',,')}`,
    '--nbd-server', `addr.type=unix,addr.path=${nbdSock},tls-creds=tls0,tls-authz=az`]);
  return { who, dir, nbdSock, ...d };
}

async function migrate(src: Who, dst: Who): Promise<string[]> {
  const root = tempDir('blockd-migr-tls-');
  const initial = makeChain(root, SIZE);
  const source = await side(src, root, 'src', [
    '--object', `tls-creds-x509,id=c1,dir=${fx.client1},endpoint=client`,
    '--object', `tls-creds-x509,id=c2,dir=${fx.client2},endpoint=client`,
    '--blockdev', `driver=file,node-name=disk-file,filename=${join(root, 'disk.qcow2')}`,
    '--blockdev', 'driver=qcow2,node-name=disk,file=disk-file',
    '--export', 'type=nbd,id=e0,node-name=disk,name=disk,writable=on',
  ]);
  cleanups.push(() => stopSide(source));
  const dest = await tlsDestination(dst, root);
  cleanups.push(() => stopSide(dest));
  const image = await prepareDestination(dest, SIZE);
  const remote = (name: string, creds: string) => source.qmp.execute('blockdev-add', {
    driver: 'nbd', 'node-name': name, server: { type: 'unix', path: dest.nbdSock }, export: 'tgt', 'tls-creds': creds, 'tls-hostname': 'localhost',
  });
  // A source without the authorized certificate cannot open the target; without TLS neither.
  await expect(remote('refused', 'c2')).rejects.toThrow();
  await expect(source.qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': 'plain', server: { type: 'unix', path: dest.nbdSock }, export: 'tgt' }))
    .rejects.toThrow('TLS negotiation required before option 7 (go)');
  await remote('remote', 'c1');

  const c = new RawClient(source.nbdSock);
  cleanups.push(async () => c.destroy());
  expect(await rawNegotiate(c, 'disk')).toBe(SIZE);
  const w = new Writer(c, initial, 4);
  w.start();
  await new Promise((r) => setTimeout(r, 200));
  await source.qmp.execute('blockdev-mirror', { 'job-id': 'm0', device: 'disk', target: 'remote', sync: 'full' });
  await waitFor(source.events, (e) => e.event === 'BLOCK_JOB_READY', 60_000);
  await new Promise((r) => setTimeout(r, 300));
  await w.stop();
  await flush(c);
  expect(w.errors).toBe(0);
  await source.qmp.execute('job-complete', { id: 'm0' });
  await waitFor(source.events, (e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === 'm0' && e.data.status === 'null', 60_000);
  c.destroy();
  await stopSide(source);
  await stopSide(dest);
  cleanups.length = 0;
  run('qemu-img', ['check', image]);
  expect(w.writes, `${src}→${dst}`).toBeGreaterThan(20);
  expect(imageContents(join(root, 'dst'), 'tgt.qcow2').equals(w.model), `${src}→${dst}: destination`).toBe(true);
  return sequence(source.events, 'm0');
}

describe('live storage migration over NBD with TLS on the destination', () => {
  it('blockd→blockd, blockd→qsd, qsd→blockd: the same result, and the same events as qsd as the source', async () => {
    const bb = await migrate('blockd', 'blockd');
    const bq = await migrate('blockd', 'qsd');
    const qb = await migrate('qsd', 'blockd');
    expect(bb).toEqual(qb);
    expect(bq).toEqual(qb);
    expect(qb).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
  }, 240_000);
});
