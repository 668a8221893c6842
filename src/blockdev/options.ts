/**
 * The blockdev schema: QEMU's BlockdevOptions flat union, built from the
 * drivers a BlockGraph has registered, plus the child reference types that
 * drivers use for their 'file' and 'backing' members.
 *
 * BlockdevRef refers back to BlockdevOptions, which depends on the graph, so
 * drivers (defined once, statically) reference it by name: the visitor
 * resolves the name 'BlockdevOptions' to the enclosing BlockdevOptions type
 * being visited.
 */
import { alt, enm, obj, opt, ref, req, type AlternateType, type EnumType, type ObjectType } from '../qapi/types.ts';
import type { BlockGraph } from './graph.ts';

export const BLOCKDEV_OPTIONS = 'BlockdevOptions';

/** Inline options of a new node, inside another node's options. */
export const BlockdevOptionsRef = ref(BLOCKDEV_OPTIONS);

/** A child: the node-name of an existing node, or the options of a new one. */
export const BlockdevRef: AlternateType = alt('BlockdevRef', ['str', BlockdevOptionsRef]);

/** Like BlockdevRef; null means "no child" (e.g. no backing file). */
export const BlockdevRefOrNull: AlternateType = alt('BlockdevRefOrNull', ['str', BlockdevOptionsRef, 'null']);

export const BlockdevDiscardOptions: EnumType = enm('BlockdevDiscardOptions', ['ignore', 'unmap']);
export const BlockdevDetectZeroesOptions: EnumType = enm('BlockdevDetectZeroesOptions', ['off', 'on', 'unmap']);
export const OnOffAuto: EnumType = enm('OnOffAuto', ['auto', 'on', 'off']);

export const BlockdevCacheOptions: ObjectType = obj('BlockdevCacheOptions', [
  opt('direct', 'bool', 'enables use of O_DIRECT (bypass the host page cache; default: false)'),
  opt('no-flush', 'bool', 'ignore any flush requests for the device (default: false)'),
]);

/** QEMU's BlockdevOptions: the base members, then the members of the driver's variant. */
export function blockdevOptionsType(graph: BlockGraph): ObjectType {
  const names = graph.driverNames();
  const variants: Record<string, ObjectType> = {};
  for (const n of names) variants[n] = graph.driver(n)!.options;
  return obj(BLOCKDEV_OPTIONS, [
    req('driver', enm('BlockdevDriver', names), 'block driver name'),
    opt('node-name', 'str', 'the node name of the new node'),
    opt('discard', BlockdevDiscardOptions, 'discard-related options (default: ignore)'),
    opt('cache', BlockdevCacheOptions, 'cache-related options'),
    opt('read-only', 'bool', 'whether the block device should be read-only (default: false)'),
    opt('auto-read-only', 'bool', 'if true, fall back to read-only when read-write is not possible (default: false)'),
    opt('force-share', 'bool', 'force share all permission on added nodes; requires read-only=true (default: false)'),
    opt('detect-zeroes', BlockdevDetectZeroesOptions, 'detect and optimize zero writes (default: off)'),
  ], { union: { discriminator: 'driver', variants }, doc: 'Options for creating a block device' });
}
