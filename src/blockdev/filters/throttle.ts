/**
 * throttle: a filter that holds requests back to its throttle group's limits
 * (QEMU's block/throttle.c). Reads count as reads; writes, write-zeroes and
 * discards as writes, at their length; flushes and block status pass
 * untouched. The group (src/util/throttle/group.ts) queues and schedules;
 * this file is the glue: intercept, then pass to the child.
 *
 * While the node is drained the limits are off (queued requests go at once),
 * so no graph change or job ever waits on the throttle. blockdev-reopen may
 * name another group: the node moves there, drained.
 */
import { BlockError } from '../../util/errors.ts';
import { obj, req } from '../../qapi/types.ts';
import { BlockdevRef } from '../options.ts';
import type { ObjectLookup } from '../../objects/lookup.ts';
import type { ThrottleGroup, ThrottleMember } from '../../util/throttle/group.ts';
import { followEdge } from './follow-edge.ts';
import type { Driver, DriverOps } from '../driver.ts';

/** The group named `id`; QEMU's text when there is none (another object type by that id is none either). */
function findGroup(objects: ObjectLookup, id: string): ThrottleGroup {
  const g = objects.lookup<ThrottleGroup>(id, 'throttle-group');
  if (!g) throw new BlockError('EINVAL', `Throttle group '${id}' does not exist`);
  return g;
}

export const throttleDriver: Driver = {
  name: 'throttle',
  kind: 'filter',
  strongOptions: ['throttle-group'],
  options: obj('BlockdevOptionsThrottle', [
    req('throttle-group', 'str', 'the name of the throttle-group object to use. It must already exist.'),
    req('file', BlockdevRef, 'reference to or definition of the data source block device'),
  ]),
  async open(options, ctx): Promise<DriverOps> {
    const group = findGroup(ctx.objects, options['throttle-group'] as string);
    const first = await ctx.openChild('file', options.file as string | Record<string, unknown>);
    // Requests go to whatever the edge points at now (graph surgery moves it).
    const child = followEdge(ctx, first, 'file');
    let member: ThrottleMember = group.join();
    return {
      read(offset, buf) {
        const wait = member.intercept(buf.length, 'read');
        return wait ? wait.then(() => child().read(offset, buf)) : child().read(offset, buf);
      },
      write(offset, buf, flags) {
        const wait = member.intercept(buf.length, 'write');
        return wait ? wait.then(() => child().write(offset, buf, flags)) : child().write(offset, buf, flags);
      },
      writeZeroes(offset, length, flags) {
        const wait = member.intercept(length, 'write');
        return wait ? wait.then(() => child().writeZeroes(offset, length, flags)) : child().writeZeroes(offset, length, flags);
      },
      discard(offset, length) {
        const wait = member.intercept(length, 'write');
        return wait ? wait.then(() => child().discard(offset, length)) : child().discard(offset, length);
      },
      drainBegin() { member.disable(); },
      drainEnd() { member.enable(); },
      async prepareReopen(next) {
        const target = findGroup(ctx.objects, next['throttle-group'] as string);
        return {
          // Drained: nothing is queued, so the node can leave its group.
          commit() { member = member.moveTo(target); },
          abort() {},
        };
      },
      async close() { member.leave(); },
      limits: { canFua: first.limits.canFua },
      filename: () => child().fileName(),
    };
  },
};
