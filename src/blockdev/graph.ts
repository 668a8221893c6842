/**
 * BlockGraph: every named node, the driver registry, and the only place that
 * creates, deletes and rewires nodes. Options reaching add() have already
 * been validated against the blockdev schema (src/blockdev/options.ts).
 */
import { BlockError } from '../util/errors.ts';
import { VALID_ID } from '../qapi/ids.ts';
import { BlockNode } from './node.ts';
import { generateNodeName } from './surgery/node-names.ts';
import { attachEdge, cowShared, detachEdge, type ChildEdge, type Parent } from './edge.ts';
import { pino } from 'pino';
import { ObjectRegistry } from '../objects/registry.ts';
import { childPermission } from './perm.ts';
import { probeBytes, probeFile } from './probe.ts';
import type { BlockEnvironment, ChildPermission, ChildRef, ChildRole, CommonOptions, Driver, DriverContext, OpenChildOptions } from './driver.ts';

export { VALID_ID };

export class BlockGraph {
  readonly nodes = new Map<string, BlockNode>();
  private readonly drivers = new Map<string, Driver>();
  /** What drivers get from above (DriverContext.objects, log, events). */
  readonly env: BlockEnvironment;

  /**
   * `env` comes from the composition root (the daemon: its object registry,
   * logger and QMP event bus). A graph built without one (blockctl,
   * blockdev-create's scratch graph, tests) has no objects, logs nothing and
   * sends events nowhere.
   */
  constructor(env: Partial<BlockEnvironment> = {}) {
    this.env = {
      objects: env.objects ?? new ObjectRegistry(),
      log: env.log ?? pino({ level: 'silent' }),
      events: env.events ?? { emit: () => undefined },
    };
  }

  register(driver: Driver): void {
    this.drivers.set(driver.name, driver);
  }

  driver(name: string): Driver | undefined { return this.drivers.get(name); }
  driverNames(): string[] { return [...this.drivers.keys()].sort(); }

  /** The format of the image in `filename`, by the registered drivers' probe() hooks (probe.ts). */
  probeFormat(filename: string): Promise<string> { return probeFile(this.drivers.values(), filename); }

  /**
   * The options of the protocol node that opens `filename` (QEMU's
   * bdrv_find_protocol: a `name:` prefix before any '/' picks the driver
   * whose protocols list it; anything else is a file).
   */
  protocolOptions(filename: string): Record<string, unknown> {
    const m = /^([a-zA-Z0-9.+-]+):/.exec(filename);
    if (m && !filename.slice(0, m[0].length).includes('/')) {
      for (const d of this.drivers.values()) {
        if (d.protocols?.includes(m[1]!) && d.parseFilename) return { driver: d.name, ...d.parseFilename(filename) };
      }
    }
    return { driver: 'file', filename };
  }

  /** QEMU's error for a node reference that names nothing. */
  find(name: string): BlockNode {
    const n = this.nodes.get(name);
    if (!n) throw new BlockError('ENOENT', `Cannot find device='' nor node-name='${name}'`);
    return n;
  }

  /** A child given by name in a parent's options (QEMU looks it up as a device name too). */
  findReference(name: string): BlockNode {
    const n = this.nodes.get(name);
    if (!n) throw new BlockError('ENOENT', `Cannot find device='${name}' nor node-name='${name}'`);
    return n;
  }

