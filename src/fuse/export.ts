/**
 * FUSE as an export type: `FuseExport` (a BlockExport mounted on a regular
 * file, its FUSE session and device reader) and `FuseExportDriver`, the
 * FUSE entry of the export-driver table (src/export/drivers.ts), with qsd
 * 7.2's checks and texts (block/export/fuse.c, fuse_export_create).
 *
 * Like qsd's, a FUSE export lets others do anything with its node, resize
 * included. It holds the resize permission when growable; a writable
 * export takes it only for the duration of a truncate (qsd 7.2 holds it for
 * every writable export, which keeps block-stream and blockdev-mirror off
 * the node: see README, differs from qsd). It has no users in the export layer's sense: block-export-del
 * never waits for open files (qsd neither); the unmount detaches the file,
 * and calls on descriptors still open fail with ENOTCONN.
 */
import path from 'node:path';
import type { Stats } from 'node:fs';
import type { Logger } from 'pino';
import { BlockError } from '../util/errors.ts';
import { checkPermissions } from '../blockdev/edge.ts';
import { BlockExport, exportPermissions, type ExportCommon } from '../export/export.ts';
import type { ExportDriver } from '../export/drivers.ts';
import { BlockExportOptionsFuse, type BlockExportOptionsFuseValue, type BlockExportOptionsValue } from '../qapi/block-export.ts';
import { readFuseDevice, writeFuseReply, type FuseDeviceReader } from '../platform/fuse-device.ts';
import { errorText } from '../platform/native.ts';
import { BlockFile, FUSE_MAX_BOUNCE_BYTES } from './file-ops.ts';
import { DEFAULT_LIMITS, FuseSession } from './session.ts';
import { mountFuse, statMountpoint, unmountFuse } from './mount.ts';
import { fuseErr } from './errors.ts';
import { FUSE_MIN_READ_BUFFER } from './protocol/constants.ts';

export const FUSE_EXPORT_TYPE = 'fuse';

export interface FuseExportSettings {
  mountpoint: string;
  growable: boolean;
  allowOther: boolean;
}

export class FuseExport extends BlockExport {
  readonly mountpoint: string;
  readonly growable: boolean;
  readonly allowOther: boolean;
  private readonly session: FuseSession;
  private readonly reader: FuseDeviceReader;
  private stopped = false;
  private unmounted = false;

  /** `fd`: the device, already mounted on the mountpoint; the export owns it from here. */
  constructor(common: ExportCommon, s: FuseExportSettings, private readonly fd: number, private readonly log?: Logger) {
    super(common, true, s.growable);
    this.mountpoint = s.mountpoint;
    this.growable = s.growable;
    this.allowOther = s.allowOther;
    const file = new BlockFile({
      node: () => this.node, writable: this.writable, growable: this.growable, allowOther: this.allowOther, writethrough: this.writethrough,
      ioStats: this.ioStats,
      resizing: (fn) => this.resizing(fn),
    }, { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 });
    this.session = new FuseSession(file, {
      reply: (parts) => writeFuseReply(this.fd, parts),
      setReading: (active) => { if (!this.stopped) this.reader.setActive(active); },
    }, log);
    this.reader = readFuseDevice(fd, DEFAULT_LIMITS.maxWrite + FUSE_MIN_READ_BUFFER, (reqs) => {
      for (const r of reqs) this.session.handle(r);
    }, (err) => {
      // ENODEV: unmounted from outside (umount, fusermount3 -u); the export stays, as in qsd.
      this.stopped = true;
      if (err.code !== 'ENODEV') log?.error({ export: this.id, err: err.message }, 'FUSE device read failed');
      else log?.info({ export: this.id, mountpoint: this.mountpoint }, 'FUSE export unmounted from outside');
    });
  }

  /**
   * Runs `fn` (a truncate) holding the resize permission: held already when
   * growable; otherwise taken for the call, and refused with EPERM when
   * another user of the node does not share it (qsd's fuse_do_truncate).
   */
  async resizing<T>(fn: () => Promise<T>): Promise<T> {
    const edge = this.edge;
    if (edge.perm.resize) return fn();
    try {
      checkPermissions(edge.child, { ...edge, perm: { ...edge.perm, resize: true } }, edge);
    } catch (e) {
      this.log?.info({ export: this.id, err: (e as Error).message }, 'FUSE truncate refused');
      throw fuseErr('EPERM');
    }
    const node = edge.child;
    edge.perm = { ...edge.perm, resize: true };
    try {
      node.refreshPermissions();
      return await fn();
    } finally {
      edge.perm = { ...edge.perm, resize: false };
      node.refreshPermissions();
    }
  }

