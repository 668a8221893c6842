/**
 * What `npm start` (blockd without options) serves: ./var/disk0.qcow2, a
 * 1 GiB qcow2 image created on first start, exported as 'disk0' on
 * 127.0.0.1:10809 and on ./var/nbd.sock, with a QMP monitor on ./var/qmp.sock.
 */
import { mkdirSync, existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { createQcow2File } from '../blockdev/create/qcow2.ts';
import type { StartupConfig } from './cli.ts';

export const DEFAULT_SIZE = 1 << 30;

export async function embeddedDefault(logLevel: string, dir = resolve('var')): Promise<{ config: StartupConfig; banner: string }> {
  mkdirSync(dir, { recursive: true });
  const image = resolve(dir, 'disk0.qcow2');
  if (!existsSync(image)) await createQcow2File(image, DEFAULT_SIZE);
  const sock = resolve(dir, 'nbd.sock');
  const qmp = resolve(dir, 'qmp.sock');
  const config: StartupConfig = {
    objects: [], commands: [], daemonize: false, logLevel,
    chardevs: [{ option: 'chardev', value: `socket,id=qmp0,path=${qmp},server=on,wait=off` }],
    monitors: [{ option: 'monitor', value: 'chardev=qmp0' }],
    blockdevs: [
      { option: 'blockdev', value: { driver: 'file', 'node-name': 'disk0-file', filename: image, discard: 'unmap' } },
      { option: 'blockdev', value: { driver: 'qcow2', 'node-name': 'disk0', file: 'disk0-file', discard: 'unmap' } },
    ],
    nbdServers: [
      { option: 'nbd-server', value: { addr: { type: 'inet', host: '127.0.0.1', port: '10809' } } },
      { option: 'nbd-server', value: { addr: { type: 'unix', path: sock } } },
    ],
    exports: [{ option: 'export', value: { type: 'nbd', id: 'disk0', 'node-name': 'disk0', name: 'disk0', writable: true } }],
  };
  const banner = `blockd is serving ${image} (qcow2, 1 GiB) as export 'disk0':
  nbd://127.0.0.1:10809/disk0
  nbd+unix:///disk0?socket=${sock}

Try:
  nbdinfo nbd://127.0.0.1:10809/disk0
  nbdinfo --map 'nbd+unix:///disk0?socket=${sock}'
  qemu-img info nbd://127.0.0.1:10809/disk0
  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://127.0.0.1:10809/disk0
  nbd-client -l 127.0.0.1 10809
  sudo nbd-client -N disk0 127.0.0.1 10809 /dev/nbd0
  ./bin/blockctl -s ${qmp} query-named-block-nodes

Stop with Ctrl-C (SIGINT) or SIGTERM.
`;
  return { config, banner };
}
