/**
 * driver=nbd: a protocol node backed by an export of a remote NBD server
 * (QEMU's block/nbd.c). Files: options.ts (BlockdevOptionsNbd, filename),
 * connect.ts (the socket), negotiate.ts (fixed newstyle handshake),
 * client.ts (requests in flight, reconnect), requests.ts (one request and
 * its replies), ops.ts (the block layer's operations as NBD commands), pool.ts
 * (multi-conn: several connections to one export).
 */
import { BlockError } from '../../../util/errors.ts';
import { findTlsCreds } from '../../../objects/tls/lookup.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import { BlockdevOptionsNbd, nbdFilename, parseNbdOptions } from './options.ts';
import { MAX_MULTI_CONN, NbdPool } from './pool.ts';
import { nbdOps } from './ops.ts';
import { TxFlag } from './protocol.ts';
import { parseNbdFilename } from './filename.ts';

export const nbdDriver: Driver = {
  name: 'nbd',
  kind: 'protocol',
  options: BlockdevOptionsNbd,
  strongOptions: ['server', 'export', 'tls-creds', 'tls-hostname'],
  filenameIsExact: true,
  protocols: ['nbd', 'nbd+tcp', 'nbd+unix'],
  parseFilename: parseNbdFilename,
  async open(options, ctx): Promise<DriverOps> {
    const cfg = parseNbdOptions(options);
    if (cfg.multiConn < 1 || cfg.multiConn > MAX_MULTI_CONN) {
      throw new BlockError('EINVAL', `Parameter 'multi-conn' expects a value between 1 and ${MAX_MULTI_CONN}`);
    }
    // As QEMU: the credentials are looked up when the node opens; tls-hostname defaults to an inet server's host
    // (and, as in QEMU, means nothing without tls-creds).
    if (options['tls-creds'] !== undefined) {
      const creds = findTlsCreds(ctx.objects, options['tls-creds'] as string, 'client');
      const hostname = (options['tls-hostname'] as string | undefined) ?? (cfg.server.type === 'inet' ? cfg.server.host : undefined);
      cfg.tls = { creds, hostname };
    }
    const client = await NbdPool.open(cfg, ctx.log);
    const info = client.info;
    let writable = !ctx.readOnly;
    try {
      if (cfg.xDirtyBitmap !== undefined && info.contextId === undefined) {
        // QEMU loses this message ("requested x-dirty-bitmap %s not found") and reports the errno.
        throw new BlockError('EINVAL', 'Could not open image: Invalid argument');
      }
      if (info.flags & TxFlag.READ_ONLY && writable) {
        if (!ctx.options['auto-read-only']) throw new BlockError('EPERM', 'Could not open image: Permission denied');
        writable = false;
      }
    } catch (e) {
      await client.close();
      throw e;
    }
    const filename = nbdFilename(cfg);
    return { ...nbdOps(client, writable), openedReadOnly: !ctx.readOnly && !writable, filename: () => filename, info: () => ({}) };
  },
};