  /** Stops taking requests, lets those in flight finish, then unmounts (QEMU: request_shutdown, then delete). */
  async shutdown(): Promise<void> {
    if (!this.stopped) {
      this.stopped = true;
      this.reader.setActive(false);
    }
    await this.session.idle();
    if (!this.unmounted) {
      this.unmounted = true;
      unmountFuse(this.mountpoint, this.fd);
    }
  }
}

export interface FuseExportDriverOptions {
  /** The daemon's logger (read when needed: the daemon makes its table before its logger is set). */
  log?: () => Logger | undefined;
  /** How to mount (tests replace it to see allow-other=auto fall back). */
  mount?: typeof mountFuse;
}

/** The FUSE entry of the export-driver table. */
export class FuseExportDriver implements ExportDriver<FuseExport> {
  readonly type = FUSE_EXPORT_TYPE;
  readonly options = BlockExportOptionsFuse;
  /** Mountpoints in use, as given and resolved (QEMU keeps the strings given). */
  private readonly mountpoints = new Map<FuseExport, { given: string; resolved: string }>();

  constructor(private readonly opts: FuseExportDriverOptions = {}) {}

  private get log(): Logger | undefined { return this.opts.log?.(); }

  /** QEMU's fuse_export_create: its checks and messages in its order. */
  create(common: ExportCommon, options: BlockExportOptionsValue): FuseExport {
    const o = options as BlockExportOptionsValue & BlockExportOptionsFuseValue;
    const growable = o.growable === true;
    if (growable) {
      const user = { describe: () => `block device export '${common.id}'`, permissionUser: () => 'an unnamed block device' };
      checkPermissions(common.node, { parent: user, child: common.node, role: 'root', ...exportPermissions(common.writable, true, true) });
    }
    // Before any stat: a stat of one of our own live mounts would wait for
    // an answer only this thread can give. qsd compares the strings given;
    // blockd also compares the absolute paths, so "./f" and "f" clash too.
    const resolved = path.resolve(o.mountpoint);
    for (const m of this.mountpoints.values()) {
      if (m.given === o.mountpoint || m.resolved === resolved) throw new BlockError('EINVAL', `There already is a FUSE export on '${o.mountpoint}'`);
    }
    let st: Stats;
    try {
      const r = statMountpoint(o.mountpoint);
      st = r.stat;
      if (r.cleaned) this.log?.warn({ mountpoint: o.mountpoint }, 'removed a stale FUSE mount (its daemon had died)');
    } catch (e) {
      throw new BlockError('EINVAL', `Failed to stat '${o.mountpoint}': ${errorText(e)}`);
    }
    if (!st.isFile()) throw new BlockError('EINVAL', `'${o.mountpoint}' is not a regular file`);

    const mode = o['allow-other'] ?? 'auto';
    const base = { maxRead: FUSE_MAX_BOUNCE_BYTES, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
    const mountFn = this.opts.mount ?? mountFuse;
    let fd: number | undefined;
    let allowOther = mode !== 'off';
    try {
      fd = mountFn(o.mountpoint, { ...base, allowOther });
    } catch (e) {
      this.log?.debug({ mountpoint: o.mountpoint, allowOther, err: errorText(e) }, 'FUSE mount failed');
      if (mode === 'auto') {
        allowOther = false;
        try {
          fd = mountFn(o.mountpoint, { ...base, allowOther });
        } catch (e2) {
          this.log?.warn({ mountpoint: o.mountpoint, err: errorText(e2) }, 'FUSE mount failed');
        }
      } else {
        this.log?.warn({ mountpoint: o.mountpoint, err: errorText(e) }, 'FUSE mount failed');
      }
    }
    if (fd === undefined) throw new BlockError('EIO', 'Failed to mount FUSE session to export');
    let exp: FuseExport;
    try {
      exp = new FuseExport(common, { mountpoint: o.mountpoint, growable, allowOther }, fd, this.log);
    } catch (e) {
      unmountFuse(o.mountpoint, fd);
      throw e;
    }
    this.mountpoints.set(exp, { given: o.mountpoint, resolved });
    return exp;
  }

  async requestShutdown(exp: FuseExport): Promise<void> {
    try {
      await exp.shutdown();
    } finally {
      // qsd frees the mountpoint's name at shutdown.
      this.mountpoints.delete(exp);
    }
  }
}