  /** Opens a node (and any inline children) from validated blockdev options. */
  async add(options: Record<string, unknown>, implicit = false, probed = false): Promise<BlockNode> {
    const common = options as unknown as CommonOptions;
    const driver = this.drivers.get(common.driver);
    if (!driver) throw new BlockError('EINVAL', `Parameter 'driver' does not accept value '${common.driver}'`);
    const given = common['node-name'];
    if (given !== undefined) {
      if (!VALID_ID.test(given)) throw new BlockError('EINVAL', `Invalid node-name: '${given}'`);
      if (this.nodes.has(given)) throw new BlockError('EINVAL', `Duplicate nodes with node-name='${given}'`);
    }
    const readOnly = common['read-only'] === true;
    const node = new BlockNode(given ?? '', driver, { ...options, 'node-name': given } as never, readOnly, implicit);
    node.probed = probed;
    // QEMU names a node (bdrv_open_common) once its file child is open and before any other child
    // (backing, data file) opens: generated names are numbered, and nodes listed, in that order.
    let named = false;
    const nameNode = () => {
      if (named) return;
      named = true;
      node.assignName(given ?? generateNodeName((n) => this.nodes.has(n)));
    };
    const opened: ChildEdge[] = [];
    const graph = this;
    const ctx: DriverContext = {
      get nodeName() { nameNode(); return node.nodeName; },
      readOnly,
      options: common,
      objects: this.env.objects,
      get log() { nameNode(); return graph.env.log.child({ node: node.nodeName }); },
      events: this.env.events,
      probeFormat: (filename) => this.probeFormat(filename),
      protocolOptions: (filename) => this.protocolOptions(filename),
      probeBytes: (head) => probeBytes(this.drivers.values(), head, ''),
      probed,
      currentChildren: [],
      childEdge: (role) => opened.find((e) => e.role === role),
      openChild: async (role: ChildRole, ref: ChildRef, opts?: OpenChildOptions) => {
        if (role !== 'file') nameNode();
        let child: BlockNode;
        if (typeof ref === 'string') {
          child = this.findReference(ref);
        } else {
          child = await this.add(inheritOptions(ref, common), true, opts?.probed === true);
          child.readOnlyInherited = ref['read-only'] === undefined;
        }
        try {
          const edge = this.link(node, child, role, childPerm(driver, readOnly, role, opts));
          opened.push(edge);
          return child;
        } catch (e) {
          if (typeof ref !== 'string') await this.closeNode(child);
          throw e;
        }
      },
    };
    try {
      const ops = await driver.open(options, ctx);
      if (ops.openedReadOnly) node.readOnly = true;
      node.setOps(ops);
    } catch (e) {
      for (const edge of opened.reverse()) await this.unlink(node, edge);
      throw e;
    }
    nameNode();
    if (probed && !node.readOnly && driver.probedWarning) {
      graph.env.log.child({ node: node.nodeName }).warn(driver.probedWarning(node.child('file')?.ops.filename?.() ?? ''));
    }
    this.nodes.set(node.nodeName, node);
    if (driver.options.members.some((m) => m.name === 'backing')) node.autoBacking = autoBackingAtOpen(node);
    return node;
  }

  /**
   * Opens `node`'s driver again on the children it has now (after its
   * children moved: a pivot, a new backing link); its old ops are closed
   * already. The options stay as given (reopen compares child references
   * with them); the context hands out the current children whatever the
   * reference says. Only 'backing' must say whether there is one.
   */
  async openOnChildren(node: BlockNode): Promise<void> {
    const options: Record<string, unknown> = { ...node.options };
    if (node.driver.options.members.some((m) => m.name === 'backing')) {
      const backing = node.child('backing');
      if (!backing) options.backing = null;
      else if (options.backing === null) options.backing = backing.nodeName;
    }
    const ctx: DriverContext = {
      nodeName: node.nodeName,
      readOnly: node.readOnly,
      options: node.options as CommonOptions,
      objects: this.env.objects,
      log: this.env.log.child({ node: node.nodeName }),
      events: this.env.events,
      probeFormat: (filename) => this.probeFormat(filename),
      protocolOptions: (filename) => this.protocolOptions(filename),
      probeBytes: (head) => probeBytes(this.drivers.values(), head, ''),
      probed: node.probed,
      currentChildren: node.children.map((e) => e.role),
      childEdge: (role) => node.children.find((e) => e.role === role),
      openChild: async (role) => {
        const c = node.child(role);
        if (!c) throw new BlockError('EINVAL', `Node '${node.nodeName}' has no '${role}' child`);
        return c;
      },
    };
    node.setOps(await node.driver.open(options, ctx));
  }

  /** blockdev-del: refused while anything uses the node. */
  async del(name: string): Promise<void> {
    const node = this.nodes.get(name);
    if (!node) throw new BlockError('ENOENT', `Failed to find node with node-name='${name}'`);
    if (node.implicit) throw new BlockError('EINVAL', `Node ${name} is not owned by the monitor`);
    if (node.parents.length > 0) throw new BlockError('EBUSY', `Node '${name}' is busy: ${describeUse(node.parents[0])}`);
    await this.closeNode(node);
  }

  /**
   * x-blockdev-change node= (QEMU's bdrv_add_child): `child` becomes a new
   * child of `parent`, whose driver names the edge (DriverOps.addChild).
   */
  async addChild(parent: BlockNode, child: BlockNode): Promise<void> {
    const add = parent.ops.addChild;
    if (!add) throw new BlockError('ENOTSUP', `The node ${parent.nodeName} does not support adding a child`);
    if (child.parents.length > 0) throw new BlockError('EBUSY', `The node ${child.nodeName} already has a parent`);
    await parent.drained(() => add(child, (role) => this.link(parent, child, role, childPermission(parent.driver, role, parent.readOnly))));
  }

  /** x-blockdev-change child= (QEMU's bdrv_del_child): drops the edge `role` of `parent` (DriverOps.delChild). */
  async delChild(parent: BlockNode, role: string): Promise<void> {
    const edge = parent.children.find((e) => e.role === role);
    if (!edge) throw new BlockError('ENOENT', `Node '${parent.nodeName}' does not have child '${role}'`);
    const del = parent.ops.delChild;
    if (!del) throw new BlockError('ENOTSUP', `The node ${parent.nodeName} does not support removing a child`);
    await parent.drained(() => del(role, () => this.unlink(parent, edge)));
  }

  /** Creates an edge parent → child after checking permissions. */
  link(parent: Parent, child: BlockNode, role: string, p: ChildPermission): ChildEdge {
    const edge: ChildEdge = { parent, child, role, perm: p.perm, shared: p.shared, ...(p.permissionAs ? { permissionAs: p.permissionAs } : {}) };
    if (p.passThrough) {
      edge.passThrough = true;
      if (parent instanceof BlockNode) edge.shared = parent.usersShare();
    } else if (p.cow) {
      edge.cow = true;
      if (parent instanceof BlockNode) edge.shared = cowShared(parent.usersShare());
    }
    attachEdge(edge);
    if (parent instanceof BlockNode) parent.children.push(edge);
    return edge;
  }

  /** Removes an edge; an implicit child left without users is closed with it. */
  async unlink(parent: Parent, edge: ChildEdge, keepOpen = false): Promise<void> {
    detachEdge(edge);
    if (parent instanceof BlockNode) {
      const i = parent.children.indexOf(edge);
      if (i >= 0) parent.children.splice(i, 1);
    }
    if (!keepOpen) await this.closeIfUnused(edge.child);
  }

  /**
   * Closes an implicit node that nothing uses any more: what unlink does at
   * once, for a caller whose users of the node are away for a moment (held at
   * replaceNode's gate) and only the end tells whether it is still used.
   */
  async closeIfUnused(node: BlockNode): Promise<void> {
    if (node.implicit && node.parents.length === 0 && !node.isClosed) await this.closeNode(node);
  }

  /**
   * Closes a node, then lets go of its children. As QEMU's bdrv_close, which
   * returns nothing: a driver whose close fails (a qcow2 image whose last
   * metadata write-back cannot be written) is logged (qsd prints "Failed to
   * flush the L2 table cache: ...") and still lets go of its children, or
   * its file would stay open and locked with no node left to delete. So
   * blockdev-del answers {} as qsd does, and a shutdown goes on closing the
   * other nodes.
   */
  private async closeNode(node: BlockNode): Promise<void> {
    this.nodes.delete(node.nodeName);
    try {
      await node.close();
    } catch (err) {
      this.env.log.child({ node: node.nodeName }).error({ err }, `closing node '${node.nodeName}' failed: ${(err as Error).message}`);
    } finally {
      for (const edge of [...node.children]) await this.unlink(node, edge);
    }
  }

  /** Flushes every writable node (shutdown, quit). Errors are collected, not thrown early. */
  async flushAll(): Promise<Error[]> {
    const errors: Error[] = [];
    for (const n of this.nodes.values()) {
      if (n.readOnly || n.isClosed) continue;
      try { await n.flush(); } catch (e) { errors.push(e as Error); }
    }
    return errors;
  }

  /** Closes every node, users first. */
  async closeAll(): Promise<void> {
    let progress = true;
    while (this.nodes.size > 0 && progress) {
      progress = false;
      for (const n of [...this.nodes.values()]) {
        if (n.parents.length === 0) { await this.closeNode(n); progress = true; }
      }
    }
  }
}

function describeUse(edge: ChildEdge): string {
  return `node is used as ${edge.role === 'root' ? 'the root of' : `'${edge.role}' child of`} ${edge.parent.describe()}`;
}

/** Inline children inherit read-only and cache settings from their parent, as in QEMU. */
function inheritOptions(ref: Record<string, unknown>, parent: CommonOptions): Record<string, unknown> {
  const out: Record<string, unknown> = { ...ref };
  if (out['read-only'] === undefined && parent['read-only'] !== undefined) out['read-only'] = parent['read-only'];
  if (out.cache === undefined && parent.cache !== undefined) out.cache = parent.cache;
  if (out.discard === undefined && parent.discard !== undefined) out.discard = parent.discard;
  return out;
}

/** The edge a driver's openChild() creates: the driver's rule for the role (perm.ts), then what the driver asked for. */
function childPerm(driver: Driver, readOnly: boolean, role: ChildRole, opts?: OpenChildOptions): ChildPermission {
  const rule = childPermission(driver, role, readOnly);
  return {
    perm: { ...rule.perm, ...opts?.perm },
    shared: { ...rule.shared, ...opts?.shared },
    passThrough: rule.passThrough === true && !opts?.shared,
    cow: rule.cow === true && !opts?.shared,
  };
}

/** A backing node opened from the header's name stands for that name; otherwise the header's name itself. */
function autoBackingAtOpen(node: BlockNode): BlockNode['autoBacking'] {
  const backing = node.child('backing');
  if (backing && node.options.backing === undefined) return { node: backing };
  let name: unknown;
  try { name = node.ops.info?.()['backing-filename']; } catch { name = undefined; }
  return typeof name === 'string' ? { name } : undefined;
}
